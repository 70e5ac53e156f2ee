"""What the Overview page shows of one run, computed without Streamlit: its headline, its
module table, the other runs it can overlay and which scalars it draws by default.

    run = diagnostics.open_run("runs/exp1")
    headline(run.manifest, run.status())["last_step"]
    module_table(run.manifest)                # one row per module, parameters with children
    default_scalars(run.scalars())            # the user's own metrics first
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from diagnostics import errors, schema

# Scalars the tool records for itself; drawn by default only once they say something.
TOOL_SCALARS = ("grad_norm", "grad_clipped")
DEFAULT_PANELS = 4


def headline(manifest: dict, status: dict) -> dict:
    """state, last step (as the run picker says it; the manifest's count − 1 when no step was
    read), task, model and parameters (with thousands separators; "—" when not recorded, as
    for a run written by RunWriter without a model) of a run."""
    counted = int(manifest.get("steps", 0) or 0)
    last = status["last_step"] if status["last_step"] >= 0 else counted - 1
    params = manifest.get("num_parameters")
    return {"state": status["state"], "last_step": f"{last:,}" if last >= 0 else "—",
            "task": manifest.get("task") or "—", "model": manifest.get("model_class") or "—",
            "parameters": f"{params:,}" if isinstance(params, int) else "—"}


def fault_lines(status: dict) -> list[str]:
    """One sentence per part of the recording that failed (`Run.status()["faults"]`, the same
    fault on several ranks said once, with its ranks): what the run lacks from which step,
    and the error, so that a gap is never read as a finding."""
    grouped: dict[tuple, list[str]] = {}
    for f in status.get("faults", ()):
        key = (str(f.get("part", "?")), str(f.get("error", "")), f.get("step", "?"), bool(f.get("switched_off", True)),
               bool(f.get("stops_all", False)))
        grouped.setdefault(key, []).append(str(f.get("rank", "0")))
    lines = []
    for (part, error, step, switched_off, stops_all), ranks in grouped.items():
        where = "" if ranks == ["0"] else f"rank{'s' if len(ranks) > 1 else ''} {', '.join(sorted(ranks))}: "
        if part == "writer":
            lines.append(f"Writing failed ({where}{error}): rows recorded meanwhile are missing.")
        elif stops_all:
            lines.append(f"The recording stopped at step {step} ({where}{error}): nothing after it was recorded. "
                         "Training was not affected.")
        elif switched_off:
            lines.append(f"The {part} part of the recording failed at step {step} ({where}{error}) and was switched "
                         "off: what it records is missing from then on. Training was not affected.")
        else:
            lines.append(f"{part} failed at step {step} ({where}{error}): that call recorded nothing.")
    return lines


def loss_note(manifest: dict, names) -> str | None:
    """One sentence when `loss` and `val/loss` (or any `<split>/loss`) of a regression run are
    different quantities: `loss` is the training criterion per batch, an evaluation's loss the
    mean squared error per sample (a SmoothL1Loss of 0.2 beside a val/loss of 4.7 is not a
    20× gap). None for classification (both cross-entropy), an MSE run (`nn.MSELoss`,
    `F.mse_loss`) or one whose loss function was not recorded."""
    evaluated = sorted(n for n in names if n.endswith("/loss") and not n.startswith(schema.PROBE_PREFIX))
    loss_fn = manifest.get("loss_fn")
    if manifest.get("task") != "regression" or not evaluated or not loss_fn or loss_fn in schema.MSE_LOSSES:
        return None
    unit = errors.target_unit(manifest)
    squared = f"({unit})²" if unit else "the target's unit squared"
    trained = f"the training criterion ({loss_fn})"
    return (f"loss is {trained} per batch; {', '.join(evaluated)} is the evaluation's mean squared error "
            f"per sample, in {squared}: different quantities, so compare each with itself, not with the other.")


def module_table(manifest: dict) -> pd.DataFrame:
    """The model summary of the manifest, one row per module: `params (own)` counts a module's
    own parameters (a container's are its children's, so the root read 0 next to the run's
    total), `params (with children)` those of its subtree, and `output shape` when recorded.
    Empty when the manifest has no model summary."""
    modules = pd.DataFrame(manifest.get("modules", []))
    if modules.empty:
        return modules
    root = modules["name"].iloc[0]
    names = modules["name"].tolist()
    modules.insert(3, "params (with children)", [
        int(modules["params"].sum()) if n == root else
        int(sum(p for other, p in zip(names, modules["params"]) if other == n or other.startswith(n + ".")))
        for n in names])
    modules = modules.rename(columns={"params": "params (own)"})
    if "batch_first" in modules:  # recorded for LSTM/GRU/attention modules only: blank elsewhere
        modules["batch_first"] = modules["batch_first"].map(lambda v: str(v) if isinstance(v, bool) else "")
    shapes = manifest.get("output_shapes") or {}
    if shapes:
        modules["output shape"] = modules["name"].map(lambda n: str(shapes[n]) if n in shapes else "")
    return modules


def module_types(manifest: dict) -> dict[str, str]:
    """Module name → type ("conv1" → "Conv2d") from the manifest's model summary."""
    return {m["name"]: m["type"] for m in manifest.get("modules", [])}


