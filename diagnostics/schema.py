"""The run format, written down once: manifest keys, table schemas, file names.

Writer (`diagnostics.store.RunWriter`) and reader (`diagnostics.store.Run`) both
import from here. Bump `SCHEMA_VERSION` on any change a reader must know about.

A run directory::

    run.json                    manifest (rank 0), rewritten atomically
    status/rank{R}.json         liveness of each writer: state, heartbeat, last step
    scalars/r{R}-{A}-{B}.parquet        parts covering sequence numbers A..B of rank R
    distributions/r{R}-{A}-{B}.parquet

A part whose sequence range lies inside another part's range (same rank) has been
compacted into it and is ignored by readers, so compaction is atomic from a reader's
point of view: write the merged file, rename it into place, then delete the parts.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

SCHEMA_VERSION = 1
MANIFEST_FILE = "run.json"
STATUS_DIR = "status"
TABLES = ("scalars", "distributions", "records", "samples", "previews", "attributions", "positions", "vocabulary")

# Quantile levels kept per summary; column names are q01, q05, ... q99.
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_COLUMNS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
HIST_BINS = 64

KINDS = ("activation", "gradient", "weight", "param_grad", "update", "output", "label")

# The "layers" of the output and label kinds: one per split and what is summarised there.
# Classification: the predicted class and the label (`class`, counts per class) and the raw
# outputs (`logits`); regression: the outputs and the targets (`value`).
OUTPUT_LAYER_KINDS = ("class", "logits", "value", "outputs")


def output_layer(split: str, what: str) -> str:
    """The layer name output and label summaries of `split` are stored under.

        output_layer("train", "class")   # "train/class"
    """
    if what not in OUTPUT_LAYER_KINDS:
        raise ValueError(f"unknown output layer kind {what!r} — use one of {', '.join(OUTPUT_LAYER_KINDS)}")
    return f"{split}/{what}"


def class_layer(split: str = "train") -> str:
    """Predicted-class and label counts of `split` (classification)."""
    return output_layer(split, "class")


def value_layer(split: str = "train") -> str:
    """Output and target values of `split` (regression)."""
    return output_layer(split, "value")


def dataset_key(split: str, sample_ids, labels) -> str:
    """Identifies a set of samples (same ids and labels → same key), so that review tags
    written on one run show on every run of the same data: `run.evaluate` stores it with
    each evaluation, and the data map derives it from the training records.

        dataset_key("val", ["a", "b"], [0, 1])   # "val:" + 12 hex digits
    """
    import hashlib

    h = hashlib.sha1()
    for i, label in sorted(zip(map(str, sample_ids), (float(v) for v in labels))):
        h.update(f"{i}:{label};".encode())
    return f"{split}:{h.hexdigest()[:12]}"


# The manifest's `loss_fn` names (a module's class or a function's name) that are the mean
# squared error: the evaluation's per-sample `loss` of a regression run is that same quantity.
MSE_LOSSES = frozenset({"MSELoss", "mse_loss"})

# Loss-input probes (hooks/probes.py), scalars at capture steps named PROBE_PREFIX + split/field:
# mean |sum - 1| and mean |logsumexp| of the loss's inputs over the class (dim 1) and batch
# (dim 0) dimensions, the share of integer labels, the number of distinct labels in the batch,
# the outputs' values per sample (columns), and `broadcast`: whether elementwise arithmetic
# expands the outputs against the labels: 2 into a shape that is neither of theirs ((N, 1)
# against (N,) gives (N, N)), 1 the outputs to the labels' shape ((N, 1) against (N, 4)), 0 not.
PROBE_PREFIX = "probe/"
PROBE_FIELDS = ("prob_sum_dev_class", "prob_sum_dev_batch", "logprob_sum_dev_class", "logprob_sum_dev_batch",
                "label_integer_frac", "label_distinct", "output_columns", "broadcast")
# Float targets shaped like the outputs (class probabilities for CrossEntropyLoss): mean |sum
# over dim 1 - 1| of the targets at capture steps (hooks/probes.py, `target_sum_probe`); 0 when each
# row is a distribution (one-hot, smoothed, mixup), 1.5 for multi-hot rows holding 2.5 ones.
TARGET_SUM_DEV = "target_sum_dev"
# The manifest's `loss_input_shapes` (hooks/probes.py, `loss_input_shapes`): the shapes of the
# outputs and labels the loss was given at the first train capture (again at the first that
# broadcasts, if the first did not): {"outputs", "labels", "broadcast_to" (None: the shapes
# do not broadcast), "broadcast" (as the probe: 0, 1 or 2), "step"}.
LOSS_INPUT_SHAPES = "loss_input_shapes"
# Evaluation-time invariance probes (hooks/probes.py, `invariance_probe`), scalars named
# PROBE_PREFIX + split/field, once per split (the first evaluation; "train": the first training
# batch, when the run closes): the largest per-sample relative difference between two eval-mode
# forwards of the same samples, the random calls a third forward made (dropout told it trains;
# samplers), the difference of samples run alone from the same samples inside their batch, and
# the samples probed. The manifest's EVAL_PROBES: {split: {"step", "sites": [the random calls]}}.
EVAL_PROBE_FIELDS = ("eval_random_dev", "eval_dropout_calls", "eval_sampling_calls", "eval_batch_dev",
                     "eval_probe_samples")
EVAL_PROBES = "eval_probes"
# Padding evidence (hooks/probes.py): at the first training forward, the integer (batch,
# positions) input's most common last token and its share of the batch (scalars
# PROBE_PREFIX + "train/" + field); at captures, sequence-shaped integer labels' most common
# value and its share of the label positions (LABEL_TOP_FIELDS, NaN for other labels).
PADDING_FIELDS = ("input_end_value", "input_end_share")
LABEL_TOP_FIELDS = ("label_top_value", "label_top_share")

# Sharded training (FSDP; the manifest's `sharding`): each rank records its shard's gradient
# norm under this name; the reader gives `grad_norm` = sqrt of the sum of their squares.
GRAD_NORM_SHARD = "grad_norm_shard"
# ...and its weights, parameter gradients and updates per shard, merged by the reader
SHARDED_KINDS = ("weight", "param_grad", "update")

SCALARS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("name", pa.string()),
        ("value", pa.float64()),
        ("rank", pa.int32()),
        ("wall_time_s", pa.float64()),
    ]
)

# One row per (step, layer, kind, rank). The histogram has `len(hist_counts)` equal
# bins spanning [hist_min, hist_max]; for class histograms (layer "class") the bins
# are the class indices 0..C-1, i.e. hist_min = -0.5 and hist_max = C - 0.5.
DISTRIBUTIONS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("layer", pa.string()),
        ("kind", pa.string()),
        ("rank", pa.int32()),
        ("count", pa.int64()),
        ("mean", pa.float64()),
        ("std", pa.float64()),
        ("min", pa.float64()),
        ("max", pa.float64()),
        ("zero_frac", pa.float64()),
        ("nan_count", pa.int64()),
        ("inf_count", pa.int64()),
        *[(c, pa.float64()) for c in QUANTILE_COLUMNS],
        # activations only (NaN elsewhere): share of units (channels for conv outputs,
        # features otherwise) never positive over the captured batch, for ReLU-family
        # layers; share of values within 1% of the bounds, for tanh/sigmoid-family layers.
        ("dead_frac", pa.float64()),
        ("saturated_frac", pa.float64()),
        ("hist_min", pa.float64()),
        ("hist_max", pa.float64()),
        ("hist_counts", pa.list_(pa.int64())),
    ]
)

# The numbers a summary carries, in the order the capture side hands them over: one
# float row per summary = these fields, then the histogram counts (padded with -1).
SUMMARY_FIELDS = (
    "count", "mean", "std", "min", "max", "zero_frac", "nan_count", "inf_count",
    *QUANTILE_COLUMNS, "dead_frac", "saturated_frac", "hist_min", "hist_max",
)

# Per-sample training records: one row per sample each step that `log_batch(..., ids=)`
# brings ids (the raw material of training dynamics: data maps, area under the margin).
# `label` and `prediction` are class indices for classification, values for regression;
# `confidence` is the probability given to the label, `margin` the label's logit minus
# the largest other logit (Pleiss et al. 2020), `residual` prediction − label.
RECORD_FIELDS = ("label", "prediction", "loss", "confidence", "margin", "correct", "residual")
RECORDS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("split", pa.string()),
        ("sample_id", pa.string()),
        ("rank", pa.int32()),
        *[(f, pa.float64()) for f in RECORD_FIELDS],
    ]
)

# Evaluation passes (`run.evaluate`): one row per sample per evaluation. `confidence` is
# the probability of the predicted class (what calibration is about), `label_prob` the
# probability of the label. Input statistics follow as float64 columns named input_*
# (which ones depends on the input: images, 1-D signals, tokens), so parts may differ
# in those columns; readers union them by name.
SAMPLES_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("split", pa.string()),
        ("sample_id", pa.string()),
        ("rank", pa.int32()),
        ("label", pa.float64()),
        ("prediction", pa.float64()),
        ("loss", pa.float64()),
        ("confidence", pa.float64()),
        ("label_prob", pa.float64()),
        ("margin", pa.float64()),
        ("correct", pa.float64()),
        ("residual", pa.float64()),
        ("probs", pa.list_(pa.float32())),
        ("embedding", pa.list_(pa.float32())),
    ]
)
# A small picture of each evaluated input: `kind` is image (shape H, W, C), signal
# (C, T), vector (D) or tokens (T); values are row-major float32.
PREVIEWS_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("sample_id", pa.string()),
        ("kind", pa.string()),
        ("shape", pa.list_(pa.int32())),
        ("values", pa.list_(pa.float32())),
    ]
)
# Attributions of the worst evaluated samples, at the input's (preview's) resolution.
ATTRIBUTIONS_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("split", pa.string()),
        ("sample_id", pa.string()),
        ("method", pa.string()),
        ("target", pa.int64()),
        ("shape", pa.list_(pa.int32())),
        ("values", pa.list_(pa.float32())),
    ]
)

# Outputs with a position axis (tokens, pixels) or several labels per sample (issue #24): one
# row per counted position of an evaluation's stored samples (a position whose label is the
# ignore_index is not counted). `position` is the flat row-major index into the position
# shape the manifest's evaluation entry keeps (`EVAL_POSITIONS`); several labels per sample:
# the label's index. `confidence` is the probability of the prediction; `loss` the
# position's cross-entropy (several labels: its binary cross-entropy).
POSITIONS_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("step", pa.int64()),
        ("sample_id", pa.string()),
        ("position", pa.int64()),
        ("label", pa.int64()),
        ("prediction", pa.int64()),
        ("loss", pa.float64()),
        ("confidence", pa.float64()),
    ]
)
# The strings of the token ids an evaluation stored (inputs' previews, labels, predictions),
# when `evaluate(tokenizer=...)` was given one.
VOCABULARY_SCHEMA = pa.schema(
    [
        ("split", pa.string()),
        ("step", pa.int64()),
        ("token_id", pa.int64()),
        ("text", pa.string()),
    ]
)
# The manifest's evaluation entry (`evaluations[i]`) of position outputs gains this key: a
# dict with `shape` (the positions of one sample), `layout` (one of POSITION_LAYOUTS),
# `ignore_index`, `stored_samples` (how many samples' positions the table holds: the first
# ones in loader order, kept whole), `total_samples`, `cap` (the rows' limit, max_positions)
# and `shift_labels` (position t's output was scored against label t + 1).
EVAL_POSITIONS = "positions"
# tokens: 1-D positions of a token input; pixels: 2-D or more; labels: several labels per sample.
POSITION_LAYOUTS = ("tokens", "pixels", "labels")
# Sample columns (`samples` table) of position outputs: how many positions were counted,
# and the largest loss among them.
POSITION_SAMPLE_COLUMNS = ("positions_counted", "position_accuracy", "worst_position_loss")

SCHEMAS = {"scalars": SCALARS_SCHEMA, "distributions": DISTRIBUTIONS_SCHEMA, "records": RECORDS_SCHEMA,
           "samples": SAMPLES_SCHEMA, "previews": PREVIEWS_SCHEMA, "attributions": ATTRIBUTIONS_SCHEMA,
           "positions": POSITIONS_SCHEMA, "vocabulary": VOCABULARY_SCHEMA}
# Compacted parts are sorted so that DuckDB's row-group statistics skip what a query doesn't ask for.
SORT_KEYS = {"scalars": ("name", "step"), "distributions": ("kind", "layer", "step"),
             "records": ("split", "sample_id", "step"), "samples": ("split", "step", "sample_id"),
             "previews": ("split", "sample_id"), "attributions": ("split", "step", "sample_id"),
             "positions": ("split", "step", "sample_id", "position"), "vocabulary": ("split", "step", "token_id")}

# Manifest keys every run has; more (model summary, config, ...) are welcome.
MANIFEST_REQUIRED = ("schema_version", "name", "created_at")
# Optional manifest keys the training-loop health rules read (diagnostics.health.loop):
# `parameters[i].in_optimizer` (bool, None without an optimizer), `parameters[i].dtype` ("float16",
# ...: the parameter's dtype at watch(); absent in older runs); `optimizer_groups`: one
# dict per param group at watch() (its parameter names under "params", then lr,
# weight_decay, momentum, betas, ... as the optimizer holds them);
# `no_grad_forward_train_mode`: the dropout/BatchNorm modules that were in train mode
# during a forward under no_grad (the user's own validation), first time seen.
# `step_eval_mode` (also a scalar): the share of the model's dropout/BatchNorm modules (p > 0)
# in eval mode at an optimizer step, written at the first step and then when it changes (the
# value holds until the next); in the manifest, the first step with the largest share yet:
# {"modules" (those in eval mode, up to 20 names), "of" (how many such modules), "step"}.
STEP_EVAL_MODE = "step_eval_mode"
MANIFEST_OPTIONAL = ("optimizer_groups", "no_grad_forward_train_mode", LOSS_INPUT_SHAPES, STEP_EVAL_MODE)
# Scalars recorded for those rules: `grad_carried` (capture steps: 1 when the smallest
# optimized parameter still held a non-zero gradient at the step's first backward, i.e.
# gradients were not reset), `batchnorm_batch_size` (capture steps: the batch a BatchNorm
# layer in train mode normalised over), `no_grad_forward_train_mode` (steps with such a
# forward: how many dropout/BatchNorm modules were in train mode).
LOOP_SCALARS = ("grad_carried", "batchnorm_batch_size", "no_grad_forward_train_mode", STEP_EVAL_MODE)

# A writer that has not written its heartbeat for this long is taken as dead.
STALE_AFTER_S = 60.0

PART_RE = re.compile(r"^r(?P<rank>\d+)-(?P<first>\d+)-(?P<last>\d+)\.parquet$")


def part_name(rank: int, first: int, last: int) -> str:
    return f"r{rank}-{first:08d}-{last:08d}.parquet"


def live_parts(table_dir: Path) -> list[tuple[int, int, int, Path]]:
    """Parts of a table as (rank, first, last, path), minus those compacted into another."""
    parts = []
    for p in table_dir.glob("r*.parquet"):
        m = PART_RE.match(p.name)
        if m:
            parts.append((int(m["rank"]), int(m["first"]), int(m["last"]), p))
    live = []
    for rank, first, last, path in parts:
        covered = any(
            r == rank and f <= first and last <= l and (f, l) != (first, last)
            for r, f, l, _ in parts
        )
        if not covered:
            live.append((rank, first, last, path))
    return sorted(live, key=lambda x: (x[0], x[1]))
