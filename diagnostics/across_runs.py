"""What two or more runs share and where they differ besides their samples: the manifest
entries, final scalars and health findings two runs disagree on (`config_diff`,
`scalar_diff`, `health_diff`, which `diagnostics.compare` reports), and the runs of a folder
that recorded the same layer (`runs_recording`, for distributions side by side).

    from diagnostics.across_runs import config_diff, runs_recording
    config_diff(run_a.manifest, run_b.manifest)          # key, value_a, value_b, change, source
    runs_recording("runs", "runs/baseline", "activation", "conv1")["name"]
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from diagnostics.exceptions import DiagnosticsError
from diagnostics.store import Run, list_runs, open_run

# Manifest entries besides `config` that say what a run was (its model, optimiser, loss, seed).
_MANIFEST_KEYS = ("model_class", "num_parameters", "optimizer", "loss_fn", "seed", "class_names", "git_commit")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(manifest_a: dict, manifest_b: dict) -> pd.DataFrame:
    """Manifest entries that differ: every key of `config` (nested dicts as dotted keys), then
    the model class, parameter count, optimiser, loss, seed, class names and git commit."""
    rows = []
    for source, a, b in (("config", _flatten(manifest_a.get("config") or {}), _flatten(manifest_b.get("config") or {})),
                         ("run", {k: manifest_a.get(k) for k in _MANIFEST_KEYS if k in manifest_a},
                          {k: manifest_b.get(k) for k in _MANIFEST_KEYS if k in manifest_b})):
        for key in dict.fromkeys([*a, *b]):
            if key in a and key in b:
                if _canonical(a[key]) == _canonical(b[key]):
                    continue
                change = "changed"
            else:
                change = "only in A" if key in a else "only in B"
            rows.append({"key": key, "value_a": a.get(key), "value_b": b.get(key), "change": change, "source": source})
    return pd.DataFrame(rows, columns=["key", "value_a", "value_b", "change", "source"])


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def scalar_diff(run_a: Run, run_b: Run, split: str = "val") -> pd.DataFrame:
    """The last value of `loss` and of every `val/...` and `<split>/...` scalar in each run."""
    def last(run: Run) -> pd.DataFrame:
        s = run.scalars()
        s = s[(s["name"] == "loss") | s["name"].str.startswith(("val/", f"{split}/"))]
        s = s[s["rank"] == s["rank"].min()] if not s.empty else s
        return s.sort_values("step").groupby("name").tail(1).set_index("name")[["value", "step"]]

    la, lb = last(run_a), last(run_b)
    names = sorted(set(la.index) | set(lb.index), key=lambda n: (n != "loss", n))
    la, lb = la.reindex(names), lb.reindex(names)
    return pd.DataFrame({"name": names, "value_a": la["value"].to_numpy(dtype=float),
                         "value_b": lb["value"].to_numpy(dtype=float),
                         "delta": (lb["value"] - la["value"]).to_numpy(dtype=float),
                         "step_a": la["step"].astype("Int64").to_numpy(),
                         "step_b": lb["step"].astype("Int64").to_numpy()})


def health_diff(findings_a: list, findings_b: list) -> pd.DataFrame:
    """Health findings (from `Run.health()`) that one run has and the other has not, matched
    by rule and layer: a fix that cured dead units shows as `only_in` A."""
    keys_a = {(f.rule, f.layer) for f in findings_a}
    keys_b = {(f.rule, f.layer) for f in findings_b}
    rows = [{"rule": f.rule, "layer": f.layer, "severity": f.severity, "only_in": side, "message": f.message}
            for side, findings, other in (("A", findings_a, keys_b), ("B", findings_b, keys_a))
            for f in findings if (f.rule, f.layer) not in other]
    return pd.DataFrame(rows, columns=["rule", "layer", "severity", "only_in", "message"])


# -- runs that recorded the same layer --------------------------------------------------------

def runs_recording(folder: str | os.PathLike, run: Run | str | os.PathLike, kind: str, layer: str) -> pd.DataFrame:
    """The other runs of `folder` that recorded `kind` summaries of `layer` (by name): what the
    Distributions page can draw beside `run`. One row per run (name: its folder's name, which
    tells copies apart; path, created_at, world_size), most recent first. Broken runs, and runs
    that turn out unreadable while being checked, are left out.

        runs_recording("runs", "runs/baseline", "gradient", "conv1")["name"].tolist()
    """
    me = Path(run.path if isinstance(run, Run) else run).resolve()
    rows = []
    for row in list_runs(folder).itertuples():
        if row.state == "broken" or Path(row.path).resolve() == me:
            continue
        try:
            other = open_run(row.path)
            if layer not in _layers_at(str(other.path.resolve()), other.data_version(), kind):
                continue
        except DiagnosticsError:
            continue
        rows.append({"name": Path(row.path).name, "path": row.path, "created_at": row.created_at,
                     "world_size": int(other.manifest.get("world_size") or 1)})
    frame = pd.DataFrame(rows, columns=["name", "path", "created_at", "world_size"])
    return frame.sort_values("created_at", ascending=False, kind="stable").reset_index(drop=True)


@functools.lru_cache(maxsize=256)
def _layers_at(path: str, version: str, kind: str) -> frozenset[str]:
    return frozenset(open_run(path).layers(kind))
