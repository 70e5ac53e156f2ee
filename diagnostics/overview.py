"""What the Overview page shows of one run, computed without Streamlit: its headline, its
module table, the other runs it can overlay and which scalars it draws by default.

    run = diagnostics.open_run("runs/exp1")
    headline(run.manifest, run.status())["steps"]
    module_table(run.manifest)                # one row per module, parameters with children
    default_scalars(run.scalars())            # the user's own metrics first
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from diagnostics import schema

# Scalars the tool records for itself; drawn by default only once they say something.
TOOL_SCALARS = ("grad_norm", "grad_clipped")
DEFAULT_PANELS = 4


def headline(manifest: dict, status: dict) -> dict:
    """state, steps (the last step seen or the manifest's count, whichever is larger), task,
    model and parameters (with thousands separators) of a run."""
    return {"state": status["state"], "steps": max(status["last_step"], int(manifest.get("steps", 0) or 0)),
            "task": manifest.get("task") or "—", "model": manifest.get("model_class") or "—",
            "parameters": f"{manifest.get('num_parameters', 0):,}"}


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
    for the health rules (loss-input probes, loop checks)."""
    others = other_scalars(scalars)
    values = {n: scalars.loc[scalars["name"] == n, "value"] for n in others}
    own = [n for n in others if n not in (*TOOL_SCALARS, *schema.LOOP_SCALARS)
           and values[n].notna().any() and not n.startswith(schema.PROBE_PREFIX)]
    own.sort(key=lambda n: n.startswith("train/"))
    tool = [n for n in TOOL_SCALARS if n in values and (values[n].fillna(0) != 0).any()]
    return (own + tool)[:most]
