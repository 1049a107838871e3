"""The novelty index and its queries: exact copied spans against a brute force, planted passages
found whole with their file and line, chance-level spans in new text, and the cache entry's life
(reused, rebuilt when the corpus changes, written atomically, litter swept)."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from charrnn.atomic import TEMP_PREFIX, _host_tag, _process_start, is_temp_file
from charrnn.data.corpus import corpus_files, scan_corpus
from charrnn.data.suffix_index import cached_suffix_index, find_cached_index
from charrnn.errors import CharrnnError, UsageProblem
from charrnn.inspect import novelty
from charrnn.inspect.novelty import NoveltyChecker

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _checker(path: Path, cache: Path, val_fraction: float | None = None) -> NoveltyChecker:
    index, _ = cached_suffix_index(scan_corpus(corpus_files(str(path))), val_fraction, cache)
    return NoveltyChecker(index)


def _random_text(rng: random.Random, length: int, alphabet: str = LETTERS) -> str:
    """Letters with a line end about every 40 characters."""
    return "".join("\n" if rng.random() < 0.025 else rng.choice(alphabet) for _ in range(length))


def _brute_force(corpus: str, text: str, min_span: int) -> tuple[int, int]:
    """(longest match, characters in matches >= min_span) by trying every start."""
    longest, covered = 0, set()
    for start in range(len(text)):
        low, high = 0, len(text) - start
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if text[start : start + middle] in corpus else (low, middle - 1)
        longest = max(longest, low)
        if low >= min_span:
            covered.update(range(start, start + low))
    return longest, len(covered)


@pytest.mark.parametrize("seed", range(6))
def test_longest_span_and_copied_share_match_a_brute_force(tmp_path, seed):
    rng = random.Random(seed)
    for trial in range(12):
        alphabet = rng.choice(["ab", "abc", "ab\n", "aé€😀\n"])  # small alphabets: long chance matches
        corpus = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 2500)))
        start = rng.randrange(len(corpus))
        text = rng.choice(
            [
                "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))),
                "x" + corpus[start : start + rng.randint(1, 400)] + "y" + corpus[: rng.randint(0, 150)],
            ]
        )
        path = tmp_path / f"corpus-{trial}.txt"
        path.write_text(corpus, encoding="utf-8")
        min_span = rng.choice([1, 5, 40])
        checker = _checker(path, tmp_path / "cache")
        report = checker.check(text, min_span)
        longest, copied = _brute_force(corpus, text, min_span)
        streamed = checker.check_stream(_pieces(text.encode("utf-8"), rng, 9), min_span, None, None)
        assert streamed.to_dict() == report.to_dict(), (corpus, text)  # read in pieces of 1-9 bytes
        assert (report.longest.length if report.longest else 0) == longest, (corpus, text)
        assert report.copied_chars == copied, (corpus, text, min_span)
        if report.longest is not None and report.longest.length:
            span = report.longest
            assert span.text == text[span.start : span.start + span.length] and span.text in corpus


def test_long_texts_are_searched_a_chunk_at_a_time_with_the_same_answer(tmp_path, monkeypatch):
    rng = random.Random(5)
    corpus = _random_text(rng, 20_000, "abcd")
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    text = _random_text(rng, 3000, "abcd") + corpus[5000:9000] + _random_text(rng, 3000, "abcd")
    checker = _checker(path, tmp_path / "cache")
    whole = checker.check(text, 20)
    monkeypatch.setattr(novelty, "CHUNK_POSITIONS", 97)  # chunk edges inside matches and passages
    chunked = checker.check(text, 20)
    assert chunked.to_dict() == whole.to_dict()
    assert any(span.start <= 3000 and span.start + span.length >= 7000 for span in whole.spans)


def _pieces(data: bytes, rng: random.Random, largest: int) -> list[bytes]:
    """`data` cut at random byte offsets (inside characters too) into pieces of 1..largest bytes."""
    pieces, at = [], 0
    while at < len(data):
        step = rng.randint(1, largest)
        pieces.append(data[at : at + step])
        at += step
    return pieces


@pytest.mark.parametrize("seed", range(4))
def test_a_text_read_in_tiny_pieces_gets_the_report_of_the_whole_text(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    alphabet = rng.choice(["abcd", "aé€😀\n", "ab\n"])
    corpus = "".join(rng.choice(alphabet) for _ in range(30_000))
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    checker = _checker(path, tmp_path / "cache")
    new = "".join(rng.choice(alphabet) for _ in range(2000))
    # Copied passages far longer than the pieces (and the probe), a copy right at the end.
    text = (
        new[:700] + corpus[1000:5000] + new[700:1400] + corpus[9000:9300] + new[1400:] + corpus[20_000:23_000]
    )
    whole = checker.check(text, 40)
    monkeypatch.setattr(novelty, "CHUNK_POSITIONS", rng.choice([97, 1000]))
    for largest in (1, 7, 300):
        pieces = _pieces(text.encode("utf-8"), rng, largest)
        streamed = checker.check_stream(pieces, 40, text_cap=None, max_spans=None)
        assert streamed.to_dict() == whole.to_dict(), largest
    assert whole.longest is not None and whole.longest.length >= 4000
    assert whole.num_chars == len(text)


def test_a_streamed_report_caps_span_text_and_listed_spans_but_not_lengths(tmp_path):
    rng = random.Random(8)
    corpus = _random_text(rng, 40_000)
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    checker = _checker(path, tmp_path / "cache")
    text = "".join("#" + corpus[at : at + 90] for at in range(0, 3000, 100)) + "#" + corpus[10_000:15_000]
    full = checker.check(text, 50)
    capped = checker.check_stream([text.encode("utf-8")], 50, text_cap=30, max_spans=4)
    assert full.num_spans == capped.num_spans == 31 and len(capped.spans) == 4
    assert (capped.copied_chars, capped.num_chars) == (full.copied_chars, full.num_chars)
    assert capped.longest is not None and full.longest is not None
    assert (capped.longest.start, capped.longest.length, capped.longest.line) == (
        full.longest.start, full.longest.length, full.longest.line,
    )  # fmt: skip
    assert capped.longest.length == 5000 and capped.longest.text == corpus[10_000:10_030]
    assert capped.longest.text_truncated and not full.longest.text_truncated
    assert capped.to_dict()["longest"]["text_truncated"] is True


def test_memory_does_not_grow_with_the_length_of_the_text(tmp_path):
    import tracemalloc

    rng = random.Random(4)
    corpus = _random_text(rng, 200_000)
    corpus = corpus * 30  # 6 MB, indexed quickly
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    checker = _checker(path, tmp_path / "cache")
    text = "new text, not in the corpus " + corpus[123:] + " and the end"  # a 6 MB copied passage

    def pieces():
        for at in range(0, len(text), 1 << 16):
            yield text[at : at + (1 << 16)].encode("utf-8")

    tracemalloc.start()
    try:
        report = checker.check_stream(pieces(), 50)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.longest is not None and report.longest.length == len(corpus) - 123
    assert report.num_chars == len(text)
    assert peak < 3_000_000, peak  # the text is 6 MB: holding it (or a copy of it) fails this


def _line_of(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


def test_planted_passages_come_back_exactly_with_their_file_and_line(tmp_path):
    rng = random.Random(27)
    folder = tmp_path / "corpus"
    folder.mkdir()
    files = {name: _random_text(rng, 60_000) for name in ("a.txt", "b.txt", "c.txt")}
    files["b.txt"] = files["b.txt"][:30_000] + "naïve café — 😀 " + files["b.txt"][30_000:]  # not only ASCII
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    checker = _checker(folder, tmp_path / "cache")

    text, planted = _random_text(rng, 500), []
    for name, source_start, length in [("a.txt", 100, 60), ("b.txt", 29_990, 400), ("c.txt", 50_000, 1500)]:
        source = files[name]
        # The characters either side differ from the corpus's, so the copy is exactly the passage.
        text += "0" + source[source_start : source_start + length] + "1" + _random_text(rng, 700)
        planted.append((len(text) - 701 - length, length, name, *_line_of(source, source_start)))
    report = checker.check(text, 50)

    found = [(s.start, s.length, Path(s.file).name, s.line, s.column) for s in report.spans]
    assert found == planted
    assert report.longest is not None and (report.longest.start, report.longest.length) == planted[-1][:2]
    assert report.copied_chars == 60 + 400 + 1500
    assert report.copied_share == pytest.approx(1960 / len(text))


def test_new_text_reports_a_longest_span_near_chance(tmp_path):
    rng = random.Random(3)
    path = tmp_path / "corpus.txt"
    corpus = "".join(rng.choice(LETTERS) for _ in range(200_000))
    path.write_text(corpus, encoding="utf-8")
    text = "".join(rng.choice(LETTERS) for _ in range(20_000))
    report = _checker(path, tmp_path / "cache").check(text, 12)
    # The longest match expected between random texts of N and n letters: log(N * n) / log(26).
    chance = math.log(len(corpus) * len(text)) / math.log(26)
    assert report.longest is not None and abs(report.longest.length - chance) <= 2
    assert report.copied_chars == 0 and report.spans == []


def test_the_validation_part_is_not_indexed(tmp_path):
    rng = random.Random(8)
    corpus = _random_text(rng, 10_000)
    path = tmp_path / "corpus.txt"
    path.write_text(corpus, encoding="utf-8")
    checker = _checker(path, tmp_path / "cache", val_fraction=0.1)
    assert checker.index.train_chars == 9000
    assert checker.check(corpus[8000:8900], 50).copied_chars == 900  # training part
    assert checker.check(corpus[9100:9900], 50).copied_chars == 0  # validation part


def test_empty_text_and_text_of_unseen_characters(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abc\n" * 100, encoding="utf-8")
    checker = _checker(path, tmp_path / "cache")
    empty = checker.check("", 50)
    assert empty.num_chars == 0 and empty.longest is None and empty.copied_share == 0
    unseen = checker.check("xyz", 50)
    assert unseen.longest is not None and unseen.longest.length == 0 and unseen.copied_chars == 0
    with pytest.raises(UsageProblem, match="--min-span"):
        checker.check("abc", 0)


# -- the cache entry ---------------------------------------------------------------------------


def test_the_index_is_reused_found_by_hash_and_rebuilt_when_the_corpus_changes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("one two three\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    first, reused = cached_suffix_index(scan_corpus(corpus_files(str(path))), 0.1, cache)
    assert not reused
    again, reused = cached_suffix_index(scan_corpus(corpus_files(str(path))), 0.1, cache)
    assert reused and again.path == first.path
    # Found from a model's record alone (fingerprint, split), without the corpus.
    found = find_cached_index(first.fingerprint, 0.1, cache)
    assert found is not None and found.path == first.path
    assert find_cached_index(first.fingerprint, 0.2, cache) is None

    path.write_text("four five six\n" * 50, encoding="utf-8")
    changed, reused = cached_suffix_index(scan_corpus(corpus_files(str(path))), 0.1, cache)
    assert not reused and changed.path != first.path
    assert NoveltyChecker(changed).check("four five six\n" * 3, 20).copied_chars == 42


def test_a_damaged_entry_is_built_again(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("one two three\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    index, _ = cached_suffix_index(scan_corpus(corpus_files(str(path))), None, cache)
    with open(index.path, "r+b") as handle:
        handle.truncate(index.path.stat().st_size - 4)  # a half-written array
    rebuilt, reused = cached_suffix_index(scan_corpus(corpus_files(str(path))), None, cache)
    assert not reused and rebuilt.path.stat().st_size == rebuilt.num_bytes * 4


def test_an_interrupted_build_leaves_nothing_but_its_lock(tmp_path, monkeypatch):
    from charrnn.data import suffix_index

    path = tmp_path / "corpus.txt"
    path.write_text("one two three\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"

    def interrupted(text_path, num_bytes):
        raise KeyboardInterrupt

    monkeypatch.setattr(suffix_index, "_sort_suffixes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_suffix_index(scan_corpus(corpus_files(str(path))), None, cache)
    left = sorted(p.suffix for p in cache.iterdir())
    assert not any(is_temp_file(p) for p in cache.iterdir())
    assert ".json" not in left and ".sa" not in left  # no sidecar: the entry is not complete


def test_what_a_killed_build_left_is_swept_by_the_next(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    cache = tmp_path / "cache"
    cache.mkdir()
    litter = cache / f"{TEMP_PREFIX}{_host_tag()}-{process.pid}-{_process_start(process.pid)}-0123abcd-x.sa"
    litter.write_bytes(b"half an array")
    path = tmp_path / "corpus.txt"
    path.write_text("one two three\n" * 50, encoding="utf-8")
    cached_suffix_index(scan_corpus(corpus_files(str(path))), None, cache)
    assert not litter.exists()


def test_without_pydivsufsort_one_line_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydivsufsort", None)  # import fails
    path = tmp_path / "corpus.txt"
    path.write_text("one two three\n", encoding="utf-8")
    with pytest.raises(CharrnnError, match=r"pip install 'charrnn\[novelty\]'"):
        cached_suffix_index(scan_corpus(corpus_files(str(path))), None, tmp_path / "cache")


def test_a_read_only_cache_with_the_entry_still_answers(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("one two three\n" * 50, encoding="utf-8")
    cache = tmp_path / "cache"
    index, _ = cached_suffix_index(scan_corpus(corpus_files(str(path))), None, cache)
    text, suffixes = index.open()
    assert not text.flags.writeable and not suffixes.flags.writeable
    assert np.array_equal(np.sort(np.asarray(suffixes)), np.arange(index.num_bytes))
