"""How much of a text is copied from the training text (`charrnn novelty`, `sample --novelty`, the API).

The answer is built from the maximal exact matches of the text against the training text:
for each position i of the text, the longest prefix of text[i:] found anywhere in the
training text (its *matching statistic*); a match that is not inside the match of an
earlier position is a maximal match (a copied span). The figures:

- the longest copied span (its length, its text, the file and line it comes from);
- the share of the text's characters that lie in copied spans of at least `min_span` characters.

The matching statistics come from the suffix array (`data.suffix_index`), two ways:

1. For every position at once (numpy, a chunk of positions at a time, so the work arrays do
   not grow with the text): a binary search of the next `PROBE_BYTES` bytes of the text
   among the sorted suffixes, comparing 8 bytes at a time as big-endian integers; the
   longest match of a pattern is with one of the two suffixes beside the place it would
   be inserted, so comparing those two gives the match length when it is shorter than
   `PROBE_BYTES`. Text that is not copied is settled here.
2. A position whose match reaches `PROBE_BYTES` is inside a copied passage: an exact binary
   search of its whole remainder (comparing slices of the mapped text) finds where the
   match ends, e. Every later position's match ends at e or beyond, and whether it goes
   beyond is monotone in the position ("text[j:e+1] occurs" is true from some j on), so a
   binary search over positions finds the next span without visiting the positions in
   between: a copied passage of any length costs O(log n) searches, not one per position.

Matches are found on UTF-8 bytes (starting only on the first byte of a character) and
trimmed to whole characters; lengths and shares are in characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from charrnn.data.corpus import corpus_files, describe_source, scan_corpus
from charrnn.data.suffix_index import SuffixIndex, cached_suffix_index, find_cached_index
from charrnn.errors import CharrnnError, UsageProblem
from charrnn.inspect.novelty_threshold import DEFAULT_MIN_SPAN, MAX_MIN_SPAN

__all__ = [
    "DEFAULT_MIN_SPAN",
    "CopiedSpan",
    "NoveltyReport",
    "NoveltyChecker",
    "TrainingText",
    "training_text_of",
    "open_training_index",
]

PROBE_BYTES = 64  # bytes compared for every position at once (8 big-endian words)
CHUNK_POSITIONS = 16_384  # positions searched together: bounds the work arrays to a few MB
COMPARE_BYTES = 1 << 16  # an exact comparison reads the text this many bytes at a time
_WORDS = PROBE_BYTES // 8
READ_BYTES = 1 << 20  # the text is read (and counted through) this many bytes at a time
READ_CHARS = 1 << 18  # a str is encoded this many characters at a time (at most 1 MB of bytes)
UNKNOWN_LENGTH = 1 << 62  # the length of a text still being read
SPAN_TEXT_CAP = 1_000  # characters of a span's text a streamed report shows (its length is exact)
MAX_LISTED_SPANS = 10_000  # spans a streamed report lists (num_spans counts them all)


@dataclass
class CopiedSpan:
    """A passage of the text found verbatim in the training text."""

    start: int  # character offset in the text
    length: int  # characters
    text: str
    file: str  # where in the training text (one of the places it occurs)
    line: int
    column: int
    text_truncated: bool = False  # `text` is the span's first characters only (`length` is all of it)

    def to_dict(self) -> dict[str, Any]:
        """The span as JSON-ready values."""
        return {
            "start": self.start,
            "length": self.length,
            "text": self.text,
            "text_truncated": self.text_truncated,
            "file": self.file,
            "line": self.line,
            "column": self.column,
        }


@dataclass
class NoveltyReport:
    """What share of a text is copied, and its longest copied span."""

    num_chars: int
    min_span: int
    copied_chars: int  # characters inside copied spans of at least min_span characters
    longest: CopiedSpan | None  # None for an empty text
    spans: list[CopiedSpan] = field(default_factory=list)  # the maximal spans >= min_span, in order
    num_spans: int | None = None  # all of them (`spans` may list only the first); None: len(spans)

    def __post_init__(self) -> None:
        if self.num_spans is None:
            self.num_spans = len(self.spans)

    @property
    def copied_share(self) -> float:
        """copied_chars / num_chars (0 for an empty text)."""
        return self.copied_chars / self.num_chars if self.num_chars else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values."""
        return {
            "chars": self.num_chars,
            "min_span": self.min_span,
            "copied_chars": self.copied_chars,
            "copied_share": round(self.copied_share, 6),
            "longest": None if self.longest is None else self.longest.to_dict(),
            "num_spans": self.num_spans,
            "spans": [span.to_dict() for span in self.spans],
        }

    def summary(self) -> str:
        """One line for people: the share copied and the longest span."""
        longest = self.longest
        if longest is None or longest.length == 0:
            return f"{self.num_chars:,} chars, nothing found in the training text"
        return (
            f"{self.copied_share:.1%} of {self.num_chars:,} chars in copied spans of >= {self.min_span}; "
            f"longest {longest.length:,} chars from {longest.file}:{longest.line}"
        )


