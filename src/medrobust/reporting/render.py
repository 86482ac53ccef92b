"""Report tables as plain data (:class:`Table` of :class:`Cell` rows) and their rendering.

A table knows its columns, one number format per column, cell footnotes and table notes, and
renders itself to GitHub-flavoured Markdown or to an escaped HTML fragment.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Cell", "Table"]


@dataclass(frozen=True)
class Cell:
    """One table entry: a value (None = n/a) and an optional footnote, e.g. why it is n/a."""

    value: float | int | str | None
    note: str | None = None


@dataclass(frozen=True)
class Table:
    """A titled table of :class:`Cell` rows; ``formats`` holds one format spec per column."""

    key: str
    title: str
    description: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    formats: tuple[str, ...]
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.formats) != len(self.columns):
            raise ValueError(f"table {self.key!r}: {len(self.formats)} formats for "
                             f"{len(self.columns)} columns")
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.key!r}: a row has {len(row)} cells for "
                                 f"{len(self.columns)} columns")

    def value(self, row: str, column: str, *, key_columns: int = 1) -> Any:
        """The raw value in ``column`` of the row whose first cells read ``row``.

        With ``key_columns=2`` the row is named ``"first / second"`` (e.g. modality / model).
        """
        if column not in self.columns:
            raise KeyError(f"table {self.key!r} has no column {column!r}; columns: {self.columns}")
        j = self.columns.index(column)
        for cells in self.rows:
            name = " / ".join(str(c.value) for c in cells[:key_columns])
            if name == row:
                return cells[j].value
        raise KeyError(f"table {self.key!r} has no row {row!r}")

    def footnotes(self) -> list[str]:
        """The distinct cell notes, in reading order (footnote i is ``footnotes()[i - 1]``)."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for cell in row:
                if cell.note:
                    seen.setdefault(cell.note)
        return list(seen)

    def text(self, cell: Cell, column: int) -> str:
        """A cell's value as text: formatted number, text, or n/a."""
        v = cell.value
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        if isinstance(v, str) or not self.formats[column]:
            return str(v)
        return format(v, self.formats[column])

    def _marked(self, marker: str) -> list[list[str]]:
        index = {note: i + 1 for i, note in enumerate(self.footnotes())}
        return [
            [self.text(c, j) + (marker.format(index[c.note]) if c.note else "")
             for j, c in enumerate(row)]
            for row in self.rows
        ]

    def to_markdown(self, level: int = 3) -> str:
        """GitHub-flavoured Markdown: heading, description, table, numbered footnotes."""
        def esc(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [f"{'#' * level} {self.title}", "", self.description, ""]
        lines.append("| " + " | ".join(esc(c) for c in self.columns) + " |")
        lines.append("|" + "|".join("---:" if f else "---" for f in self.formats) + "|")
        for row in self._marked(" [{}]"):
            lines.append("| " + " | ".join(esc(t) for t in row) + " |")
        notes = self.footnotes()
        if notes:
            lines.append("")
            lines.extend(f"[{i}] {esc(n)}  " for i, n in enumerate(notes, 1))
        if self.notes:
            lines.append("")
            lines.extend(f"*{esc(n)}*  " for n in self.notes)
        return "\n".join(lines).rstrip() + "\n"

    def to_html(self, level: int = 3) -> str:
        """An HTML fragment (section with heading, table, footnotes); all text escaped."""
        e = html.escape
        head = "".join(
            f'<th class="{"num" if f else "txt"}">{e(c)}</th>'
            for c, f in zip(self.columns, self.formats, strict=True)
        )
        body = []
        for cells, row in zip(self.rows, self._marked("\x00{}"), strict=True):
            tds = []
            for j, (cell, text) in enumerate(zip(cells, row, strict=True)):
                shown, _, mark = text.partition("\x00")
                cls = "num" if self.formats[j] else "txt"
                if cell.value is None:
                    cls += " na"
                elif isinstance(cell.value, str) and cell.value.endswith("incomplete"):
                    cls += " warn"
                if len(shown) <= 32:
                    cls += " short"
                sup = f'<sup title="{e(cell.note or "")}">{mark}</sup>' if mark else ""
                tds.append(f'<td class="{cls}">{e(shown)}{sup}</td>')
            body.append("<tr>" + "".join(tds) + "</tr>")
        parts = [
            f'<section class="table" id="table-{e(self.key)}">',
            f"<h{level}>{e(self.title)}</h{level}>",
            f'<p class="desc">{e(self.description)}</p>',
            '<div class="scroll"><table>',
            f"<thead><tr>{head}</tr></thead>",
            "<tbody>" + "\n".join(body) + "</tbody>",
            "</table></div>",
        ]
        notes = self.footnotes()
        if notes:
            parts.append('<ol class="footnotes">' + "".join(f"<li>{e(n)}</li>" for n in notes)
                         + "</ol>")
        parts.extend(f'<p class="note">{e(n)}</p>' for n in self.notes)
        parts.append("</section>")
        return "\n".join(parts) + "\n"
