"""What crosses from the training step to the writer: a capture step's summaries in one
transfer per device, and the per-step numbers (losses, gradient norms, per-sample records,
whether gradients were reset) kept on the device and moved in batches of steps, one sync
each, so that a non-capture step never waits for the device."""

from __future__ import annotations

import numpy as np
import torch

from diagnostics.writer import RunWriter

LOSS_BATCH = 32  # losses stay on device and cross to the CPU in batches (one sync each)


def write_summaries(writer: RunWriter, step: int, pending: list[tuple[str, str, int, torch.Tensor]]) -> None:
    """Hand one step's summaries (layer, kind, count, summary vector) to the writer as one
    matrix (see `schema.SUMMARY_FIELDS`; histograms padded with -1)."""
    layers, kinds, counts, vecs = zip(*pending)
    matrix = np.full((len(vecs), 1 + max(v.numel() for v in vecs)), -1.0)
    matrix[:, 0] = counts  # schema.SUMMARY_FIELDS[0] is "count"; the vector holds the rest, in order
    devices: dict[torch.device, list[int]] = {}
    for i, v in enumerate(vecs):
        if v.device.type != "cpu":
            devices.setdefault(v.device, []).append(i)
    for rows in devices.values():  # one transfer per device for the whole step
        moved = torch.cat([vecs[i] for i in rows]).to("cpu", torch.float64).numpy()
        start = 0
        for i in rows:
            width = vecs[i].numel()
            matrix[i, 1:1 + width] = moved[start:start + width]
            start += width
    widths: dict[int, list[int]] = {}
    for i, v in enumerate(vecs):
        if v.device.type == "cpu":
            widths.setdefault(v.numel(), []).append(i)
    for width, rows in widths.items():  # one assignment per width: a deep model has 1,500 rows a step
        matrix[rows, 1:1 + width] = np.stack([vecs[i].numpy() for i in rows])
    writer.add_summaries(step, layers, kinds, matrix)


class Handover:
    """Per-step numbers waiting on the device for the next batched transfer.

    Args:
        writer: the run's writer.
    """

    def __init__(self, writer: RunWriter) -> None:
        self.writer = writer
        self.losses: list[tuple[int, torch.Tensor]] = []
        self.grad_norms: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.records: list[tuple[int, str, list, torch.Tensor]] = []
        self.grad_carried: list[tuple[int, bool | torch.Tensor]] = []
        self.flags: list[tuple[int, str, torch.Tensor]] = []  # (step, scalar name, 0-d device tensor)
        self.step_ended_at: dict[int, float] = {}  # wall time of each step not yet flushed
        self.norm_name = "grad_norm"  # schema.GRAD_NORM_SHARD where each rank holds a shard

    def waiting(self) -> bool:
        """Whether losses, gradient norms or records wait for a transfer."""
        return bool(self.losses or self.grad_norms or self.records or self.flags)

    def flush(self) -> None:
        """Move everything waiting to the CPU (one sync per kind) and to the writer."""
        writer, ended_at = self.writer, self.step_ended_at
        if self.losses:
            steps, values = zip(*self.losses)
            for step, value in zip(steps, torch.stack(values).cpu().tolist()):
                writer.add_scalar(step, "loss", value, wall_time_s=ended_at.get(step))
            self.losses = []
        if self.records:
            rows = torch.cat([r for *_, r in self.records]).cpu().double().numpy()
            start = 0
            for step, split, ids, _ in self.records:
                writer.add_records(step, split, ids, rows[start:start + len(ids)])
                start += len(ids)
            self.records = []
        if self.grad_norms:
            steps, produced, clipped = zip(*self.grad_norms)
            both = torch.stack([torch.stack(produced), torch.stack(clipped).float()]).cpu().tolist()
            for step, norm, was_clipped in zip(steps, *both):
                writer.add_scalars(step, {self.norm_name: norm, "grad_clipped": was_clipped},
                                   wall_time_s=ended_at.get(step))
            self.grad_norms = []
        if self.flags:
            steps, names, values = zip(*self.flags)
            for step, name, value in zip(steps, names, torch.stack([v.float().cpu() for v in values]).tolist()):
                writer.add_scalar(step, name, value)
            self.flags = []
        if self.grad_carried:
            steps, carried = zip(*self.grad_carried)
            reset = torch.stack([torch.as_tensor(c).cpu() for c in carried])
            for step, value in zip(steps, (~reset).float().tolist()):
                writer.add_scalar(step, "grad_carried", value)
            self.grad_carried = []
        ended_at.clear()
