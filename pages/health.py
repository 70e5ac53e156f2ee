"""Health: the problems the tool finds on its own, where and when, with the evidence and
what to try next."""

import streamlit as st

from diagnostics import health_figures
from pages import _shared

ICONS = {"error": ":material/error:", "warning": ":material/warning:", "info": ":material/info:"}

run = _shared.current_run()
path, version = str(run.path), run.data_version()
st.title("Health")
findings = _shared.health(path, version)
counts = {s: sum(f.severity == s for f in findings) for s in ("error", "warning", "info")}
cols = st.columns(3)
for col, (severity, n) in zip(cols, counts.items()):
    col.metric(severity.capitalize() + "s", n)
if not findings:
    st.success("No finding: none of the rules (dead units, saturation, vanishing or exploding gradients, "
               "activation scale across depth, update-to-weight ratio, NaN/Inf, outputs vs labels, loss vs a "
               "trivial baseline, overfitting, label noise, input scale) fired on what this run recorded.")
    st.stop()
for i, f in enumerate(findings):
    where = ", ".join(x for x in (f"layer {f.layer}" if f.layer else "",
                                  "" if f.step_start is None else f"step {f.step_start}" if f.step_end in (None, f.step_start)
                                  else f"steps {f.step_start}–{f.step_end}") if x)
    with st.expander(f"{f.rule.replace('_', ' ')}{' — ' + where if where else ''}", icon=ICONS.get(f.severity),
                     expanded=f.severity != "info"):
        st.markdown(f"**{f.message}**")
        st.markdown(f"Try: {f.advice}")
        if f.reference:
            st.caption(f"Threshold and reference: {f.reference}")
        st.plotly_chart(health_figures.evidence_figure(run, f), key=f"health_{i}")
