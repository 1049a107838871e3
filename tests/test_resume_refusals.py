"""What `--resume` refuses to change: the code, its behaviour and the README agree, option for option."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, TINY_MODEL_OPTIONS, error_lines, run_cli

from charrnn.config import ModelConfig
from charrnn.distributed import DistributedError, World
from charrnn.errors import RunDirError
from charrnn.store.checkpoint import read_saved_state
from charrnn.training.resume import FIXED_ON_RESUME, resumed_configs

# The model shape: every ModelConfig field the command line sets (vocab_size comes from the tokeniser).
MODEL_SHAPE = tuple(name for name in ModelConfig().to_dict() if name != "vocab_size")
REFUSED = {f"--{name.replace('_', '-')}" for name in MODEL_SHAPE + FIXED_ON_RESUME}


def _readme_sentence_on_refusals() -> str:
    text = " ".join(REPO.joinpath("docs", "training.md").read_text(encoding="utf-8").split())
    match = re.search(r"Options that would make it a different run \((.*?)\) are refused", text)
    assert match, "docs/training.md: the sentence listing what --resume refuses is gone"
    return match.group(1)


def test_the_readme_names_exactly_the_options_resume_refuses():
    named = set(re.findall(r"`(--[a-z-]+)`", _readme_sentence_on_refusals()))
    assert named == REFUSED, (
        f"README misses {sorted(REFUSED - named)}, names too many {sorted(named - REFUSED)}"
    )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refusals")
    corpus = folder / "pattern.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 200, encoding="utf-8")
    out = folder / "run"
    result = run_cli(
        "train", str(corpus), "--out", str(out), "--max-steps", "2", "--eval-every", "2", *TINY_MODEL_OPTIONS
    )
    assert result.exit_code == 0, result.stderr
    return out


# A value other than the run's for every option resume refuses (--vocab-size needs a subword
# run; test_tokenizer_training covers the tokeniser family).
OTHER_VALUES = {
    "--model": "gru",
    "--num-layers": "2",
    "--hidden-size": "48",
    "--embedding-size": "8",
    "--dropout": "0.1",
    "--tokenizer": "byte",
    "--val-fraction": "0.2",
    "--eval-tokens": "1000",
    "--seq-len": "16",
    "--batch-size": "4",
    "--stream-groups": "2",
    "--seed": "7",
}


def test_every_refused_option_but_vocab_size_has_a_behaviour_test():
    assert set(OTHER_VALUES) == REFUSED - {"--vocab-size"}


@pytest.mark.parametrize("option", sorted(OTHER_VALUES))
def test_resume_refuses_each_option_the_readme_names(short_run, option):
    before = (short_run / "state.pt").read_bytes()
    result = run_cli("train", "--resume", str(short_run), option, OTHER_VALUES[option])
    assert result.exit_code == 1, result.stderr
    [line] = error_lines(result.stderr)
    assert line.startswith(f"Error: cannot resume: {option} is ")
    assert (short_run / "state.pt").read_bytes() == before


def test_resume_refuses_the_other_shift_passes_flag_and_accepts_the_runs_own(short_run):
    """The run decides whether its passes are shifted; the other flag was once silently ignored."""
    before = (short_run / "state.pt").read_bytes()
    result = run_cli("train", "--resume", str(short_run), "--no-shift-passes")
    assert result.exit_code == 1, result.stderr
    assert error_lines(result.stderr) == [
        "Error: cannot resume: --no-shift-passes was given but the run was trained with --shift-passes"
    ]
    assert (short_run / "state.pt").read_bytes() == before
    same = run_cli("train", "--resume", str(short_run), "--shift-passes", "--max-steps", "3")
    assert same.exit_code == 0, same.stderr


# -- the one function that decides (training/resume.py) ----------------------------------------


def _never_read() -> str:
    pytest.fail("the corpus was read before the options were accepted")


def test_another_number_of_processes_is_refused_before_the_corpus_is_read(short_run):
    saved = read_saved_state(short_run / "state.pt")
    with pytest.raises(DistributedError) as caught:
        resumed_configs(saved, {}, {}, set(), World(world_size=2, local_world_size=2), _never_read)
    assert str(caught.value) == (
        "cannot resume: this run was trained with 1 process but this launch has 2 processes; "
        "resume it with the same number (without torchrun)"
    )


def test_a_refused_option_stops_before_the_corpus_is_read_and_allowed_ones_override(short_run):
    saved = read_saved_state(short_run / "state.pt")
    with pytest.raises(RunDirError) as caught:
        resumed_configs(saved, {}, {"seed": 7}, {"seed"}, World(), _never_read)
    assert str(caught.value) == "cannot resume: --seed is 7 but the run was trained with 1337"
    model_config, train_config = resumed_configs(
        saved,
        {"hidden_size": 32, "num_layers": 5},  # num_layers is a default here: not given, not checked
        {"max_steps": 9, "lr": 0.5},
        {"hidden_size", "max_steps"},
        World(),
        lambda: saved.corpus_fingerprint,
    )
    assert model_config == saved.model_config
    assert (train_config.max_steps, train_config.lr) == (9, saved.train_config.lr)


def test_another_corpus_is_refused_with_the_runs_own(short_run):
    saved = read_saved_state(short_run / "state.pt")
    with pytest.raises(RunDirError) as caught:
        resumed_configs(saved, {}, {}, set(), World(), lambda: "another fingerprint")
    assert str(caught.value) == (
        f"cannot resume: the corpus differs from the one this run was trained on ({saved.corpus_source})"
    )
