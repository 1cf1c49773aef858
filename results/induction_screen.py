"""Screen induction-heads recipes: many short fits side by side on one GPU, each to val/loss
below 1.0 (it has left chance, ln 15 = 2.708) or to --max-steps, with their validation curves.

Each fit is the bake's `fit --config configs/induction_heads_paper.yaml` with one recipe's
options added, validated every 512 steps at the training length. Run it from a baked
language-model project's root, with its src/ on PYTHONPATH:

    python <template>/results/induction_screen.py --out screen.json --seconds 540 \
        --recipe "paper_adam|--model.lr=1e-3 --model.betas=[0.9,0.999] \
--trainer.gradient_clip_val=null|4,5,8,9,12"

Fits still running after --seconds are stopped (SIGTERM, so their logs are flushed); the JSON
holds, per fit, its val/loss curve and the first step it fell below 2.65.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", required=True)
parser.add_argument("--seconds", type=float, default=540)
parser.add_argument("--max-steps", type=int, default=8192)
parser.add_argument("--recipe", action="append", required=True, help="name|options|seeds")
parser.add_argument("--package", default="mamba_project")
parser.add_argument("--root", default="/tmp/induction_screen", help="the fits' run folders")
args = parser.parse_args()

fits = []
env = dict(os.environ, OMP_NUM_THREADS="1")  # one CPU thread per fit: many fit side by side
start = time.time()
for spec in args.recipe:
    name, options, seeds = spec.split("|")
    for seed in (int(s) for s in seeds.split(",")):
        run_id = f"{name}-s{seed}"
        command = [
            *(sys.executable, "-m", args.package, "fit"),
            *("--config", "configs/induction_heads_paper.yaml"),
            f"--seed_everything={seed}",
            f"--trainer.max_steps={args.max_steps}",
            "--trainer.val_check_interval=512",
            "--data.val_lengths=[]",
            "--data.num_val_samples=256",
            "--run.monitor=val/loss",
            "--trainer.enable_progress_bar=false",
            "--trainer.callbacks+=EarlyStopping",
            "--trainer.callbacks.monitor=val/loss",
            "--trainer.callbacks.stopping_threshold=1.0",
            "--trainer.callbacks.patience=1000",
            f"--run.id={run_id}",
            f"--run.root={args.root}",
            *options.split(),
        ]
        log = open(Path(args.root).with_name(f"{Path(args.root).name}-{run_id}.log"), "w")
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        fits.append((name, seed, run_id, process))

while time.time() - start < args.seconds and any(p.poll() is None for *_, p in fits):
    time.sleep(5)
for *_, process in fits:
    if process.poll() is None:
        process.terminate()
deadline = time.time() + 15
for *_, process in fits:
    try:
        process.wait(max(0.1, deadline - time.time()))
    except subprocess.TimeoutExpired:
        process.kill()

results = []
for name, seed, run_id, process in fits:
    curve = []
    for events in Path(args.root, run_id).rglob("events.out.tfevents*"):
        logged = EventAccumulator(str(events.parent))
        logged.Reload()
        if "val/loss" in logged.Tags()["scalars"]:
            curve = [(e.step, round(e.value, 4)) for e in logged.Scalars("val/loss")]
    results.append({
        "recipe": name,
        "seed": seed,
        "returncode": process.returncode,
        "left_chance_at_step": next((step for step, loss in curve if loss < 2.65), None),
        "learned": any(loss < 1.0 for _, loss in curve),
        "val_loss": curve,
    })  # fmt: skip
    print(name, seed, results[-1]["left_chance_at_step"], curve[-1:] or "no validation")
report = {"seconds": round(time.time() - start), "max_steps": args.max_steps, "fits": results}
Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
