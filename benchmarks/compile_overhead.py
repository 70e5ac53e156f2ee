"""What does `hooks.watch` cost a `torch.compile`d training loop? Step time of compiled +
watched training against the same compiled training without the tool, on the CPU.

Model: a small CNN (3 conv blocks of Conv3x3 + BatchNorm + ReLU, 16 -> 32 -> 64 channels, max
pooling, then Linear 64*4*4 -> 128 -> 10), 3x32x32 inputs, batch 64, SGD with momentum,
CrossEntropyLoss, fixed random data (seeded). Each mode has its own copy of the same initial
model (each of a class of its own: dynamo does not guard on a module's hooks, so a graph
traced for a model of the same class without them would serve the watched ones too),
`torch.compile(model)` (Inductor by default) after `watch`:

    compiled         no hooks: the baseline.
    compiled+default hooks.watch(...) with the default schedule ("auto").
    compiled+every1  hooks.watch(..., every=1): captures everything on every step.

Timing (one process, interleaved): each mode first runs `--warmup` untimed steps (the compiles:
one graph for the baseline, and for a watched model one without and one with the capture ops,
hooks/compiled.py; their wall time is reported as compile_s). Then `--rounds` rounds; in each,
every mode (order rotating) runs `--steps` timed steps, continuing its own run, so the default
schedule sees one growing run as in real training. ms/step = the round's wall time / steps;
ratio = that / the baseline's in the same round. The table shows the median over rounds (and
the quartiles and the min-max range of the ratio: on a shared machine the rounds are short,
so that each mode's steps see the same load), and the median ratio of this process's CPU time
(time.process_time: the writer thread included, other processes' load not). The dynamo
counters after the run say how many graphs were compiled and how many graph breaks happened
(expected: none).

Run:
    .venv/bin/python benchmarks/compile_overhead.py --json benchmarks/results/compile_overhead.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # this checkout's hooks, not an installed copy
    sys.path.insert(0, str(_ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402, PLC2701  (graphs compiled, graph breaks)

import hooks  # noqa: E402

MODES = ["compiled", "compiled+default", "compiled+every1"]


def make_cnn(num_classes: int = 10) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 16), *block(16, 32), *block(32, 64), nn.Flatten(),
                         nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))


class Trainer:
    """One mode's model, optimizer, compiled forward and (for a watched mode) run."""

    def __init__(self, mode: str, template: nn.Module, tmp: Path, backend: str) -> None:
        # a class of its own per mode: dynamo does not guard on a module's hooks, so a graph
        # traced for another model of the same class, without them, could serve this one
        own_class = type(f"CNN_{mode.replace('+', '_')}", (nn.Sequential,), {})
        self.model = own_class(*copy.deepcopy(list(template)))
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.crit = nn.CrossEntropyLoss()
        self.run = None
        if mode != "compiled":
            every = 1 if mode == "compiled+every1" else "auto"
            self.run = hooks.watch(self.model, optimizer=self.opt, loss_fn=self.crit, run_dir=tmp,
                                   name=mode.replace("+", "-"), every=every)
        self.forward = torch.compile(self.model, backend=backend)

    def steps(self, batches: list, n: int) -> tuple[float, float]:
        """(wall time, this process's CPU time) of n training steps, in seconds."""
        started, cpu_started = time.perf_counter(), time.process_time()
        for i in range(n):
            x, y = batches[i % len(batches)]
            self.opt.zero_grad()
            self.crit(self.forward(x), y).backward()
            self.opt.step()
        return time.perf_counter() - started, time.process_time() - cpu_started


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    template = make_cnn()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(args.batch, 3, 32, 32, generator=g), torch.randint(0, 10, (args.batch,), generator=g))
               for _ in range(4)]
    counters.clear()
    results: dict = {"modes": {}, "config": vars(args), "torch": torch.__version__,
                     "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {}
        for mode in MODES:
            trainers[mode] = Trainer(mode, template, Path(tmp), args.backend)
            compile_s = trainers[mode].steps(batches, args.warmup)[0]
            results["modes"][mode] = {"compile_s": compile_s, "ms": [], "ratio": [], "cpu_ratio": []}
        for r in range(args.rounds):
            order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
            took = {mode: trainers[mode].steps(batches, args.steps) for mode in order}
            for mode in MODES:
                results["modes"][mode]["ms"].append(1000 * took[mode][0] / args.steps)
                results["modes"][mode]["ratio"].append(took[mode][0] / took["compiled"][0])
                results["modes"][mode]["cpu_ratio"].append(took[mode][1] / took["compiled"][1])
        for mode, trainer in trainers.items():
            if trainer.run is not None:
                results["modes"][mode]["captured_steps"] = trainer.run.schedule.describe()
                trainer.run.close()
    results["graphs_compiled"] = counters["stats"]["unique_graphs"]
    results["graph_breaks"] = sum(counters["graph_break"].values())
    return results


def print_table(results: dict) -> None:
    cfg = results["config"]
    print(f"torch {results['torch']}, {results['threads']} threads, backend {cfg['backend']}, "
          f"batch {cfg['batch']}, {cfg['rounds']} rounds x {cfg['steps']} steps")
    print(f"{'mode':<18}{'ms/step':>10}{'ratio':>9}{'quartiles':>16}{'range':>16}{'cpu ratio':>11}{'compile_s':>11}")
    for mode, m in results["modes"].items():
        lo, hi = min(m["ratio"]), max(m["ratio"])
        q1, _, q3 = statistics.quantiles(m["ratio"], n=4)
        print(f"{mode:<18}{statistics.median(m['ms']):>10.2f}{statistics.median(m['ratio']):>9.3f}"
              f"{f'{q1:.3f}-{q3:.3f}':>16}{f'{lo:.3f}-{hi:.3f}':>16}{statistics.median(m['cpu_ratio']):>11.3f}"
              f"{m['compile_s']:>11.1f}")
    print(f"graphs compiled: {results['graphs_compiled']}, graph breaks: {results['graph_breaks']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (inductor, eager, ...)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per mode (the compiles)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode and round")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    results = measure(args)
    print_table(results)
    if args.json is not None:
        results["config"]["json"] = str(args.json)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
