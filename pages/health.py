"""Health: the problems the tool finds on its own, the most likely cause first, each with the
symptoms it explains, where and when, the evidence and what to try next; below them every
finding, and what each rule checks (from the rule registry)."""

import pandas as pd
import streamlit as st

from diagnostics import badges, health
from diagnostics.text import md
from pages import _shared

ICONS = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}


@st.cache_data(show_spinner=False, max_entries=64, ttl=60)
def _problems(path: str, version: str) -> list:
    """The run's problems; from the run's badge cache on disk when its health was checked."""
    return badges.cached_problems(path)


def _rules_checked() -> None:
    rules = health.rule_table()
    st.subheader(f"The {len(rules)} rules checked")
    st.table(rules.set_index("rule"))  # a static table: the descriptions wrap


def _problem(i: int, p) -> None:
    cause, where = p.cause, p.cause.location()
    title = f"{i + 1}. {cause.rule.replace('_', ' ')}{' — ' + md(where) if where else ''}"
    if p.also:
        title += f" and {len(p.also)} more"
    if p.symptoms:
        title += f" (+{len(p.symptoms)} symptom{'s' if len(p.symptoms) > 1 else ''})"
    with st.expander(title, icon=ICONS.get(p.severity), expanded=i == 0):
        st.markdown(f"**{md(p.message)}**")
        st.markdown(f"Try: {md(cause.advice)}")
        if cause.reference:
            st.caption(f"Threshold and reference: {md(cause.reference)}")
        st.plotly_chart(health.evidence_figure(run, cause), key=f"health_problem_{i}")
        if p.symptoms:
            st.markdown("Symptoms it explains (fix the cause first, then check again):")
            st.markdown("\n".join(f"- **{s.rule.replace('_', ' ')}**"
                                  f"{' (' + md(s.location()) + ')' if s.location() else ''}: {md(s.message)}"
                                  for s in p.symptoms))


def _all_findings(findings) -> None:
    st.subheader(f"All findings ({len(findings)})")
    st.dataframe(pd.DataFrame([{"severity": f.severity, "rule": f.rule, "where": f.location(),
                                "explained by": f.evidence.get("deferred_to", ""), "message": f.message,
                                "try": f.advice} for f in findings]), hide_index=True)


run = _shared.current_run()
path, version = str(run.path), run.data_version()
st.title("Health")
# a check takes seconds on a large run: not on every flush
_shared.live_refresh(run, version, run.status()["state"], every_s=30)
findings = _shared.health(path, version)
problems = _problems(path, version)
cols = st.columns(3)
cols[0].metric("Problems", len(problems), help="a cause with the symptoms it explains counts once")
cols[1].metric("Errors", sum(p.severity == "error" for p in problems))
cols[2].metric("Info findings", sum(f.severity == "info" and not f.evidence.get("deferred_to") for f in findings))
if not findings:
    st.success("No finding: none of the rules listed below fired on what this run recorded.")
    _rules_checked()
    st.stop()
if problems:
    st.caption("The first problem is the most likely cause: a finding that another explains is listed under it.")
else:
    st.success("No problem: the findings below are information only.")
for i, p in enumerate(problems):
    _problem(i, p)
_all_findings(findings)
_rules_checked()
