"""Time-to-accuracy of the CPU demo: run configs/default.yaml and read its validation curve.

    python benchmarks/demo_time.py [--target 0.95] [extra CLI overrides ...]

Runs `python -m {{ cookiecutter.package_name }} fit --config configs/default.yaml` in a fresh run
directory, then reads val/acc from its TensorBoard events, prints the curve and the first time
the target accuracy was reached, and writes benchmarks/results/demo_time.json.

The run directory is temporary: it is removed however the script ends. Ctrl-C or SIGTERM stops
the run at once (there is nothing to resume: a timing must start from step 0).
"""

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"


def run(command: list[str]) -> None:
    """Run `fit` to its end. On Ctrl-C or SIGTERM, kill it and exit 128 + the signal: the exit
    unwinds through the temporary directory, which is removed with the run's checkpoints."""
    # Its own process group, so that a Ctrl-C in the terminal reaches this script only; fit
    # would save a checkpoint to resume from, which the temporary directory cannot keep.
    fit = subprocess.Popen(command, cwd=PROJECT, start_new_session=True)
    stopped_by = []

    def stop(signum, frame):
        stopped_by.append(signal.Signals(signum))
        os.killpg(fit.pid, signal.SIGKILL)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    code = fit.wait()
    if stopped_by:
        print(f"demo_time: stopped by {stopped_by[0].name}; nothing kept", file=sys.stderr)
        raise SystemExit(128 + stopped_by[0])
    if code != 0:
        raise SystemExit(f"demo_time: fit exited with code {code}; see its output above")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--target", type=float, default=0.95)
    args, overrides = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as root:
        command = [
            sys.executable,
            "-m",
            "{{ cookiecutter.package_name }}",
            "fit",
            "--config",
            args.config,
            "--run.id=demo-time",
            f"--run.root={root}",
            "--trainer.enable_progress_bar=false",
            *overrides,
        ]
        start = time.time()
        run(command)
        total = time.time() - start
        events = EventAccumulator(str(Path(root) / "demo-time"))
        events.Reload()
        curve = [(e.wall_time - start, e.step, e.value) for e in events.Scalars("val/acc")]
    print(f"{'seconds':>8s} {'step':>6s} {'val acc':>8s}")
    for seconds, step, acc in curve:
        print(f"{seconds:8.0f} {step:6d} {acc:8.3f}")
    reached = next(((s, step) for s, step, acc in curve if acc >= args.target), None)
    if reached:
        print(f"reached {args.target:.2f} at {reached[0]:.0f} s (step {reached[1]})")
    else:
        print(f"did not reach {args.target:.2f}; best {max(a for *_, a in curve):.3f}")
    RESULTS.mkdir(exist_ok=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "config": args.config,
        "overrides": overrides,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "total_seconds": total,
        "target": args.target,
        "reached_seconds": reached[0] if reached else None,
        "curve": [{"seconds": s, "step": st, "val_acc": a} for s, st, a in curve],
    }
    (RESULTS / "demo_time.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