def overlay_candidates(runs: pd.DataFrame, run_path: str | Path) -> pd.DataFrame:
    """The rows of `list_runs` that can be drawn over the run at `run_path`: not broken, not itself."""
    me = Path(run_path).resolve()
    itself = runs["path"].map(lambda path: Path(path).resolve() == me).astype(bool)
    return runs[(runs["state"] != "broken") & ~itself]


def learning_rate_names(scalars: pd.DataFrame) -> list[str]:
    """`lr`, or `lr/<group>` for one learning rate per parameter group."""
    return sorted(n for n in scalars["name"].unique() if n == "lr" or n.startswith("lr/"))


def other_scalars(scalars: pd.DataFrame) -> list[str]:
    """Every scalar but the loss and the learning rates, by name."""
    return sorted(set(scalars["name"]) - {"loss", *learning_rate_names(scalars)})


def default_scalars(scalars: pd.DataFrame, most: int = DEFAULT_PANELS) -> list[str]:
    """The other scalars drawn before anyone picks: the user's own (evaluation metrics, the
    training split's end-of-run evaluation after the others), then the gradient norm, and
    grad_clipped only once clipping engaged (NaN under DDP: unknown); never those recorded
    for the health rules (loss-input probes, loop checks), and a series identical to one
    chosen already (the same metric logged twice: the first name stands for both)."""
    others = other_scalars(scalars)
    values = {n: scalars.loc[scalars["name"] == n, "value"] for n in others}
    own = [n for n in others if n not in (*TOOL_SCALARS, *schema.LOOP_SCALARS)
           and values[n].notna().any() and not n.startswith(schema.PROBE_PREFIX)]
    own.sort(key=lambda n: n.startswith("train/"))
    tool = [n for n in TOOL_SCALARS if n in values and (values[n].fillna(0) != 0).any()]
    chosen, seen = [], []
    for n in own + tool:  # a metric logged under two names (val/acc, val/accuracy): one panel
        if len(chosen) == most:
            break
        series = scalars.loc[scalars["name"] == n, ["rank", "step", "value"]].sort_values(["rank", "step"])
        series = series.to_numpy(dtype=float)
        if not any(np.array_equal(s, series, equal_nan=True) for s in seen):
            seen.append(series)
            chosen.append(n)
    return chosen


def capture_gap_note(manifest: dict, last_step: int, last_capture: int) -> str:
    """A sentence when a run went on well past its last capture (more than a tenth of its
    steps; with every=N, N steps or more), saying why: the automatic schedule captures
    steps 0, 1, 2, 4, 8, … and between those only as often as its cost budget allows, so
    the end of a short run may hold none; `every=N` captures regularly. '' otherwise.

        capture_gap_note(run.manifest, run.status()["last_step"], 128)
    """
    watch = manifest.get("watch") or {}
    every = watch.get("every")
    allowed = every - 1 if isinstance(every, int) else max(1, last_step // 10)  # every=N: N − 1 steps after one
    if last_step - last_capture <= allowed:
        return ""
    said = f" The run went on to step {last_step:,} without another capture"
    if every == "auto":
        return (f"{said}: the automatic schedule captures steps 0, 1, 2, 4, 8, … and in between only as often as "
                f"its {watch.get('budget') or 0.03:.0%} cost budget allows; pass every=N to capture regularly.")
    return f"{said}: it captures every {every} steps." if every else f"{said}."
