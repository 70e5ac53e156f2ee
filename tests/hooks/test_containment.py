"""Fault injection (issue #22): the tool is a guest in someone else's training.

Each part the tool runs inside the training process is made to raise in turn (every hook
body, the summariser, the hand-over, each writer method called from the training thread,
the recording half of evaluate, close), and each time: the loop finishes, the parameters
are bitwise equal to unwatched training, one warning says what is no longer recorded, and
the run opens and lists the fault. Then the disk fills up and the folder turns read-only
for real (a tiny tmpfs, as root; else a file-size limit in a child process), and a run_dir
that cannot be made leaves training unrecorded with one warning.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch
from torch import nn

import diagnostics
import hooks
from diagnostics.writer import RunWriter
from hooks import capture as capture_module
from hooks.capture import Capture
from hooks.gradnorm import GradSquares
from hooks.handover import Handover
from hooks.layerhooks import LayerHooks

STEPS = 10
FAULT_AFTER = 3  # calls that succeed before the injected fault: the run has something recorded


def _model() -> nn.Module:
    torch.manual_seed(0)
    # an in-place ReLU and dropout: the hooks' trickiest guests; six parameters, so that two are
    # read at backward's end beside the four clipping probes (hooks/gradnorm.py)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(watch=None, steps: int = STEPS, evaluate_at: int | None = 5):
    """(parameters after training, the run or None). With dropout, momentum and an
    evaluation in the middle: anything the tool drew from torch's RNG or changed would show."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    run = watch(model, opt, crit) if watch else None
    for step in range(steps):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        probe = model(x).detach()  # watched or not: dropout draws from the RNG either way
        if run is not None:
            run.log_batch(probe, y, ids=list(range(16)), split="probe")
            run.log_scalar("train/seen", float(step))
            if step == evaluate_at:
                metrics = run.evaluate([(x, y)], attribute_worst=2, n_steps=4, progress=False)
                assert isinstance(metrics["accuracy"], float)  # NaN when the evaluation failed, never a KeyError
    if run is not None:
        run.close()
    return [p.detach().clone() for p in model.parameters()], run


def _watch(tmp_path, name="f", **kwargs):
    return lambda m, o, c: hooks.watch(m, optimizer=o, loss_fn=c, run_dir=tmp_path, name=name, every=1,
                                       flush_every_s=60, **kwargs)


@pytest.fixture(scope="module")
def reference():
    params, _ = _train()
    return params


def _failing(real, after: int = FAULT_AFTER):
    calls = {"n": 0}

    def fail(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)

    return fail


def _recorded_faults(path) -> list[dict]:
    run = diagnostics.open_run(path)
    return list(run.manifest.get("faults", [])) + run.status()["faults"]


# (where, attribute, the part whose fault is recorded; None: whichever part called it)
INJECTIONS = [  # (where, attribute, the part whose fault is recorded or None: whichever called it, good calls first)
    (Capture, "on_forward", "activations", FAULT_AFTER),
    (Capture, "on_grad", "activations", FAULT_AFTER),
    (Capture, "on_loss", "loss", FAULT_AFTER),
    (Capture, "before_update", "optimizer", FAULT_AFTER),
    (Capture, "on_step_post", "optimizer", FAULT_AFTER),
    (Capture, "end_step", "optimizer", FAULT_AFTER),
    (Capture, "on_grad_accumulated", "grad_norm", FAULT_AFTER),
    (GradSquares, "read_batched", "grad_norm", FAULT_AFTER),  # runs inside the user's backward()
    (LayerHooks, "set", "optimizer", FAULT_AFTER),  # the layers' hooks put on / taken off at a step's end
    (Capture, "on_probe_grad", "probe", FAULT_AFTER),
    (Capture, "record_outputs", None, FAULT_AFTER),
    (capture_module, "output_summaries", None, FAULT_AFTER),
    (capture_module, "summarize_batch", "optimizer", FAULT_AFTER),
    (capture_module, "write_summaries", "optimizer", FAULT_AFTER),
    (Handover, "flush", "optimizer", FAULT_AFTER),
    (RunWriter, "add_summaries", "optimizer", FAULT_AFTER),
    (RunWriter, "add_scalar", None, FAULT_AFTER),
    (RunWriter, "add_scalars", None, FAULT_AFTER),
    (RunWriter, "add_records", None, 0),
    (RunWriter, "add_samples", "evaluate", 0),
    (RunWriter, "add_attributions", "evaluate", 0),
    (RunWriter, "update_manifest", None, 1),
    (Capture, "finish", "close", 0),
]


