"""Health: the problems the tool finds on its own, where and when, with the evidence and
what to try next; below them, what each rule checks (from the rule registry)."""

import streamlit as st

from diagnostics import health
from pages import _shared

ICONS = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}


def _rules_checked() -> None:
    rules = health.rule_table()
    st.subheader(f"The {len(rules)} rules checked")
    st.table(rules.set_index("rule"))  # a static table: the descriptions wrap


run = _shared.current_run()
path, version = str(run.path), run.data_version()
st.title("Health")
# a check takes seconds on a large run: not on every flush
_shared.live_refresh(run, version, run.status()["state"], every_s=30)
findings = _shared.health(path, version)
counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
cols = st.columns(3)
for col, (severity, n) in zip(cols, counts.items()):
    col.metric(severity.capitalize() + "s", n)
if not findings:
    st.success("No finding: none of the rules listed below fired on what this run recorded.")
    _rules_checked()
    st.stop()
for i, f in enumerate(findings):
    where = f.location()
    with st.expander(f"{f.rule.replace('_', ' ')}{' — ' + where if where else ''}", icon=ICONS.get(f.severity),
                     expanded=f.severity != "info"):
        st.markdown(f"**{f.message}**")
        st.markdown(f"Try: {f.advice}")
        if f.reference:
            st.caption(f"Threshold and reference: {f.reference}")
        st.plotly_chart(health.evidence_figure(run, f), key=f"health_{i}")
_rules_checked()