class NoveltyChecker:
    """Finds the copied spans of texts in one indexed training text (thread-safe: no state per text)."""

    def __init__(self, index: SuffixIndex) -> None:
        self.index = index
        text, suffixes = index.open()
        # Plain views of the maps: indexing an np.memmap goes through a slower Python method.
        self.text = text.view(np.ndarray)
        self.suffixes = suffixes.view(np.ndarray)
        self.num_bytes = index.num_bytes
        # The big-endian 8-byte word at every byte of the text, without a copy: an unaligned
        # view with a stride of one byte, so one gather reads a word (the padding reads as zeros).
        self.words = _word_view(self.text)

    def check(self, text: str, min_span: int = DEFAULT_MIN_SPAN) -> NoveltyReport:
        """The copied spans of `text` (characters; spans of >= `min_span` count as copied), every
        span listed with its whole text (the text is in memory already)."""
        if not isinstance(text, str):
            raise UsageProblem(f"novelty takes text (a str), not {type(text).__name__}")
        pieces = (
            text[at : at + READ_CHARS].encode("utf-8", "surrogatepass")
            for at in range(0, len(text), READ_CHARS)
        )
        return self.check_stream(pieces, min_span, text_cap=None, max_spans=None)

    def check_stream(
        self,
        pieces: Iterable[bytes],
        min_span: int = DEFAULT_MIN_SPAN,
        text_cap: int | None = SPAN_TEXT_CAP,
        max_spans: int | None = MAX_LISTED_SPANS,
    ) -> NoveltyReport:
        """The copied spans of a text given as UTF-8 `pieces` (each ending on a character), read a
        piece at a time: memory does not grow with the text's length. The report is the one
        `check` gives for the whole text, except that each span's text is cut to `text_cap`
        characters (its length and place stay exact) and only the first `max_spans` spans are
        listed (`num_spans` counts them all); None: no limit."""
        if isinstance(min_span, bool) or not isinstance(min_span, int) or not 1 <= min_span <= MAX_MIN_SPAN:
            raise UsageProblem(
                f"--min-span must be a whole number from 1 to {MAX_MIN_SPAN:,}, got {min_span!r}"
            )
        query = _QueryStream(iter(pieces), self.text)
        builder = _ReportBuilder(self, query, min_span, text_cap, max_spans)
        for starts, lengths, places in self._maximal_matches(query):
            builder.add(starts, lengths, places)
        return builder.report(query.total_chars())

    # -- the maximal matches, in bytes ----------------------------------------------------

    def _maximal_matches(self, query: _QueryStream) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(byte starts, byte lengths, corpus positions) of the maximal matches, left to right, in batches."""
        if self.num_bytes == 0:
            return
        reach = 0  # where the last maximal match ends
        position = 0
        while True:
            query.keep_from(position)
            held = query.fill(position + CHUNK_POSITIONS + PROBE_BYTES + 8)
            if query.at_end:
                n = query.end
                if position >= n:
                    return
                stop = min(n, position + CHUNK_POSITIONS)
            else:
                n = UNKNOWN_LENGTH  # later bytes are still to come: probe only what has its 64 after it
                stop = min(position + CHUNK_POSITIONS, held - PROBE_BYTES - 8)
            window = query.get(position, stop + PROBE_BYTES + 8)
            padded = np.zeros(stop - position + PROBE_BYTES + 8, dtype=np.uint8)
            padded[: len(window)] = window
            lengths, places = self._probe(padded, _word_view(padded), n - position, 0, stop - position)
            cursor = position
            while cursor < stop:
                offset = cursor - position
                long_at = np.flatnonzero(lengths[offset:] >= PROBE_BYTES)
                short_stop = stop if not len(long_at) else cursor + int(long_at[0])
                if short_stop > cursor:
                    # Exact already. A match is maximal when it ends past every earlier one.
                    segment = lengths[offset : short_stop - position]
                    ends = np.arange(cursor, short_stop) + segment
                    before = np.maximum.accumulate(np.concatenate([[reach], ends[:-1]]))
                    found = np.flatnonzero((ends > before) & (segment > 0))
                    if len(found):
                        yield cursor + found, segment[found], places[offset + found]
                    reach = max(reach, int(ends.max()))
                if short_stop == stop:
                    cursor = stop
                    break
                query.keep_from(short_stop)
                length, place = self._longest_match(query, short_stop, UNKNOWN_LENGTH)
                if short_stop + length > reach:
                    yield np.array([short_stop]), np.array([length]), np.array([place])
                    reach = short_stop + length
                cursor = self._next_extension(query, short_stop, short_stop + length)
            position = cursor

    def _probe(
        self, padded: np.ndarray, query_words: np.ndarray, n: int, start: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Match length (capped at PROBE_BYTES) and a corpus position of it, for positions start..stop-1
        of `padded` (whose text ends at `n`)."""
        # A match starts on a character: only the positions of a character's first byte are
        # searched (a third of them in CJK text); the others report no match.
        leads = np.flatnonzero((padded[start:stop] & 0xC0) != 0x80)
        count = len(leads)
        positions = start + leads
        # A branchless lower bound: every position takes the same ceil(log2 N) halvings of one
        # shared width, so each round is a few whole-array operations (no shrinking index sets).
        base = np.zeros(count, dtype=np.int64)
        width = self.num_bytes
        while width > 1:
            half = width // 2
            probe = base + half
            base = np.where(self._suffix_sorts_first(probe, query_words, positions), probe, base)
            width -= half
        lo = base + self._suffix_sorts_first(base, query_words, positions)
        best_length = np.zeros(count, dtype=np.int64)
        best_place = np.zeros(count, dtype=np.int64)
        limit = np.minimum(PROBE_BYTES, n - positions)
        for neighbour in (lo - 1, lo):
            rows = np.flatnonzero((neighbour >= 0) & (neighbour < self.num_bytes))
            places = self.suffixes[neighbour[rows]].astype(np.int64)
            length = np.zeros(len(rows), dtype=np.int64)
            same = np.arange(len(rows))  # rows whose words matched so far
            for word in range(_WORDS):
                differ = self.words[places[same] + 8 * word] ^ query_words[positions[rows[same]] + 8 * word]
                length[same] += _equal_leading_bytes(differ.astype(np.uint64))
                same = same[differ == 0]
                if not len(same):
                    break
            length = np.minimum(np.minimum(length, limit[rows]), self.num_bytes - places)
            better = length > best_length[rows]
            best_length[rows[better]] = length[better]
            best_place[rows[better]] = places[better]
        lengths = np.zeros(stop - start, dtype=np.int64)
        lengths[leads] = best_length
        places_found = np.zeros(stop - start, dtype=np.int64)
        places_found[leads] = best_place
        return lengths, places_found

    def _suffix_sorts_first(
        self, ranks: np.ndarray, query_words: np.ndarray, positions: np.ndarray
    ) -> np.ndarray:
        """Whether the suffix at each rank sorts before the text's next PROBE_BYTES bytes at each position
        (words compared in order, the later words only where the earlier ones are equal)."""
        places = self.suffixes[ranks].astype(np.int64)
        before = np.zeros(len(ranks), dtype=bool)
        tied = np.arange(len(ranks))
        for word in range(_WORDS):
            corpus_word = self.words[places[tied] + 8 * word]
            text_word = query_words[positions[tied] + 8 * word]
            before[tied] = corpus_word < text_word
            tied = tied[corpus_word == text_word]
            if not len(tied):
                break
        return before

    # -- exact searches of long matches ---------------------------------------------------

    def _compare(self, query: _QueryStream, at: int, length: int, place: int, skip: int) -> tuple[int, int]:
        """(common prefix, order) of text[at:at+length] and the suffix at `place`; the first `skip`
        bytes are known equal. order: -1 text first or a prefix of the suffix, +1 suffix first."""
        common = skip
        step = 64  # most comparisons end within a few bytes: read little first, more each round
        while common < length:
            room = min(step, length - common, self.num_bytes - place - common)
            step = min(step * 16, COMPARE_BYTES)
            if room <= 0:
                if query.fill(at + common + 1) <= at + common:
                    return common, -1  # the text ended too: equal, as if a prefix
                return common, 1  # the suffix ended first: it sorts first
            mine = query.get(at + common, at + common + room)
            theirs = self.text[place + common : place + common + len(mine)]
            differ = np.flatnonzero(mine != theirs)
            if len(differ):
                common += int(differ[0])
                query.note_copy(at, place, common)
                return common, -1 if mine[differ[0]] < theirs[differ[0]] else 1
            common += len(mine)
            query.note_copy(at, place, common)
            if len(mine) < room:
                return common, -1  # the text ended: a prefix of the suffix
        return common, -1

    def _longest_match(self, query: _QueryStream, at: int, length: int) -> tuple[int, int]:
        """The longest prefix of text[at:at+length] in the training text: (its length, a corpus position)."""
        lo, hi = 0, self.num_bytes
        low_common = high_common = 0  # common prefix with the suffixes at lo-1 and hi
        while lo < hi:
            mid = (lo + hi) // 2
            place = int(self.suffixes[mid])
            common, order = self._compare(query, at, length, place, min(low_common, high_common))
            if order > 0:
                lo, low_common = mid + 1, common
            else:
                hi, high_common = mid, common
        best, best_place = 0, 0
        for neighbour in (lo - 1, lo):
            if 0 <= neighbour < self.num_bytes:
                place = int(self.suffixes[neighbour])
                common, _ = self._compare(query, at, length, place, 0)
                if common > best:
                    best, best_place = common, place
        return best, best_place

    def _next_extension(self, query: _QueryStream, start: int, end: int) -> int:
        """Where to go on after a long match text[start:end]: the first later position whose match
        ends past `end` when that position's match is long too, else the first one whose match
        the vectorised probe can settle (`end - PROBE_BYTES + 1`)."""
        if query.fill(end + 1) <= end:
            return end  # the text ends here: no later match can end past it

        def extends(position: int) -> bool:
            wanted = end + 1 - position
            return self._longest_match(query, position, wanted)[0] == wanted

        last = end - PROBE_BYTES  # later positions have matches shorter than the probe, or end past `end`
        if last <= start:
            return start + 1
        # Exponential then binary search for the first position where `extends` holds (monotone).
        step, low, high = 1, start, None
        while high is None:
            candidate = min(start + step, last)
            if extends(candidate):
                high = candidate
            elif candidate == last:
                return last + 1
            else:
                low = candidate
                step *= 2
        while high - low > 1:
            middle = (low + high) // 2
            if extends(middle):
                high = middle
            else:
                low = middle
        return high


