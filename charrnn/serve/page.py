"""The page of `GET /`: one self-contained HTML file (no CDN, no network), the model's name filled in."""

from __future__ import annotations

import html
from functools import cache
from importlib import resources


@cache
def _template() -> str:
    return resources.files("charrnn.serve").joinpath("page.html").read_text(encoding="utf-8")


def page_html(model_name: str) -> str:
    """The page, naming the model it writes with."""
    return _template().replace("{{MODEL}}", html.escape(model_name))
