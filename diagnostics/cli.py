"""The `diagnostics` command: demo and dashboard.

    diagnostics demo                      # train the built-in examples, then serve the dashboard
    diagnostics dashboard [RUNS] [--port N] [--host H]
    diagnostics health RUN [--json] [--fail-on error|warning|info]   # problems: a cause, its symptoms under it
    diagnostics compare RUN_A RUN_B [--split val] [--json] [--limit N]
    diagnostics ensemble RUN RUN [RUN...] [--split val] [--json] [--limit N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

# Streamlit (1.67) runs a `pages/` folder beside the entry file the legacy way until the
# entry has called st.navigation once in the process, so a deep link opened first after
# a start (/distributions) would skip the entry and its run picker. The child process
# switches that off before serving; if the internal moves, it serves as usual.
_STREAMLIT_BOOT = """
import sys
try:
    from streamlit.runtime.pages_manager import PagesManager
    PagesManager.uses_pages_directory = False
except ImportError:
    pass
try:  # the pages' analysis modules (0.6 s), before the first visitor rather than during her first page
    from diagnostics.cli import preload_analysis
    preload_analysis()
except ImportError:
    pass
from streamlit.web.cli import main
sys.argv[0] = "streamlit"
sys.exit(main())
"""


def preload_analysis() -> None:
    """Import every `diagnostics` module (pandas, pyarrow, duckdb, plotly with them): the
    server's boot calls it, so that the first page a person opens does not pay the imports.
    Not `pages` (their caches bind to the runtime streamlit starts later), nor umap or torch."""
    import importlib
    import pkgutil

    import diagnostics

    for module in pkgutil.iter_modules(diagnostics.__path__):
        importlib.import_module(f"diagnostics.{module.name}")
    _warm_up_plotly()


def _warm_up_plotly() -> None:
    """Build and serialise one small chart of panels, as the Overview draws: plotly imports the
    classes that validate a figure's properties at their first use (the first such figure of a
    process took 0.23 s, later ones 0.02 s), and the first page should not pay that."""
    import pandas as pd

    from diagnostics import figures

    frame = pd.DataFrame({"step": [0, 1, 2, 3, 4], "name": "loss", "value": [1.0, 0.8, 0.7, 0.6, 0.5], "rank": 0,
                          "wall_time_s": [0.0, 1.0, 2.0, 3.0, 4.0]})
    figures.runs_scalars_figure({"warm-up": frame}, ["loss", "lr"], smooth=0.5).to_json()


def _app_path() -> str:
    spec = importlib.util.find_spec("streamlit_app")  # locate without importing it
    if spec is None or spec.origin is None:
        sys.exit("diagnostics: cannot find streamlit_app.py — reinstall the package (pip install -e .)")
    return spec.origin


def serve(runs_dir: Path, host: str = "127.0.0.1", port: int = 8501, select: str | None = None) -> int:
    """Serve the dashboard over `runs_dir` until interrupted (opening on run `select`, a folder
    name in it, if given); returns streamlit's exit code."""
    url = f"http://{host}:{port}"
    print(f"diagnostics: dashboard for {runs_dir} at {url}  (Ctrl-C stops it)", flush=True)
    cmd = [
        sys.executable, "-c", _STREAMLIT_BOOT, "run", _app_path(),
        "--server.address", host, "--server.port", str(port), "--server.headless", "true",
        "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
        "--client.toolbarMode", "minimal",  # a local tool: no "Deploy" button, no developer menu
    ]
    env = {**os.environ, "DIAGNOSTICS_RUNS": str(runs_dir.resolve()), "DIAGNOSTICS_WARM_UP": "1"}
    if select:
        env["DIAGNOSTICS_SELECT"] = select
    if os.name == "posix":
        # streamlit takes this process's place: the PID printed by `$!` or shown by ps is
        # the server's, so `kill PID` stops it (a child would outlive its parent's SIGTERM)
        os.execve(sys.executable, cmd, env)
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs)
    if not runs_dir.is_dir():
        print(f"diagnostics: runs folder {runs_dir} does not exist — record a run first "
              "(hooks.watch(..., run_dir=...)) or pass the right folder", file=sys.stderr)
        return 2
    from diagnostics.schema import MANIFEST_FILE

    if (runs_dir / MANIFEST_FILE).is_file():  # a run's own folder: show it, among its neighbours
        run = runs_dir.resolve()
        print(f"diagnostics: {runs_dir} is a run; serving its folder {run.parent} with it selected", flush=True)
        return serve(run.parent, args.host, args.port, select=run.name)
    return serve(runs_dir, args.host, args.port)