_BYTE_LIMITS = np.array([1 << (8 * k) for k in range(1, 8)], dtype=np.uint64)


def _equal_leading_bytes(differ: np.ndarray) -> np.ndarray:
    """How many leading bytes two big-endian words share, from their XOR (8 when equal)."""
    return np.where(differ == 0, 8, 7 - np.searchsorted(_BYTE_LIMITS, differ, side="right"))


def _word_view(data: np.ndarray) -> np.ndarray:
    """The big-endian uint64 starting at each byte of `data` (all but the last 7 bytes), no copy."""
    return np.ndarray(shape=(max(0, len(data) - 7),), dtype=">u8", buffer=data, strides=(1,))


def _count_chars(data: np.ndarray) -> int:
    """Characters in UTF-8 bytes (their first bytes)."""
    return int(np.count_nonzero((data & 0xC0) != 0x80))


class _QueryStream:
    """The bytes of the text being checked, read a piece at a time, with bounded memory.

    The search reads the text at absolute byte offsets, never before the mark `keep_from`. The
    bytes from the mark on are held in `buffer`, except those inside the copied passage being
    followed: `note_copy` records that text[start:start+length] is training text at `place`,
    and those bytes are read back from the (memory-mapped) training text instead of being held,
    so a passage copied over many megabytes costs no memory.
    """

    def __init__(self, pieces: Iterator[bytes], corpus: np.ndarray) -> None:
        self.pieces = pieces
        self.corpus = corpus
        # One array reused for the whole text (bytes moved to its front as they are dropped): new
        # arrays of a size that changes with every read would leave the allocator's heap in
        # fragments that it keeps, and the process would grow with the text after all.
        self.storage = np.zeros(1 << 18, dtype=np.uint8)  # grows (doubling) to what the reads need
        self.held = 0  # bytes in use at the front of storage
        self.start = 0  # offset of buffer[0] in the text
        self.chars_before_start = 0
        self.at_end = False
        self.mark = 0
        self.copy = (0, 0, 0)  # (start in the text, place in the corpus, length)
        self.memo = (0, 0)  # (byte offset >= start, characters before it): counting goes on from there

    @property
    def end(self) -> int:
        """Offset after the last byte read so far (the text's length once `at_end`)."""
        return self.start + self.held

    @property
    def buffer(self) -> np.ndarray:
        """The bytes held, text[start:end] (a view: valid until the next read)."""
        return self.storage[: self.held]

    def keep_from(self, offset: int) -> None:
        """Nothing before `offset` will be read again (offsets only grow)."""
        self.mark = max(self.mark, offset)

    def note_copy(self, start: int, place: int, length: int) -> None:
        """text[start:start+length] equals the training text at `place`; kept when it covers more
        of what may still be read than the copy known so far."""
        if start > self.mark:
            return
        copy_start, _, copy_length = self.copy
        covered_to = copy_start + copy_length if copy_start <= self.mark else self.mark
        if start + length > covered_to:
            self.copy = (start, place, length)

    def fill(self, offset: int) -> int:
        """Read pieces until the bytes before `offset` are read or the text ends; min(offset, end)."""
        while self.end < offset and not self.at_end:
            piece = next(self.pieces, None)
            if piece is None:
                self.at_end = True
                break
            if piece:
                self._drop_read_bytes()
                needed = self.held + len(piece)
                if needed > len(self.storage):
                    grown = np.zeros(max(needed, 2 * len(self.storage)), dtype=np.uint8)
                    grown[: self.held] = self.storage[: self.held]
                    self.storage = grown
                self.storage[self.held : needed] = np.frombuffer(piece, dtype=np.uint8)
                self.held = needed
        return min(offset, self.end)

    def _drop_read_bytes(self) -> None:
        """Forget the buffered bytes before the mark, and those the copy can give back."""
        drop_to = self.mark
        copy_start, _, copy_length = self.copy
        if copy_start <= drop_to < copy_start + copy_length:
            drop_to = copy_start + copy_length
        drop_to = min(drop_to, self.end)
        if drop_to > self.start:
            self.chars_before_start += _count_chars(self.buffer[: drop_to - self.start])
            kept = self.held - (drop_to - self.start)
            self.storage[:kept] = self.storage[drop_to - self.start : self.held]
            self.held = kept
            self.start = drop_to
            self.memo = (self.start, self.chars_before_start)

    def get(self, first: int, stop: int) -> np.ndarray:
        """text[first:stop] (shorter where the text ends); `first` is at or after the mark."""
        stop = self.fill(stop)
        if first >= self.start:
            return self.buffer[first - self.start : max(first, stop) - self.start]
        copy_start, place, copy_length = self.copy
        if not copy_start <= first or copy_start + copy_length < min(stop, self.start):
            raise AssertionError(f"novelty: bytes {first}..{stop} of the text are no longer held")
        middle = min(stop, self.start)
        head = self.corpus[place + first - copy_start : place + middle - copy_start]
        if stop <= self.start:
            return head
        return np.concatenate([head, self.buffer[: stop - self.start]])

    def chars_before(self, offset: int) -> int:
        """Characters in text[:offset] (`offset` at or after the mark)."""
        if offset >= self.start:
            memo_byte, memo_chars = self.memo
            if offset < memo_byte:
                memo_byte, memo_chars = self.start, self.chars_before_start
            chars = memo_chars + _count_chars(self.buffer[memo_byte - self.start : offset - self.start])
            self.memo = (offset, chars)
            return chars
        chars = self.chars_before_start
        for block_end in range(self.start, offset, -READ_BYTES):  # back to `offset` through the copy
            chars -= _count_chars(self.get(max(offset, block_end - READ_BYTES), block_end))
        return chars

    def total_chars(self) -> int:
        """Characters in the whole text (reads what is left of it, holding none)."""
        self.keep_from(1 << 62)
        self.fill(1 << 62)
        return self.chars_before_start + _count_chars(self.buffer)


