"""Corpora for the sizing study, assembled from text this machine already has (nothing is downloaded).

    python benchmarks/study_corpora.py OUT_DIR            # writes every corpus of the study
    python benchmarks/study_corpora.py OUT_DIR --only code-10mb

Kinds of text:
- prose:        data/tinyshakespeare.txt (the first 200 KB, and all 1.1 MB);
- code:         the Python source files of this machine's Python (the base interpreter's standard
                library and site-packages), in a fixed shuffled order, cut at 1, 10 and 100 MB;
- translations: the translated messages (msgstr) of the machine's gettext catalogues
                (/usr/share/locale/*/LC_MESSAGES/*.mo) in German, French, Spanish, Russian,
                Chinese and Japanese, one message a line, cut at 0.2, 1 and 10 MB. Language by
                language, so the 0.2 and 1 MB corpora are German only, and the last tenth of the
                10 MB one (its validation split) is Russian, which training never reads: do not
                use translations-10mb for the study (its first evaluation read 8.8 nats/char);
- multilingual: the same catalogues, all six languages in one order fixed by a seed, so every
                part of the text (the validation split too) mixes them; cut at 10 MB.

Each corpus is cut at a line end, and its SHA-256 is printed so a result can name the text
it was measured on. The same machine image gives the same corpora; another image may not
(on 2026-12-05 translations-1mb came out 15 bytes shorter than the day before: a catalogue
had changed), so compare a result's `corpus_sha256` before comparing it.
"""

from __future__ import annotations

import argparse
import gettext
import hashlib
import random
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000
TRANSLATION_LANGUAGES = ("de", "fr", "es", "ru", "zh", "ja")


def prose() -> Iterator[str]:
    """tinyshakespeare, whole."""
    yield (REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")


def python_sources() -> Iterator[str]:
    """Every readable UTF-8 .py file of this Python installation, in an order fixed by a seed.

    The base interpreter's folders, not a virtualenv's: the text must not depend on what the venv
    the study runs in has installed.
    """
    base = {"base": sys.base_prefix, "platbase": sys.base_prefix}
    roots = {Path(sysconfig.get_paths(vars=base)[key]) for key in ("stdlib", "purelib", "platlib")}
    files = sorted({path for root in roots if root.is_dir() for path in root.rglob("*.py")})
    random.Random(0).shuffle(files)
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            yield text if text.endswith("\n") else text + "\n"


def _catalogues(language: str) -> list[Path]:
    return sorted(Path("/usr/share/locale").glob(f"{language}*/LC_MESSAGES/*.mo"))


def _messages(catalogues: list[Path]) -> Iterator[str]:
    """The translated messages of these catalogues, one catalogue a piece, one message a line."""
    for path in catalogues:
        try:
            with path.open("rb") as handle:
                catalogue = gettext.GNUTranslations(handle)._catalog  # noqa: SLF001
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        messages = [
            text
            for key, text in sorted(catalogue.items(), key=lambda item: str(item[0]))
            if key and isinstance(text, str) and text.strip()
        ]
        if messages:
            yield "\n".join(" ".join(message.split()) for message in messages) + "\n"


def translations() -> Iterator[str]:
    """The translated messages of the gettext catalogues, language by language."""
    for language in TRANSLATION_LANGUAGES:
        yield from _messages(_catalogues(language))


def multilingual() -> Iterator[str]:
    """The same catalogues as `translations`, every language's shuffled together by a fixed seed."""
    catalogues = [path for language in TRANSLATION_LANGUAGES for path in _catalogues(language)]
    random.Random(0).shuffle(catalogues)
    yield from _messages(catalogues)


KINDS = {
    "prose": prose,
    "code": python_sources,
    "translations": translations,
    "multilingual": multilingual,
}
CORPORA = {  # name: (kind, size in bytes)
    "prose-0.2mb": ("prose", MB // 5),
    "prose-1mb": ("prose", None),  # all of tinyshakespeare (1.1 MB)
    "code-1mb": ("code", MB),
    "code-10mb": ("code", 10 * MB),
    "code-100mb": ("code", 100 * MB),
    "translations-0.2mb": ("translations", MB // 5),
    "translations-1mb": ("translations", MB),
    "translations-10mb": ("translations", 10 * MB),
    "multilingual-10mb": ("multilingual", 10 * MB),
}


def write_corpus(kind: str, size: int | None, path: Path) -> tuple[int, str]:
    """Write the first `size` bytes (cut at a line end) of a kind of text; return its size and hash."""
    digest, written = hashlib.sha256(), 0
    with path.open("wb") as out:
        for text in KINDS[kind]():
            data = text.encode("utf-8")
            if size is not None and written + len(data) > size:
                data = data[: size - written]
                data = data[: data.rfind(b"\n") + 1]
                data = data.decode("utf-8", "ignore").encode("utf-8")
            out.write(data)
            digest.update(data)
            written += len(data)
            if size is not None and written >= size * 0.999 or not data:
                break
    if size is not None and written < size * 0.9:
        raise SystemExit(f"this machine has only {written:,} bytes of {kind} text ({size:,} wanted)")
    return written, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--only", action="append", choices=sorted(CORPORA), help="a corpus (repeatable)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only or CORPORA:
        kind, size = CORPORA[name]
        path = args.out / f"{name}.txt"
        written, digest = write_corpus(kind, size, path)
        print(f"{name}\t{written}\t{digest}\t{path}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
