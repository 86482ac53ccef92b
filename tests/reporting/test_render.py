"""Table rendering: Markdown and HTML escape text, number formats, footnotes, lookup."""

from __future__ import annotations

import pytest

from medrobust.reporting.render import Cell, Table


def test_table_rendering_escapes_text():
    table = Table("t", "T", "d", ("Model", "Value"),
                  ((Cell("<b>a|b</b>"), Cell(None, "why & how")), (Cell("c"), Cell(0.25))),
                  ("", ".1%"))
    md = table.to_markdown()
    assert "a\\|b" in md and "| n/a [1] |" in md and "| 25.0% |" in md and "[1] why & how" in md
    page = table.to_html()
    assert "&lt;b&gt;a|b&lt;/b&gt;" in page and "<b>" not in page and "why &amp; how" in page
    with pytest.raises(KeyError, match="no row"):
        table.value("zzz", "Value")
