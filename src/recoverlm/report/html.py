"""report.html: the run's Markdown summary as one self-contained page (plots embedded inline).

Rendered by markdown-it (CommonMark plus tables), so a `|` escaped inside a cell, code spans and
the HTML line breaks of the sample-generation table come out as a reader of summary.md sees them.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from markdown_it import MarkdownIt

STYLE = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}code{background:#f4f4f4;padding:0 .2rem}"""


def _embed_images(tokens, base: Path) -> None:
    """Every local image becomes a data: URI, so the page is one file that can be mailed around."""
    for token in tokens:
        for child in token.children or ():
            if child.type != "image":
                continue
            src = child.attrGet("src") or ""
            path = base / src
            if src and not src.startswith(("data:", "http:", "https:")) and path.is_file():
                child.attrSet("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())


def markdown_to_html(markdown: str, base: Path, title: str = "recoverlm report") -> str:
    # html=True lets the summary's own <br> line breaks through; every model-written or
    # user-written text the summary quotes is escaped before it gets there (summary.cell_text).
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    env: dict = {}
    tokens = md.parse(markdown, env)
    _embed_images(tokens, Path(base))
    body = md.renderer.render(tokens, md.options, env)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n{body}</body></html>\n")