class _ReportBuilder:
    """Turns maximal byte matches into character spans, the copied share and the longest span."""

    def __init__(
        self,
        checker: NoveltyChecker,
        query: _QueryStream,
        min_span: int,
        text_cap: int | None,
        max_spans: int | None,
    ) -> None:
        self.checker = checker
        self.query = query
        self.min_span = min_span
        self.text_cap = text_cap
        self.max_spans = max_spans
        self.covered_to = 0  # characters up to here are already counted as copied
        self.copied = 0
        self.longest: tuple[int, int, int, int] | None = None  # char start, char length, place, bytes
        self.spans: list[CopiedSpan] = []
        self.num_spans = 0

    def add(self, starts: np.ndarray, lengths: np.ndarray, places: np.ndarray) -> None:
        """A batch of maximal matches: byte starts (each a character's first byte), byte lengths."""
        query = self.query
        ends = starts + lengths
        first, last = int(starts[0]), int(ends.max())
        if last - first > 4 * CHUNK_POSITIONS:  # a long passage: counted through the training text, in blocks
            for start, end, place in zip(starts.tolist(), ends.tolist(), places.tolist()):
                while end > start and (query.get(end, end + 1)[:1] & 0xC0).tolist() == [0x80]:
                    end -= 1  # the match ends inside a character: cut to its start
                char_start = query.chars_before(start)
                char_length = sum(
                    _count_chars(self.checker.text[place + at : place + min(end - start, at + READ_BYTES)])
                    for at in range(0, end - start, READ_BYTES)
                )
                self._found(char_start, char_length, place, end - start)
            return
        piece = query.get(first, last + 1)
        # Trim a match that ends inside a character back to that character's start (<= 3 bytes).
        for _ in range(3):
            inside = (ends > starts) & (ends - first < len(piece))
            inside[inside] &= (piece[ends[inside] - first] & 0xC0) == 0x80
            ends = ends - inside
        leads = np.concatenate([[0], np.cumsum((piece[: last - first] & 0xC0) != 0x80)])
        leads += query.chars_before(first)
        char_starts = leads[starts - first]
        char_lengths = leads[ends - first] - char_starts
        best = int(np.argmax(char_lengths))
        self._maybe_longest(
            int(char_starts[best]), int(char_lengths[best]), int(places[best]), int(ends[best] - starts[best])
        )
        for at in np.flatnonzero(char_lengths >= self.min_span).tolist():
            self._copied(
                int(char_starts[at]), int(char_lengths[at]), int(places[at]), int(ends[at] - starts[at])
            )

    def _found(self, char_start: int, char_length: int, place: int, byte_length: int) -> None:
        """One maximal match, in characters (its place and byte length in the training text)."""
        self._maybe_longest(char_start, char_length, place, byte_length)
        self._copied(char_start, char_length, place, byte_length)

    def _maybe_longest(self, char_start: int, char_length: int, place: int, byte_length: int) -> None:
        if char_length > 0 and (self.longest is None or char_length > self.longest[1]):
            self.longest = (char_start, char_length, place, byte_length)  # located at the end, once

    def _copied(self, char_start: int, char_length: int, place: int, byte_length: int) -> None:
        if char_length < self.min_span:
            return
        self.num_spans += 1
        if self.max_spans is None or len(self.spans) < self.max_spans:
            self.spans.append(self._span(char_start, char_length, place, byte_length))
        char_end = char_start + char_length
        self.copied += max(0, char_end - max(char_start, self.covered_to))
        self.covered_to = max(self.covered_to, char_end)

    def _span(self, char_start: int, char_length: int, place: int, byte_length: int) -> CopiedSpan:
        # The span's text is the training text's bytes at `place`: the checked text need not be held.
        shown = byte_length if self.text_cap is None else min(byte_length, 4 * self.text_cap)
        text = bytes(self.checker.text[place : place + shown]).decode("utf-8", "ignore")
        if self.text_cap is not None:
            text = text[: self.text_cap]
        file, line, column = self.checker.index.locate(self.checker.text, place)
        return CopiedSpan(char_start, char_length, text, file, line, column, len(text) < char_length)

    def report(self, num_chars: int) -> NoveltyReport:
        longest = None if self.longest is None else self._span(*self.longest)
        if longest is None and num_chars:
            longest = CopiedSpan(0, 0, "", "", 0, 0)
        return NoveltyReport(
            num_chars=num_chars,
            min_span=self.min_span,
            copied_chars=self.copied,
            longest=longest,
            spans=self.spans,
            num_spans=self.num_spans,
        )


