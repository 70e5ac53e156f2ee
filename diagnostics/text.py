"""User-chosen text (run, layer, parameter, class, split, tag, note, metric, config and feature
names, sample ids) shown as text, escaped at the boundary: `md` where Streamlit renders Markdown
(text, alerts, titles, labels of metrics, expanders, tabs and widgets), `html` where plotly renders
its HTML subset (titles, axis and legend labels, hover text: `<a href>` is live there)."""

from __future__ import annotations

import html as _html
import re

# every ASCII punctuation character CommonMark lets a backslash escape, less the harmless space-like
# ones: links, emphasis, code, headings, lists, tables, HTML, math ($) and Streamlit's :directives:
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:^=&\"'])")


def md(value: object) -> str:
    """`value` as literal text inside Markdown: each Markdown character backslash-escaped, line
    breaks kept as line breaks (not new paragraphs, headings or list items)."""
    escaped = _MARKDOWN.sub(r"\\\1", str(value))
    return "  \n".join(escaped.splitlines()) if "\n" in escaped or "\r" in escaped else escaped


def html(value: object) -> str:
    """`value` as literal text in a plotly title, label or hover text (plotly decodes the entities
    back to the characters it shows)."""
    return _html.escape(str(value), quote=False)
