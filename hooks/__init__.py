"""Training-side hooks: attach to a PyTorch model and record a run for the dashboard.

    import hooks
    run = hooks.watch(model, optimizer=opt, loss_fn=criterion, run_dir="runs")
"""

from hooks.watcher import WatchedRun, watch

__all__ = ["watch", "WatchedRun"]
