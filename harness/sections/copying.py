"""Selective copying at the Mamba paper's setting, as a user runs it: time to 99% at length 4096.

`python -m <package> fit --config configs/copying_paper.yaml` in a subprocess under a time
limit; the curve (validation accuracy and the curriculum's length, with wall times) comes from
the run's own TensorBoard folder and is written to the template's results/copying_gpu.json.
"""

import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from . import PROJECT
from .cli_row import scalars
from .common import PACKAGE, RESULTS

CURVE = RESULTS / "copying_gpu.json"


def copying_curve(log_dir: Path, started: float) -> list[dict]:
    """One point per validation: step, seconds since the command started, length, accuracy."""
    logged = scalars(log_dir, "curriculum/seq_len", "train/loss", "val/acc")
    lengths = {step: value for step, _, value in logged["curriculum/seq_len"]}
    first_step = min(t for _, t, _ in logged["train/loss"])
    curve = []
    for step, wall, acc in logged["val/acc"]:
        length = lengths.get(step, max([v for s, v in lengths.items() if s <= step], default=0))
        curve.append(
            {
                "step": step,
                "seconds_since_start": round(wall - started, 1),
                "seconds_since_first_logged_step": round(wall - first_step, 1),
                "seq_len": int(length),
                "val_acc": round(acc, 4),
            }
        )
    return curve


def section_copying(seconds: float, cuda_graphs: str = "auto") -> dict:
    """Run configs/copying_paper.yaml for `seconds`; the first time it is at 99% at its length."""
    if not (PROJECT / "configs" / "copying_paper.yaml").is_file():
        raise SystemExit("the copying section needs configs/copying_paper.yaml (language models)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        limit = time.strftime("%H:%M:%S", time.gmtime(seconds))
        command = [
            *(sys.executable, "-m", PACKAGE, "fit", "--config=configs/copying_paper.yaml"),
            f"--trainer.max_time=00:{limit}",
            f"--model.cuda_graphs={cuda_graphs}",
            "--trainer.enable_progress_bar=false",
            f"--run.root={root}",
            "--run.id=copying",
        ]
        started = time.time()
        done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"fit exited {done.returncode}: {done.stderr[-1500:]}")
        curve = copying_curve(root / "copying", started)
    final = max(point["seq_len"] for point in curve)
    reached = [p for p in curve if p["seq_len"] == final and p["val_acc"] >= 0.99]
    result = {
        "date": datetime.date.today().isoformat(),
        "device": f"{torch.cuda.get_device_name()} (one GPU)",
        "versions": {"torch": torch.__version__, "lightning": L.__version__},
        "command": f"python -m <package> fit --config configs/copying_paper.yaml "
        f"--trainer.max_time=00:{limit} --model.cuda_graphs={cuda_graphs}",
        "setup": "selective copying, 16 tokens, vocabulary 16 (14 symbols + blank + marker), "
        "2 x Mamba1 d_model 64 d_state 16, batch 64, lr 3e-3, bf16, fused kernels; curriculum "
        "64 -> 256 -> 1024 -> 4096 at 99% val accuracy; 512 val samples per length",
        "note": "seconds_since_start counts from the command's launch (imports, data workers, "
        "kernel warm-up and graph capture included); seq_len is the length that epoch trained "
        "and validated at",
        "seconds_to_99_at_final_length": reached[0]["seconds_since_start"] if reached else None,
        "final_length": final,
        "curve": curve,
    }
    if seconds >= 120:  # a full run replaces the committed curve (paper_tables.py's seeds stay)
        kept = json.loads(CURVE.read_text()) if CURVE.exists() else {}
        CURVE.parent.mkdir(parents=True, exist_ok=True)
        CURVE.write_text(json.dumps({**kept, **result}, indent=1) + "\n")
    for p in curve:
        print(
            f"  {p['seconds_since_start']:7.1f} s  step {p['step']:6d}  "
            f"length {p['seq_len']:5d}  val acc {p['val_acc']:.4f}"
        )
    return {k: v for k, v in result.items() if k != "curve"}