# -- which training text --------------------------------------------------------------------


@dataclass
class TrainingText:
    """What a model says about the text it trained on."""

    source: str | None  # the corpus path the run read (None: the weights do not say)
    fingerprint: str | None
    val_fraction: float
    name: str | None  # the corpus's short name (the cache entry's name)
    model: str | None = None  # the model file, for messages


def training_text_of(weights: Path) -> TrainingText:
    """The training text of a model: its fingerprint and split from the weights' metadata, its path
    from the run's state file beside them (weights copied elsewhere do not know it)."""
    from charrnn.store.checkpoint import load_training_state
    from charrnn.store.run_dir import RunDir

    training = _training_record(Path(weights))
    train_config = training.get("train_config")
    if not isinstance(train_config, dict):
        train_config = {}
    val_fraction = train_config.get("val_fraction", 0.1)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        val_fraction = 0.1
    fingerprint, source = training.get("corpus_fingerprint"), None
    state_path = RunDir(Path(weights).parent).state
    if state_path.is_file():
        try:
            state = load_training_state(state_path)
        except CharrnnError:
            state = {}
        if isinstance(state.get("corpus_source"), str) and state["corpus_source"]:
            source = state["corpus_source"]
        if fingerprint is None and isinstance(state.get("corpus_fingerprint"), str):
            fingerprint = state["corpus_fingerprint"]
    return TrainingText(
        source=source,
        fingerprint=fingerprint if isinstance(fingerprint, str) else None,
        val_fraction=float(val_fraction),
        name=training.get("corpus") if isinstance(training.get("corpus"), str) else None,
        model=_model_name(Path(weights)),
    )


