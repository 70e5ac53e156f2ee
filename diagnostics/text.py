"""User-chosen text (run, layer, parameter, class, split, tag, note, metric, config and feature
names, sample ids) shown as text, escaped at the boundary: `md` where Streamlit renders Markdown
(text, alerts, titles, labels of metrics, expanders, tabs, buttons and widgets), `html` where plotly
renders its HTML subset (titles, axis, tick and legend labels, hover text: `<a href>` is live there)."""

from __future__ import annotations

import html as _html
import re

# what makes Markdown anywhere in a line: links and images ([ ]), emphasis (* _ ~), code (`), HTML
# and autolinks (< >), entities (&), math ($), tables (|) and the escape itself; parentheses, dots,
# colons and quotes mean nothing without them and stay as they are
_INLINE = re.compile(r"([\\`*_\[\]<>&$~|])")
# what makes Markdown at a line's start: headings, lists, setext underlines, quotes (> above)
_LINE_START = re.compile(r"^(\s*)([#+\-=]|\d+(?=[.)]))", re.MULTILINE)


def md(value: object) -> str:
    """`value` as literal text inside Markdown: each Markdown character backslash-escaped, line
    breaks kept as line breaks (not new paragraphs, headings or list items).

        st.caption(f"Run {md(run.name)}")  # a run named [x](javascript:..) shows as typed
    """
    text = _INLINE.sub(r"\\\1", str(value))
    text = _LINE_START.sub(lambda m: f"{m.group(1)}{m.group(2)[:-1]}\\{m.group(2)[-1]}" if m.group(2)[0] in "#+-="
                           else f"{m.group(1)}{m.group(2)}\\", text)
    return "  \n".join(text.splitlines()) if "\n" in text or "\r" in text else text


def html(value: object) -> str:
    """`value` as literal text in a plotly title, label or hover text (plotly shows the
    entities as the characters they stand for)."""
    return _html.escape(str(value), quote=False)
