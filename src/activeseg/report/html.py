"""A self-contained HTML page: text, tables and PNG figures embedded as base64."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
.meta { color: #555; font-size: 0.92em; }
.verdict { background: #f4f7fb; border-left: 4px solid #4c72b0; padding: 0.6em 1em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
td { white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1.2em 0; } figcaption { color: #555; font-size: 0.9em; }
figure.half { display: inline-block; width: 49%; margin: 0.5em 0; vertical-align: top; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.note { color: #8a5a00; } pre { background: #f6f6f6; padding: 0.8em; font-size: 0.85em; }
"""


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG with its caption; ``half``: shown at half the page width, side by side."""

    png: bytes
    caption: str
    half: bool = False


@dataclass
class Section:
    """A titled part of the page; ``highlight`` paragraphs are boxed (the verdict)."""

    title: str
    highlight: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pre: str = ""


def render(title: str, meta: list[str], sections: list[Section]) -> str:
    """The whole page as one string (all text escaped)."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    body += [f'<p class="meta">{html.escape(line)}</p>' for line in meta]
    for s in sections:
        body.append(f"<h2>{html.escape(s.title)}</h2>")
        body += [f'<p class="verdict"><b>{html.escape(t)}</b></p>' for t in s.highlight]
        body += [f"<p>{html.escape(t)}</p>" for t in s.text]
        body += [f'<p class="note">{html.escape(t)}</p>' for t in s.notes]
        body += [_table(t) for t in s.tables]
        body += [_figure(f) for f in s.figures]
        if s.pre:
            body.append(f"<pre>{html.escape(s.pre)}</pre>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def _table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows
    )
    caption = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _figure(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    alt = html.escape(f.caption)
    css = ' class="half"' if f.half else ""
    return (
        f'<figure{css}><img src="data:image/png;base64,{data}" alt="{alt}">'
        f"<figcaption>{alt}</figcaption></figure>"
    )