def _cmd_demo(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs_dir)
    # The training side lives in `hooks` (it needs torch); run it as its own process so
    # that this package never imports it.
    code = subprocess.call([sys.executable, "-m", "hooks.demo", "--runs-dir", str(runs_dir),
                            "--epochs", str(args.epochs)])
    if code != 0:
        print("diagnostics: the demo's training failed (see above)", file=sys.stderr)
        return code
    if args.no_serve:
        print(f"diagnostics: runs written to {runs_dir}; serve them with: diagnostics dashboard {runs_dir}")
        return 0
    print(f"diagnostics: start with the baseline's health: http://{args.host}:{args.port}/health?run=digits-baseline",
          flush=True)
    return serve(runs_dir, args.host, args.port)


_SEVERITIES = ("info", "warning", "error")


def _open(path: str):
    import diagnostics

    try:
        return diagnostics.open_run(path)
    except diagnostics.DiagnosticsError as exc:
        print(f"diagnostics: {exc}", file=sys.stderr)
        return None


def _where(f) -> str:
    where = " ".join(x for x in (f"layer {f.layer}" if f.layer else "",
                                 f"steps {f.step_start}–{f.step_end}" if f.step_start is not None else "") if x)
    return f" ({where})" if where else ""


def _cmd_health(args: argparse.Namespace) -> int:
    """Problems first (a cause, the symptoms it explains under it; the most likely cause first),
    then the info findings no problem explains. --json: {"run", "problems", "findings"}."""
    import json

    from diagnostics.health import diagnose

    run = _open(args.run)
    if run is None:
        return 2
    findings, problems = diagnose(run)
    if args.json:
        print(json.dumps({"run": run.name, "problems": [p.to_dict() for p in problems],
                          "findings": [f.to_dict() for f in findings]}, indent=1, default=str))
    elif not findings:
        print(f"{run.name}: no findings")
    else:
        worst = [sum(p.severity == s for p in problems) for s in ("error", "warning")]
        counted = ", ".join(f"{n} {w}{'s' if n != 1 else ''}" for n, w in zip(worst, ("error", "warning")) if n)
        print(f"{run.name}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
              f"{' (' + counted + ')' if counted else ''}, from {len(findings)} findings")
        for i, p in enumerate(problems, 1):
            print(f"{i}. [{p.severity}] {p.cause.rule}{_where(p.cause)}: {p.message}")
            print(f"    try: {p.cause.advice}")
            for symptom in p.symptoms:
                print(f"    explains [{symptom.severity}] {symptom.rule}{_where(symptom)}: {symptom.message}")
        folded = {id(f) for f in findings if f.evidence.get("deferred_to")}
        for f in (f for f in findings if f.severity == "info" and id(f) not in folded):
            print(f"[info] {f.rule}{_where(f)}: {f.message}")
            print(f"    try: {f.advice}")
    threshold = _SEVERITIES.index(args.fail_on)
    return 1 if any(_SEVERITIES.index(f.severity) >= threshold for f in findings) else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import json
    import warnings

    import diagnostics

    run_a, run_b = _open(args.run_a), _open(args.run_b)
    if run_a is None or run_b is None:
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # printed below, once, with the result
            result = diagnostics.compare(run_a, run_b, split=args.split)
    except diagnostics.DiagnosticsError as exc:
        print(f"diagnostics: {exc}", file=sys.stderr)
        return 2
    limit = args.limit or None
    for note in result.warnings:
        print(f"diagnostics: warning: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(limit=limit), indent=1, allow_nan=False))
    else:
        print(_compare_text(result, limit))
    return 0


def _compare_text(c, limit: int | None) -> str:
    """The comparison as a person reads it in a terminal."""
    import pandas as pd

    s = c.summary
    classification = c.task == "classification"
    out = [f"A = {c.run_a} (evaluated at step {s['step_a']}), B = {c.run_b} (step {s['step_b']}); "
           f"split {c.split}, {c.task}"]
    out += [f"WARNING: {note}" for note in c.warnings]
    out.append(f"samples: {s['shared']} in both, {s['only_a']} only in A, {s['only_b']} only in B")
    if classification:
        out.append(f"accuracy on the shared samples: A {s['accuracy_a']:.1%}, B {s['accuracy_b']:.1%} "
                   f"({100 * s['accuracy_delta']:+.1f} points)")
        out.append(f"fixed {s['fixed']}, broken {s['broken']}, still wrong {s['still_wrong']}, "
                   f"still right {s['still_right']}")
    else:
        out.append(f"MAE on the shared samples: A {s['mae_a']:.4g}, B {s['mae_b']:.4g} ({s['mae_delta']:+.3g})")
        out.append(f"improved {s['improved']}, worsened {s['worsened']}, same {s['same']} "
                   f"(a change counts when |error| moves by more than {s['tolerance']:.3g})")
    out.append(c.verdict())

    def table(title: str, frame: pd.DataFrame) -> None:
        out.extend(["", title, frame.to_string(index=False, na_rep="—") if not frame.empty else "  (none)"])

    if classification:
        per_class = c.per_class.assign(**{col: c.per_class[col].map(lambda v: f"{v:.1%}" if v == v else "—")
                                          for col in ("recall_a", "recall_b")},
                                       delta=c.per_class["delta"].map(lambda v: f"{100 * v:+.1f}" if v == v else "—"))
        table("per class (recall in %, delta in points):", per_class.drop(columns="class"))
    out.extend(["", "by review tag (the tags on A's evaluated data, from every run in A's folder):"])
    out.extend(f"  {line}" for line in c.tag_sentences() or
               ["(none: tag samples on the Error review page of A, then compare again)"])
    good, bad = ("fixed", "broken") if classification else ("improved", "worsened")
    columns = ["sample_id", "label", "prediction_a", "prediction_b", "loss_a", "loss_b"]
    if not classification:
        columns += ["abs_error_a", "abs_error_b"]
    names = dict(zip(c.per_class["class"], c.per_class["name"]))

    def samples(change: str) -> pd.DataFrame:
        rows = c.top(change, limit)[columns]
        if classification:  # class names rather than indices
            rows = rows.assign(**{col: rows[col].map(lambda v: names.get(int(v), str(v)) if v == v else "—")
                                  for col in ("label", "prediction_a", "prediction_b")})
        return rows

    table(f"top {good} (by how much the {'loss' if classification else '|error|'} fell):", samples(good))
    table(f"top {bad} (by how much it rose):", samples(bad))
    table("config differences:", c.config)
    table("final scalars:", c.scalars)
    table("health findings in one run only:", c.health.drop(columns="message"))
    return "\n".join(out)


def _cmd_ensemble(args: argparse.Namespace) -> int:
    import json
    import warnings

    import diagnostics

    runs = [_open(path) for path in args.runs]
    if any(run is None for run in runs):
        return 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # printed below, once, with the result
            result = diagnostics.ensemble(runs, split=args.split)
    except diagnostics.DiagnosticsError as exc:
        print(f"diagnostics: {exc}", file=sys.stderr)
        return 2
    for note in result.warnings:
        print(f"diagnostics: warning: {note}", file=sys.stderr)
    limit = args.limit or None
    if args.json:
        print(json.dumps(result.to_dict(limit=limit), indent=1, allow_nan=False))
    else:
        print(_ensemble_text(result, limit))
    return 0


def _ensemble_text(e, limit: int | None) -> str:
    """The ensemble as a person reads it in a terminal."""
    from diagnostics.ensemble import TIE_BREAK

    out = [f"{len(e.members)} members, on the {e.shared} samples of split {e.split} that all of them evaluated"]
    out += [f"WARNING: {note}" for note in e.warnings]
    out += ["", "accuracy on the shared samples:"]
    out += [f"  {name:<30} {e.accuracy[name]:.1%}" for name in e.members]
    average = "—  " + e.probability_note if e.probability_accuracy is None else f"{e.probability_accuracy:.1%}"
    out += [f"  {'majority vote':<30} {e.majority_accuracy:.1%}  ({e.majority_ties} tied; {TIE_BREAK})",
            f"  {'probability average':<30} {average}",
            f"  {'oracle (any member right)':<30} {e.oracle_accuracy:.1%}",
            "", "error correlation (phi of the wrong indicators):",
            e.phi.to_string(float_format=lambda v: f"{v:.2f}", na_rep="—"), *e.phi_notes, e.reading(), e.outcome()]
    named = e.only_one_right_named(e.class_names)
    rows = named if limit is None else named.head(limit)
    counts = ", ".join(f"{m} {int((named['member'] == m).sum())}" for m in e.members)
    out += ["", f"samples only one member gets right: {len(e.only_one_right)} ({counts})",
            rows.to_string(index=False) if not rows.empty else "  (none)"]
    return "\n".join(out)


def _count(value: str) -> int:
    count = int(value)
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all) or more, got {count}")
    return count


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {port}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diagnostics", description="Model diagnostics dashboard for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the built-in examples with hooks attached, then serve the dashboard")
    demo.add_argument("--runs-dir", default="runs", help="where to write the demo runs (default: runs)")
    demo.add_argument("--epochs", type=int, default=8, help="epochs per demo run (default: 8)")
    demo.add_argument("--no-serve", action="store_true", help="only train; do not start the dashboard")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=_port, default=8501)
    demo.set_defaults(func=_cmd_demo)

    dash = sub.add_parser("dashboard", help="serve the dashboard over a runs folder")
    dash.add_argument("runs", nargs="?", default="runs", help="folder of runs (default: runs)")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    dash.add_argument("--port", type=_port, default=8501, help="port (default: 8501)")
    dash.set_defaults(func=_cmd_dashboard)
    health = sub.add_parser("health", help="the run's health problems (a cause and its symptoms), for scripts and CI")
    health.add_argument("run", help="a run directory, e.g. runs/exp1")
    health.add_argument("--json", action="store_true",
                        help='print {"run", "problems", "findings"} as JSON (problems first: the likely cause)')
    health.add_argument("--fail-on", choices=_SEVERITIES, default="error",
                        help="exit 1 when a finding at or above this severity fires (default: error)")
    health.set_defaults(func=_cmd_health)

    comp = sub.add_parser("compare", help="which samples run B fixed and broke against run A, and more")
    comp.add_argument("run_a", help="the reference run (before), e.g. runs/baseline")
    comp.add_argument("run_b", help="the run to compare with it (after)")
    comp.add_argument("--split", default="val", help="evaluated split to compare (default: val)")
    comp.add_argument("--json", action="store_true", help="print everything as JSON")
    comp.add_argument("--limit", type=_count, default=10,
                      help="samples listed per change, largest moves first (default: 10; 0: all)")
    comp.set_defaults(func=_cmd_compare)
    ens = sub.add_parser("ensemble", help="whether several runs, combined, would beat the best of them")
    ens.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories evaluated on the same samples")
    ens.add_argument("--split", default="val", help="evaluated split (default: val)")
    ens.add_argument("--json", action="store_true", help="print everything as JSON")
    ens.add_argument("--limit", type=_count, default=10,
                     help="samples only one member gets right to list (default: 10; 0: all)")
    ens.set_defaults(func=_cmd_ensemble)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