@pytest.mark.parametrize("where,attribute,part,after", INJECTIONS,
                         ids=[f"{w.__name__.split('.')[-1]}.{a}" for w, a, *_ in INJECTIONS])
def test_a_fault_anywhere_never_reaches_the_loop(tmp_path, monkeypatch, reference, where, attribute, part, after):
    monkeypatch.setattr(where, attribute, _failing(getattr(where, attribute), after))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, run = _train(_watch(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(params, reference))  # training unchanged, to the bit
    ours = [str(w.message) for w in caught if "hookscope" in str(w.message)]
    assert len(ours) == 1, ours
    assert "injected fault" in ours[0] and "training goes on" in ours[0]
    monkeypatch.undo()
    faults = _recorded_faults(run.path)  # the run opens and says what it lacks
    assert faults and all("injected fault" in f["error"] for f in faults)
    if part is not None:
        assert {f["part"] for f in faults} == {part}
    assert diagnostics.open_run(run.path).status()["state"] == "finished"


def test_a_failed_part_stays_off_and_the_rest_records(tmp_path, monkeypatch):
    monkeypatch.setattr(Capture, "on_forward", _failing(Capture.on_forward, after=0))
    with pytest.warns(RuntimeWarning, match="activations and their gradients"):
        _, run = _train(_watch(tmp_path))
    r = diagnostics.open_run(run.path)
    assert "activation" not in r.kinds() and "weight" in r.kinds()  # the other parts went on
    assert len(r.scalars(names=["loss"])) == STEPS
    assert r.status()["faults"][0]["part"] == "activations"


def test_strict_raises_the_tools_own_error(tmp_path, monkeypatch):
    monkeypatch.setattr(Capture, "on_loss", _failing(Capture.on_loss, after=0))
    with pytest.raises(RuntimeError, match="injected fault"):
        _train(_watch(tmp_path, strict=True))


def test_a_failing_closure_step_is_contained(tmp_path, monkeypatch):
    """LBFGS: the tool's work runs inside the optimizer's call of the closure."""
    def lbfgs(watch):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=3)
        crit = nn.CrossEntropyLoss()
        x, y = torch.randn(16, 6, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 3
        run = watch(model, opt, crit) if watch else None

        def closure():
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            return loss

        for _ in range(4):
            opt.step(closure)
        if run:
            run.close()
        return [p.detach().clone() for p in model.parameters()]

    expected = lbfgs(None)
    monkeypatch.setattr(Capture, "before_update", _failing(Capture.before_update, after=1))
    with pytest.warns(RuntimeWarning, match="injected fault"):
        got = lbfgs(_watch(tmp_path, name="lbfgs"))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_an_unusable_run_dir_trains_unrecorded_with_one_warning(tmp_path, reference):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the runs folder should be")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, run = _train(lambda m, o, c: hooks.watch(m, optimizer=o, loss_fn=c, run_dir=blocker))
    assert all(torch.equal(a, b) for a, b in zip(params, reference))
    ours = [str(w.message) for w in caught if "hookscope" in str(w.message)]
    assert len(ours) == 1 and "training goes on unrecorded" in ours[0] and "not-a-folder" in ours[0]
    assert run.path is None and not run.recording
    assert blocker.read_text().startswith("a file")  # nothing of the user's touched
    with pytest.raises((FileExistsError, NotADirectoryError)):
        hooks.watch(_model(), run_dir=blocker, strict=True)


def test_two_runs_started_at_once_with_one_name_get_two_folders(tmp_path):
    import threading

    from hooks.runinfo import make_run_dir

    barrier, paths = threading.Barrier(8), []

    def start():
        barrier.wait()
        paths.append(make_run_dir(tmp_path, "same"))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(paths)) == 8
    assert sorted(p.name for p in paths) == sorted(["same"] + [f"same-{n}" for n in range(2, 9)])


# -- the disk, for real -----------------------------------------------------------------

