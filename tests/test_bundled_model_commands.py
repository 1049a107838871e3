"""The bundled model by name in the commands that take MODEL: eval, score, info."""

from __future__ import annotations

import json

from conftest import REPO, run_cli


def test_eval_score_and_info_take_the_bundled_model_by_name(in_tmp):
    opening = (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:3000]
    (in_tmp / "opening.txt").write_text(opening, encoding="utf-8")
    evaluated = run_cli("eval", "shakespeare", "opening.txt", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    figures = json.loads(evaluated.stdout)
    # A Shakespeare model finds Shakespeare easy: far below the 6 bits of a uniform guess over 65 characters.
    assert 0.5 < figures["files"][0]["bits_per_char"] < 2.5
    (in_tmp / "speech.txt").write_text(
        "ROMEO:\nBut soft, what light through yonder window breaks?\n", encoding="utf-8"
    )

    scored = run_cli("score", "shakespeare", "speech.txt")
    assert scored.exit_code == 0, scored.stderr
    lines = scored.stdout.splitlines()
    assert [line.split("\t")[2] for line in lines] == [
        "ROMEO:",
        "But soft, what light through yonder window breaks?",
    ]

    info = run_cli("info", "shakespeare", "--json")
    assert info.exit_code == 0, info.stderr
    assert json.loads(info.stdout)["model"]["kind"] == "lstm"


def test_a_file_named_like_the_bundled_model_is_read_as_text(in_tmp):
    # An existing path always wins over a bundled name.
    (in_tmp / "shakespeare").write_text("hello there\n", encoding="utf-8")
    result = run_cli("eval", "shakespeare", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["files"][0]["name"] == "shakespeare"
