"""The names `charrnn.api` reads text with, kept where it imports them: the reader is `data.reader`."""

from charrnn.data.reader import TextSource, iter_lines, iter_text_chunks

__all__ = ["TextSource", "iter_lines", "iter_text_chunks"]
