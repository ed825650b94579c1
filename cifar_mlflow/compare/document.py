"""A report as a list of blocks, written once and rendered twice: as Markdown (report.md, for
disk and GitHub, and the compare run's description) and as one self-contained HTML page
(report.html, images embedded as data: URIs: MLflow's artifact viewer shows HTML in a sandboxed
iframe loaded from a blob: URL, where no relative link or image path resolves, so a relative
link is shown there as the file's name, and `code` in text as code)."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Link:
    text: str
    href: str


Text = str | Link
Cell = Text | tuple[Text, ...]


@dataclass(frozen=True)
class Heading:
    level: int  # 1: the page's title
    text: str


@dataclass(frozen=True)
class Paragraph:
    parts: tuple[Text, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]


@dataclass(frozen=True)
class Image:
    path: str  # relative to the report's folder
    alt: str


Block = Heading | Paragraph | Table | Image


def paragraph(*parts: Text) -> Paragraph:
    return Paragraph(parts)


def table(header, rows) -> Table:
    return Table(tuple(header), tuple(tuple(r) for r in rows))


# --- Markdown -----------------------------------------------------------------------------------


def _md_text(part: Text) -> str:
    if isinstance(part, Link):
        return f"[{part.text}]({part.href})"
    return part


def _md_cell(cell: Cell) -> str:
    parts = cell if isinstance(cell, tuple) else (cell,)
    return "".join(_md_text(p) for p in parts).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            lines += ["".join(_md_text(p) for p in block.parts), ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            lines.append("")
        else:
            lines += [f"![{block.alt}]({block.path})", ""]
    return "\n".join(lines)


# --- HTML ---------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5em 0 1em; }
"""


def _html_text(part: Text) -> str:
    if isinstance(part, Link):
        if "://" not in part.href:  # relative: nowhere to go from a blob: page
            return f"<code>{html.escape(part.text)}</code>"
        return f'<a href="{html.escape(part.href)}">{html.escape(part.text)}</a>'
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(part))


def _html_cell(cell: Cell) -> str:
    parts = cell if isinstance(cell, tuple) else (cell,)
    return "".join(_html_text(p) for p in parts)


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    """One page; each Image read from `folder` and embedded."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append("<p>" + "".join(_html_text(p) for p in block.parts) + "</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            data = base64.b64encode((folder / block.path).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(block.alt)}" src="data:image/png;base64,{data}">')
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