def _model_name(weights: Path) -> str:
    """The model as a message names it: a bundled model by its name (the package path says nothing)."""
    from charrnn.store.bundled import BUNDLED_MODELS, is_bundled

    if is_bundled(weights):
        name = next(name for name, path in BUNDLED_MODELS.items() if path.resolve() == weights.resolve())
        return f"the bundled model {name}"
    return f"the model {weights}"


def _training_record(weights: Path) -> dict[str, Any]:
    """The training record in a model file's metadata: a checkpoint's header, or an `.onnx`
    export's metadata_props (read with the onnx package: no onnxruntime session is made)."""
    from charrnn.export.runtime import is_onnx_path

    if not is_onnx_path(weights):
        from charrnn.store.describe import describe_weights

        return describe_weights(weights)["training"]
    import json

    from charrnn.export import graph
    from charrnn.export.runtime import read_export
    from charrnn.store.checkpoint import reading

    with reading(weights, "model"):
        data = weights.read_bytes()
    _, metadata = read_export(data, weights)
    try:
        info = json.loads(metadata.get(graph.INFO_KEY, "{}"))
    except ValueError:
        info = None
    if not isinstance(info, dict):
        raise CharrnnError(f"{weights} is corrupted (its training record is not readable)")
    return info


def _point_at_it(where: str) -> str:
    return f"{where}: point at it with --corpus PATH"