def _disk_train(run_dir, on_step=None, steps: int = 60):
    """A model big enough to fill a small disk quickly; `on_step(step)` breaks it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g)
    run = hooks.watch(model, optimizer=opt, loss_fn=crit, run_dir=run_dir, name="disk", every=1,
                      flush_every_s=0.05) if run_dir is not None else None
    for step in range(steps):
        if on_step:
            on_step(step)
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
        if run is not None and step == steps // 2:
            run.evaluate([(x, y)], attribute_worst=0, progress=False)
    if run is not None:
        run.close()
    return [p.detach().clone() for p in model.parameters()], run


def _can_mount() -> bool:
    return os.geteuid() == 0 and sys.platform.startswith("linux")


@pytest.fixture
def tiny_tmpfs(tmp_path, request):
    mount = tmp_path / "tiny"
    mount.mkdir()
    size = "192k" if request.node.callspec.params["fault"] == "disk full" else "16m"  # read-only: room till then
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount(), reason="a real full disk needs root (mount); see the file-size-limit test")
@pytest.mark.parametrize("fault", ["disk full", "read-only"])
def test_a_real_full_or_read_only_disk_never_reaches_the_loop(tiny_tmpfs, fault):
    expected, _ = _disk_train(None)

    def break_disk(step):
        if fault == "read-only" and step == 20:
            # a remount waits for no writer: while the writer thread has a part open it says
            # "busy" (EBUSY), so try again between the writer's flushes
            for _ in range(500):
                if subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], capture_output=True).returncode == 0:
                    return
                time.sleep(0.01)
            pytest.fail("the tmpfs could not be remounted read-only in 5 s")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        params, run = _disk_train(tiny_tmpfs, break_disk)
    assert all(torch.equal(a, b) for a, b in zip(params, expected))
    ours = [str(w.message) for w in caught if "hookscope" in str(w.message)]
    assert len(ours) == 1, ours
    assert ("No space left" in ours[0]) if fault == "disk full" else ("Read-only" in ours[0]), ours
    # what was written before the fault reads back (a disk that takes no writes cannot take
    # the fault's record either: the warning is the one place that says it)
    r = diagnostics.open_run(run.path)
    assert len(r.scalars(names=["loss"])) > 0


@pytest.mark.slow
def test_a_file_size_limit_never_reaches_the_loop(tmp_path):
    """RLIMIT_FSIZE (works without root): writes past the limit fail with EFBIG."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, warnings
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        import torch
        from test_containment import _disk_train
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing
        def limit(step):
            if step == 10:
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            watched, _ = _disk_train({str(tmp_path)!r}, limit)
        plain, _ = _disk_train(None)
        ours = [str(w.message) for w in caught if "hookscope" in str(w.message)]
        print("SAME", all(torch.equal(a, b) for a, b in zip(watched, plain)))
        print("WARNINGS", len(ours), ours)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SAME True" in done.stdout
    assert "WARNINGS 1 " in done.stdout and "File too large" in done.stdout, done.stdout


def test_warnings_as_errors_do_not_turn_a_fault_into_the_loops_exception(tmp_path, monkeypatch, reference, capfd):
    """pytest's filterwarnings=error, python -W error: the warning would be raised in the loop."""
    monkeypatch.setattr(Capture, "on_forward", _failing(Capture.on_forward))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        params, run = _train(_watch(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(params, reference))
    assert "hookscope: activations failed" in capfd.readouterr().err  # said on stderr instead
    assert _recorded_faults(run.path)[0]["part"] == "activations"


def test_a_fault_inside_a_compiled_graph_never_reaches_the_loop(tmp_path, monkeypatch):
    """Under torch.compile the activation's summary runs in a custom op inside the graph, where
    no hook wraps it: the op contains it itself."""
    def compiled_training(watch):
        torch._dynamo.reset()
        model = _model()
        compiled = torch.compile(model, backend="eager")
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        crit = nn.CrossEntropyLoss()
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
        run = watch(model, opt, crit) if watch else None
        for _ in range(6):
            opt.zero_grad()
            crit(compiled(x), y).backward()
            opt.step()
        if run:
            run.close()
        return [p.detach().clone() for p in model.parameters()], run

    expected, _ = compiled_training(None)
    monkeypatch.setattr(capture_module, "record_activation", _failing(capture_module.record_activation, after=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, run = compiled_training(_watch(tmp_path, name="compiled"))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert len([w for w in caught if "hookscope: activations failed" in str(w.message)]) == 1
    assert _recorded_faults(run.path)[0]["part"] == "activations"
