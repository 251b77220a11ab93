"""One self-contained HTML page: images embedded as base64 data URIs, tables as HTML, inline CSS.

No scripts, no fonts or styles from elsewhere, no links to files: the page can be mailed or opened
from anywhere and shows the same thing. Text is escaped; tables written as markdown by
report/tables.py are converted (bold and underline kept).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
h3 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; }
td:first-child, th:first-child, td.text { text-align: left; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .9em; color: #555; margin-top: .3em; }
p.note { color: #666; font-size: .9em; }
nav ul { columns: 2; font-size: .9em; }
"""


def data_uri(png: bytes | str | Path) -> str:
    """PNG bytes (or a PNG file) as a data: URI."""
    if not isinstance(png, bytes):
        png = Path(png).read_bytes()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _inline(text: str) -> str:
    """Escape, then keep the markup tables.py writes: **bold** and <u>underline</u>."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"&lt;u&gt;(.+?)&lt;/u&gt;", r"<u>\1</u>", out)


NUMERIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)( ± [-+]?\d+\.?\d*)?|-|")


def _td(text: str, cell) -> str:
    """Numbers right-aligned (the stylesheet's default), text left-aligned."""
    plain = re.sub(r"\*\*|</?u>", "", text).strip()
    left = "" if NUMERIC.fullmatch(plain) else ' class="text"'
    return f"<td{left}>{cell(text)}</td>"


def table_html(header: Sequence[Any], rows: Sequence[Sequence[Any]], markup: bool = False) -> str:
    cell = _inline if markup else (lambda v: html.escape(str(v)))
    head = "".join(f"<th>{cell(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(str(v), cell) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html(text: str) -> str:
    """The subset of markdown the tables are written in: ### headings, pipe tables, paragraphs."""
    parts: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            rows = [r for r in table if not all(re.fullmatch(r":?-+:?", c.strip()) for c in r)]
            parts.append(table_html(rows[0], rows[1:], markup=True))
            table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            table.append([c.strip() for c in stripped.strip("|").split("|")])
            continue
        flush()
        if not stripped:
            continue
        match = re.match(r"(#{1,6})\s+(.*)", stripped)
        if match:
            level = min(len(match.group(1)) + 1, 6)
            parts.append(f"<h{level}>{_inline(match.group(2))}</h{level}>")
        else:
            parts.append(f'<p class="note">{_inline(stripped)}</p>')
    flush()
    return "\n".join(parts)


class Page:
    """Blocks appended in order, rendered into one HTML document."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[str] = []
        self.sections: list[tuple[str, str]] = []

    def heading(self, text: str, level: int = 2) -> str:
        anchor = f"s{len(self.sections) + 1}"
        if level == 2:
            self.sections.append((anchor, text))
        self.blocks.append(f'<h{level} id="{anchor}">{html.escape(text)}</h{level}>')
        return anchor

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.blocks.append(f"<p{cls}>{html.escape(text)}</p>")

    def image(self, png: bytes | str | Path, caption: str = "", alt: str = "") -> None:
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.blocks.append(
            f'<figure><img alt="{html.escape(alt or caption or "figure", quote=True)}" '
            f'src="{data_uri(png)}">{cap}</figure>'
        )

    def table(self, header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(table_html(header, rows))

    def markdown(self, text: str) -> None:
        self.blocks.append(markdown_to_html(text))

    def render(self) -> str:
        toc = ""
        if len(self.sections) > 2:
            items = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.sections)
            toc = f"<nav><ul>{items}</ul></nav>"
        body = "\n".join(self.blocks)
        return (
            f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(self.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{toc}\n{body}\n</body>\n</html>\n"
        )

    def write(self, path: str | Path) -> Path:
        from ..runs import atomic_write_text

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.render())
        return path