def open_training_index(
    training: TrainingText | None,
    corpus: str | None = None,
    cache_dir: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[NoveltyChecker, list[str]]:
    """A checker over the model's training text (or `corpus`), building its index when not cached.

    Returns the checker and notes for the user (e.g. "--corpus is not the text the model trained
    on"). A training text that is gone, moved or changed raises one `CharrnnError` saying where
    it was expected and how to point at it.
    """
    notes: list[str] = []
    if corpus is None:
        if training is None or training.fingerprint is None:
            model = "this model" if training is None or training.model is None else training.model
            raise CharrnnError(_point_at_it(f"{model} does not record its training text"))
        cached = find_cached_index(training.fingerprint, training.val_fraction, cache_dir)
        if cached is not None:
            return NoveltyChecker(cached), notes  # found by its hash: the corpus itself is not read
        if training.source is None or training.source == "-":
            where = "was read from standard input" if training.source == "-" else "is not recorded"
            raise CharrnnError(
                _point_at_it(f"the training text of this model {where} and is not in the cache")
            )
        try:
            scan = scan_corpus(corpus_files(training.source), None)
        except CharrnnError:
            raise CharrnnError(
                _point_at_it(
                    f"the training text of this model was expected at {training.source} but is not there"
                )
            ) from None
        if scan.fingerprint != training.fingerprint:
            raise CharrnnError(
                _point_at_it(f"the training text at {training.source} changed since this model trained on it")
            )
        index, _ = cached_suffix_index(scan, training.val_fraction, cache_dir, on_progress)
        return NoveltyChecker(index), notes
    scan = scan_corpus(corpus_files(corpus), None)
    if training is not None and training.fingerprint == scan.fingerprint:
        index, _ = cached_suffix_index(scan, training.val_fraction, cache_dir, on_progress)
    else:
        if training is not None and training.fingerprint is not None:
            notes.append(
                f"{describe_source(corpus)} is not the text this model trained on: checking against all of it"
            )
        index, _ = cached_suffix_index(scan, None, cache_dir, on_progress)
    return NoveltyChecker(index), notes
