"""`charrnn explain` and the library under it: surprise, activations, the unit finder, the HTML page."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import PATTERN, error_lines, run_charrnn_process, run_cli

from charrnn.cli.explain_html import read_embedded_data
from charrnn.config import ModelConfig
from charrnn.data.tokenizers import ByteTokenizer, CharTokenizer
from charrnn.errors import UsageProblem
from charrnn.inspect.activations import UnitRef, analyse_text, parse_unit, unit_parts
from charrnn.inspect.unit_finder import bracket_depth, find_units, inside_quotes, position_in_line
from charrnn.model import CharRNN
from charrnn.store.checkpoint import save_weights

TEXT = 'He said "stop (now)" and left.\nShe said "go [there]".\n'


def tiny_model(kind: str, vocab_size: int, layers: int = 2, hidden: int = 8, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    model = CharRNN(
        ModelConfig(
            model=kind,
            num_layers=layers,
            hidden_size=hidden,
            embedding_size=6,
            dropout=0.0,
            vocab_size=vocab_size,
        )
    )
    return model.eval()


def every_unit(model: CharRNN) -> list[UnitRef]:
    config = model.config
    return [
        UnitRef(layer, index, part)
        for layer in range(config.num_layers)
        for part in unit_parts(config.model)
        for index in range(config.hidden_size)
    ]


def reference_bits(model: CharRNN, ids: np.ndarray) -> np.ndarray:
    """Bits of each token after the first, from one call of the whole model."""
    tokens = torch.from_numpy(np.asarray(ids, dtype=np.int64)).unsqueeze(0)
    with torch.no_grad():
        logits, _ = model(tokens)
    log_probs = F.log_softmax(logits[0].double(), dim=-1)
    return (-log_probs[:-1].gather(1, tokens[0, 1:, None])[:, 0] / math.log(2)).numpy()


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_surprise_and_states_are_the_models_own_numbers(kind):
    tokenizer = CharTokenizer.fit(TEXT)
    model = tiny_model(kind, tokenizer.vocab_size)
    analysis = analyse_text(model, tokenizer, TEXT, units=every_unit(model))
    assert list(analysis.segments) == list(TEXT)
    assert math.isnan(analysis.bits[0])
    np.testing.assert_allclose(analysis.bits[1:], reference_bits(model, tokenizer.encode(TEXT)), atol=1e-9)
    # The last states equal the fused stack's final state (each layer's, cell state included).
    tokens = torch.from_numpy(tokenizer.encode(TEXT).astype(np.int64)).unsqueeze(0)
    with torch.no_grad():
        _, state = model(tokens)
    hidden = state[0] if kind == "lstm" else state
    for layer in range(2):
        last = [analysis.unit_values(UnitRef(layer, index, "hidden"))[-1] for index in range(8)]
        np.testing.assert_allclose(last, hidden[layer, 0].numpy(), atol=1e-5)
        if kind == "lstm":
            last = [analysis.unit_values(UnitRef(layer, index, "cell"))[-1] for index in range(8)]
            np.testing.assert_allclose(last, state[1][layer, 0].numpy(), atol=1e-5)
    assert set(unit.part for unit in analysis.unit_activations) == (
        {"cell", "hidden"} if kind == "lstm" else {"hidden"}
    )


def test_top_predictions_are_the_models_probabilities():
    tokenizer = CharTokenizer.fit(TEXT)
    model = tiny_model("lstm", tokenizer.vocab_size)
    analysis = analyse_text(model, tokenizer, TEXT)
    tokens = torch.from_numpy(tokenizer.encode(TEXT).astype(np.int64)).unsqueeze(0)
    with torch.no_grad():
        probs = F.softmax(model(tokens)[0][0].double(), dim=-1)
    position = 10  # the predictions shown at character 10 were made after reading character 9
    expected = torch.topk(probs[position - 1], 5)
    shown = analysis.predictions[position]
    assert [label for label, _ in shown] == [tokenizer.chars[int(i)] for i in expected.indices]
    # Kept to the 5 decimals the answer shows.
    assert [prob for _, prob in shown] == pytest.approx(expected.values.tolist(), abs=5.1e-6)
    assert analysis.predictions[0] == []


def test_byte_tokens_group_into_whole_characters():
    text = "né€ a😀\n"
    tokenizer = ByteTokenizer()
    model = tiny_model("gru", 256)
    analysis = analyse_text(model, tokenizer, text)
    assert list(analysis.segments) == list(text)
    token_bits = reference_bits(model, tokenizer.encode(text))
    # "€" is three bytes: its surprise is the sum of their three bits, shown on one character.
    euro_start = len("né".encode())
    assert analysis.bits[2] == pytest.approx(token_bits[euro_start - 1 : euro_start + 2].sum())
    assert analysis.per_char(analysis.bits).shape == (len(text),)


def test_subword_pieces_colour_all_their_characters():
    from charrnn.data.subword import SentencePieceTokenizer

    tokenizer = SentencePieceTokenizer.fit("bpe", PATTERN * 50, 300)
    model = tiny_model("lstm", tokenizer.vocab_size)
    text = PATTERN * 2
    analysis = analyse_text(model, tokenizer, text, units=[UnitRef(0, 3, "cell")])
    assert "".join(analysis.segments) == text
    assert max(len(segment) for segment in analysis.segments) > 1
    values = analysis.per_char(analysis.unit_values(UnitRef(0, 3, "cell")))
    assert len(values) == len(text)
    first_long = next(i for i, segment in enumerate(analysis.segments) if len(segment) > 1)
    start = sum(len(segment) for segment in analysis.segments[:first_long])
    assert len(set(values[start : start + len(analysis.segments[first_long])].tolist())) == 1


def test_text_properties():
    assert inside_quotes('a "bc" d').tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert inside_quotes("don't 'x' y").tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0]
    assert bracket_depth("f(a[b])x").tolist() == [0, 1, 1, 2, 2, 1, 0, 0]
    assert position_in_line("ab\ncd").tolist() == [1, 2, 0, 1, 2]


def column_counter_model(tokenizer: CharTokenizer, unit: int) -> CharRNN:
    """A one-layer LSTM whose cell `unit` counts characters since the last newline (set by hand).

    One-hot embedding; the unit's input and forget gates are open (large bias) and its
    candidate is 1, so the cell adds 1 per character; the newline closes the forget gate.
    """
    vocab = tokenizer.vocab_size
    torch.manual_seed(1)
    model = CharRNN(
        ModelConfig(
            model="lstm", num_layers=1, hidden_size=16, embedding_size=vocab, dropout=0.0, vocab_size=vocab
        )
    ).eval()
    hidden = 16
    newline = tokenizer.chars.index("\n")
    with torch.no_grad():
        model.embedding.weight.copy_(torch.eye(vocab))
        recurrent = model.recurrent
        for gate in range(4):  # PyTorch's order: input, forget, candidate, output
            row = gate * hidden + unit
            recurrent.weight_ih_l0[row].zero_()
            recurrent.weight_hh_l0[row].zero_()
            recurrent.bias_hh_l0[row] = 0.0
            recurrent.bias_ih_l0[row] = 20.0
        recurrent.weight_ih_l0[hidden + unit, newline] = -40.0  # newline: forget everything
    return model


def test_finder_finds_a_planted_unit():
    text = "".join(f"{'x' * (n % 17)} line\n" for n in range(40))
    tokenizer = CharTokenizer.fit(text)
    model = column_counter_model(tokenizer, unit=5)
    results = {result.property.name: result for result in find_units(model, tokenizer, text)}
    best = results["column"].matches[0]
    assert best.unit == UnitRef(0, 5, "cell")
    assert best.correlation > 0.99
    assert results["quotes"].matches == []  # no quotes in the text: nothing to track


@pytest.fixture
def planted_checkpoint(tmp_path):
    text = "".join(f'{"x" * (n % 13)} "a"(b)\n' for n in range(30))
    tokenizer = CharTokenizer.fit(text)
    path = tmp_path / "planted.safetensors"
    save_weights(path, column_counter_model(tokenizer, unit=5), tokenizer, {})
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    return path, tmp_path / "text.txt", text


def test_find_units_command_lists_the_planted_unit(planted_checkpoint):
    checkpoint, text_file, _ = planted_checkpoint
    result = run_cli("explain", str(checkpoint), str(text_file), "--find-units", "--json")
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)["units_found"]
    column = [row for row in rows if row["property"] == "column"]
    assert column[0]["unit"] == "0:5:cell" and column[0]["correlation"] > 0.99
    table = run_cli("explain", str(checkpoint), str(text_file), "--find-units", "--show")
    assert table.exit_code == 0, table.stderr
    assert "position in the line" in table.stdout and "0:5:cell" in table.stdout
    assert "layer 0 unit 5 cell state" in table.stdout  # --show: the unit's coloured view follows


def test_html_page_embeds_the_models_numbers(planted_checkpoint, tmp_path):
    checkpoint, text_file, text = planted_checkpoint
    page_path = tmp_path / "page.html"
    result = run_cli("explain", str(checkpoint), str(text_file), "--html", str(page_path), "--unit", "0:2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    page = page_path.read_text(encoding="utf-8")
    data = read_embedded_data(page)
    from charrnn.store.checkpoint import load_weights

    loaded = load_weights(checkpoint)
    expected_bits = reference_bits(loaded.model, loaded.tokenizer.encode(text))
    assert "".join(segment["text"] for segment in data["segments"]) == text
    assert data["segments"][0]["bits"] is None
    assert [segment["bits"] for segment in data["segments"][1:]] == pytest.approx(expected_bits, abs=1e-4)
    analysis = analyse_text(loaded.model, loaded.tokenizer, text, units=[UnitRef(0, 5, "cell")])
    top = data["segments"][7]["top"]
    assert [label for label, _ in top] == [label for label, _ in analysis.predictions[7]]
    assert [p for _, p in top] == pytest.approx([p for _, p in analysis.predictions[7]], abs=1e-5)
    views = {view["key"]: view for view in data["views"]}
    assert list(views)[:2] == ["surprise", "0:2:cell"]  # surprise, the chosen unit, the found ones
    assert "0:5:cell" in views and "position in the line" in views["0:5:cell"]["label"]
    assert views["0:5:cell"]["values"] == pytest.approx(analysis.unit_values(UnitRef(0, 5, "cell")), abs=1e-4)
    # Self-contained: no address outside the page.
    assert not re.search(r"(https?:|//[a-z]|\bsrc=|\bhref=|@import|url\()", page, re.IGNORECASE)


def test_html_data_cannot_end_the_script_element(tmp_path):
    from charrnn.cli.explain_html import render_page

    hostile = {"segments": [{"text": "</script><script>alert(1)</script>&", "bits": None, "top": []}]}
    page = render_page(hostile, "t")
    assert page.count("</script>") == 2  # the data element's and the page script's own
    assert read_embedded_data(page) == hostile


@pytest.mark.parametrize(
    "spec, message",
    [
        ("5:0", "layer 5 does not exist: the model has 1 layer (0-0)"),
        ("0:99", "index 99 is out of range: each layer has 16 units (0-15)"),
        ("0:1:gate", "state must be cell or hidden"),
        ("x", "--unit must look like LAYER:INDEX"),
    ],
)
def test_bad_unit_is_one_line(planted_checkpoint, spec, message):
    checkpoint, text_file, _ = planted_checkpoint
    result = run_cli("explain", str(checkpoint), str(text_file), "--unit", spec)
    assert result.exit_code == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_gru_has_no_cell_state():
    with pytest.raises(UsageProblem, match="a gru has no cell state: use 0:3:hidden"):
        parse_unit("0:3:cell", "gru", 2, 8)
    assert parse_unit("1:3", "gru", 2, 8) == UnitRef(1, 3, "hidden")
    assert parse_unit("1:3", "lstm", 2, 8) == UnitRef(1, 3, "cell")


def test_long_text_is_cut_with_a_note(planted_checkpoint):
    checkpoint, text_file, text = planted_checkpoint
    result = run_cli("explain", str(checkpoint), str(text_file), "--max-chars", "50", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["characters"] == 50
    assert f"explaining the first 50 of {len(text):,} characters" in result.stderr
    full = run_cli("explain", str(checkpoint), str(text_file), "--max-chars", "0", "--json")
    assert json.loads(full.stdout)["characters"] == len(text)


def test_terminal_view_in_a_pipe_is_the_plain_text(planted_checkpoint):
    checkpoint, text_file, text = planted_checkpoint
    result = run_cli("explain", str(checkpoint), str(text_file))
    assert result.exit_code == 0, result.stderr
    assert result.stdout.rstrip("\n") == text.rstrip("\n")
    assert "bits/char on average" in result.stderr


@pytest.mark.parametrize(
    "arguments, code, message",
    [
        ((), 2, "give the text to explain"),
        (("a", "b", "c"), 2, "give the text to explain"),
        (("{model}", "missing.txt"), 1, "text file not found: missing.txt"),
        (("{model}", "{bad_utf8}"), 1, "is not valid UTF-8"),
        (("{model}", "{unseen}"), 1, "characters the model never saw in training: 'Z'"),
        (("{model}", "{empty}"), 1, "empty.txt is empty: there is nothing to explain"),
        (("no-such-run", "{unseen}"), 1, "checkpoint not found: no-such-run"),
    ],
)
def test_bad_input_is_one_line(planted_checkpoint, tmp_path, monkeypatch, arguments, code, message):
    checkpoint, _, _ = planted_checkpoint
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.txt").write_bytes(b"ab\xffcd")
    (tmp_path / "unseen.txt").write_text("xZx", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    names = {"model": str(checkpoint), "bad_utf8": "bad.txt", "unseen": "unseen.txt", "empty": "empty.txt"}
    result = run_cli("explain", *(argument.format(**names) for argument in arguments))
    assert result.exit_code == code
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


def test_most_recent_run_and_stdin(trained_run, in_tmp):
    import shutil

    shutil.copytree(trained_run, in_tmp / "runs" / "only")
    result = run_cli("explain", "-", "--json", input=PATTERN)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"].endswith("best.safetensors") and data["characters"] == len(PATTERN)
    # The trained model knows this sentence: well under a bit per character on average.
    assert data["bits_per_char"] < 1.0


def test_pipe_to_head_ends_quietly(planted_checkpoint):
    checkpoint, text_file, _ = planted_checkpoint
    long_text = text_file.read_text(encoding="utf-8") * 200
    text_file.write_text(long_text, encoding="utf-8")
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "charrnn", "explain", str(checkpoint), str(text_file), "--max-chars", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.read(10)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0
    assert "Traceback" not in stderr


def test_help_mentions_the_argument_rule():
    result = run_charrnn_process("explain", "--help")
    assert result.returncode == 0
    assert b"with two, the first is the MODEL" in result.stdout


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_html_for_a_byte_model_keeps_characters_whole(tmp_path, kind):
    text = "né€ a😀 (b)\n"
    path = tmp_path / "byte.safetensors"
    save_weights(path, tiny_model(kind, 256), ByteTokenizer(), {})
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    page = tmp_path / "p.html"
    result = run_cli("explain", str(path), str(tmp_path / "t.txt"), "--html", str(page), "--top", "1")
    assert result.exit_code == 0, result.stderr
    data = read_embedded_data(page.read_text(encoding="utf-8"))
    assert [segment["text"] for segment in data["segments"]] == list(text)
    assert all(key.endswith(":hidden") for key in [view["key"] for view in data["views"]][1:])
    assert len(data["views"]) > 1
    labels = {label for segment in data["segments"] for label, _ in segment["top"]}
    assert all(label.startswith("<0x") or len(label) == 1 for label in labels)


@pytest.mark.parametrize(
    "given, message",
    [
        ("bad.txt", "Error: bad.txt is not valid UTF-8: byte 0xff at offset 13 (line 2)"),
        ("-", "Error: standard input is not valid UTF-8: byte 0xff at offset 13 (line 2)"),
    ],
)
def test_invalid_utf8_names_the_offset_and_line_as_eval_does(planted_checkpoint, in_tmp, given, message):
    """explain reads through the one UTF-8 decoder: the bad byte's offset and line, a BOM dropped."""
    checkpoint, _, _ = planted_checkpoint
    data = b"\xef\xbb\xbfabcdefg\nab\xffcd\n"  # the dropped BOM still counts in the offset
    (in_tmp / "bad.txt").write_bytes(data)
    result = run_cli("explain", str(checkpoint), given, input=data if given == "-" else None)
    assert result.exit_code == 1
    assert error_lines(result.stderr) == [message]
    evaluated = run_cli("eval", str(checkpoint), given, input=data if given == "-" else None)
    assert error_lines(evaluated.stderr) == [message]


def test_unreadable_or_directory_text_is_one_line(planted_checkpoint, in_tmp, monkeypatch):
    from faults import deny_opening

    checkpoint, _, _ = planted_checkpoint
    (in_tmp / "folder").mkdir()
    folder = run_cli("explain", str(checkpoint), "folder")
    assert folder.exit_code == 1
    assert error_lines(folder.stderr) == ["Error: folder is a directory, not a text file"]
    (in_tmp / "secret.txt").write_text("abc\n", encoding="utf-8")
    deny_opening(monkeypatch, in_tmp / "secret.txt")
    denied = run_cli("explain", str(checkpoint), "secret.txt")
    assert denied.exit_code == 1
    assert error_lines(denied.stderr) == ["Error: cannot read secret.txt: permission denied"]
