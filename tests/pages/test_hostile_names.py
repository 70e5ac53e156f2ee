"""Every user-chosen string goes out escaped (issue #25): on a folder whose run, layer, class,
split, tag, note, config and metric names are Markdown and HTML, no page raises and no text that
Streamlit renders as Markdown holds one of them raw (a link to javascript:, bold, italics, code,
math); a page that names them in text shows them escaped."""

from __future__ import annotations

import re

import pytest

from diagnostics.text import md
from tests import hostile
from tests.pages._app import open_app

PAGES = ["pages/overview.py", "pages/distributions.py", "pages/outputs.py", "pages/health.py", "pages/errors.py",
         "pages/embedding.py", "pages/sample.py", "pages/datamap.py", "pages/compare.py", "pages/ensemble.py"]
# the pages that name a run, class, split, tag or note in text (the others: in pickers and charts; the
# hostile run has no health finding to name a layer)
NAMED_IN_TEXT = ["pages/overview.py", "pages/errors.py", "pages/sample.py", "pages/compare.py",
                 "pages/ensemble.py"]
RAW = [hostile.LINK, hostile.BOLD, hostile.STAR, hostile.TICK, hostile.MATH]
LINK_SYNTAX = re.compile(r"(?<!\\)\]\(javascript:")  # "](javascript:" with its "]" not escaped


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    return hostile.hostile_runs(tmp_path_factory.mktemp("hostile"))


def _markdown_texts(at) -> list[str]:
    """What Streamlit renders as Markdown: text elements, alerts, and the labels of metrics,
    expanders, tabs and widgets."""
    texts = []
    for kind in ("markdown", "caption", "title", "header", "subheader", "info", "warning", "error", "success",
                 "toast", "latex"):
        texts += [str(e.value) for e in at.get(kind)]
    for kind in ("metric", "expander", "tab", "selectbox", "multiselect", "radio", "toggle", "slider",
                 "text_input", "text_area", "button", "checkbox"):
        texts += [str(e.label) for e in at.get(kind) if getattr(e, "label", None)]
        texts += [str(e.help) for e in at.get(kind) if getattr(e, "help", None)]
    texts += [str(e.value) for e in at.get("metric")]  # a metric's value is Markdown too
    return texts


@pytest.mark.parametrize("page", PAGES)
def test_no_page_renders_a_user_chosen_name_as_markdown(monkeypatch, hostile_folder, page):
    at = open_app(monkeypatch, hostile_folder, page, hostile.RUNS[0], timeout=120)
    if page == "pages/sample.py":  # the sample with the tag and the note
        next(s for s in at.selectbox if (s.key or "").startswith("sample_pick_")).set_value(0).run()
        assert not at.exception, [e.value for e in at.exception]
    texts = _markdown_texts(at)
    leaked = sorted({raw for text in texts for raw in RAW if raw in text}
                    | {"](javascript:" for text in texts if LINK_SYNTAX.search(text)})
    assert leaked == [], [t for t in texts if any(r in t for r in leaked) or LINK_SYNTAX.search(t)]
    chosen = hostile.HOSTILE + hostile.RUNS + hostile.CLASSES + [hostile.SPLIT, hostile.NOTE, hostile.METRIC]
    escaped = [md(s) for s in chosen if md(s) != s]
    assert page not in NAMED_IN_TEXT or any(e in text for text in texts for e in escaped), texts


def test_md_escapes_what_markdown_would_render():
    assert md(hostile.LINK) == r"\[click\](javascript:alert(1))"
    assert md("<b>bold</b> *a* `b` $c$ ~d~ a|b &lt;") == r"\<b\>bold\</b\> \*a\* \`b\` \$c\$ \~d\~ a\|b \&lt;"
    assert md("# h") == r"\# h" and md("1. x") == r"1\. x" and md("  - y") == r"  \- y"
    assert md("plain text 4.5 (a): 'b' #2") == "plain text 4.5 (a): 'b' #2"  # nothing to escape
    assert md("one\n- two") == "one  \n\\- two"  # a line break, not a list
