"""The real command on the GPU: `python -m <package> fit` in a subprocess, timed from its logs.

cli:   configs/text.yaml at the benchmark size (24 x 768, B=8, L=2048, byte vocabulary 256,
       bf16, clipping 1.0) on a random text file, against a raw mamba-ssm loop of the same
       shape and vocabulary in the same process tree: ms per step from the TensorBoard wall
       times of the logged steps 40 to 160.
small: configs/default.yaml as shipped (the laptop demo), training steps per second, with and
       without CUDA graphs.
"""

import json
import random
import string
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from throughput import MIXER_STATE, SIZE, guarded, mamba_ssm_lm, mixer_and_layout, raw_loop, table

from . import PROJECT
from .common import PACKAGE


def scalars(log_dir: Path, *tags: str) -> dict[str, list[tuple[int, float, float]]]:
    """(step, wall time, value) of every event of each tag, from one read of the run's folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every point
    events.Reload()
    return {tag: [(e.step, e.wall_time, e.value) for e in events.Scalars(tag)] for tag in tags}


def seconds_per_step(points, first: int, last: int) -> float:
    inside = [(s, t) for s, t, _ in points if first <= s <= last]
    (s0, t0), (s1, t1) = inside[0], inside[-1]
    return (t1 - t0) / (s1 - s0)


def run_fit(args: list[str], root: Path) -> Path:
    """`python -m <package> fit ...` in a fresh process; returns its TensorBoard folder."""
    command = [sys.executable, "-m", PACKAGE, "fit", *args, f"--run.root={root}", "--run.id=bench"]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fit exited {done.returncode}: {done.stderr[-1500:]}")
    return root / "bench"


def cli_fit(mixer: str, steps: int = 170, cuda_graphs: str = "auto") -> dict:
    batch, length = SIZE["batch"], SIZE["length"]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        rng = random.Random(0)
        alphabet = string.ascii_letters + string.digits + " .,\n"
        corpus.write_text("".join(rng.choices(alphabet, k=batch * (length + 1) * (steps + 20))))
        mixer, layout = mixer_and_layout(mixer)
        state = MIXER_STATE[mixer]
        args = [
            "--config=configs/text.yaml",
            f"--data.path={corpus}",
            f"--data.seq_len={length}",
            f"--data.batch_size={batch}",
            f"--model.net.backbone.mixer={mixer}",
            f"--model.net.backbone.d_model={SIZE['d_model']}",
            f"--model.net.backbone.n_layer={SIZE['n_layer']}",
            f"--model.net.backbone.d_state={state['d_state']}",
            f"--model.net.backbone.headdim={state.get('headdim', 64)}",
            f"--model.cuda_graphs={cuda_graphs}",
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0",
            "--trainer.log_every_n_steps=10",
            "--trainer.enable_progress_bar=false",
        ]
        args += [f"--model.net.backbone.{k}={json.dumps(v)}" for k, v in layout.items()]
        points = scalars(run_fit(args, Path(tmp) / "runs"), "train/loss")["train/loss"]
    ms = seconds_per_step(points, 40, 160) * 1e3
    return {"step_ms": ms, "ktok_s": batch * length / ms, "logged_steps": len(points)}


def small_config(steps: int = 900, cuda_graphs: str = "auto") -> dict:
    """configs/default.yaml as shipped: training steps per second from step 200 to steps - 100."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "--config=configs/default.yaml",
            f"--model.cuda_graphs={cuda_graphs}",
            f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0",
        ]
        points = scalars(run_fit(args, Path(tmp) / "runs"), "train/loss")["train/loss"]
    return {"it_s": 1 / seconds_per_step(points, 200, steps - 100)}


def section_small() -> dict:
    small = {"graphs": guarded(small_config), "eager": guarded(small_config, cuda_graphs="off")}
    table([{"run": k, **v} for k, v in small.items()], "configs/default.yaml, steps/s")
    return small


def section_cli(steps: int, mixers=("Mamba1", "Mamba2")) -> dict:
    batch, length = SIZE["batch"], SIZE["length"]
    results = {}
    for mixer in mixers:
        r = {
            "cli": guarded(cli_fit, mixer),
            "raw_vocab256": guarded(
                raw_loop, mamba_ssm_lm(mixer, vocab=256), batch, length, 5, steps, vocab=256
            ),
        }
        torch.cuda.empty_cache()
        if "step_ms" in r["cli"] and "step_ms" in r["raw_vocab256"]:
            r["ratio_cli_over_raw"] = r["raw_vocab256"]["step_ms"] / r["cli"]["step_ms"]
        results[mixer] = r
        rows = [
            {"run": k, "ms/step": v.get("step_ms", float("nan")), "note": v.get("error", "")[:60]}
            for k, v in r.items()
            if isinstance(v, dict)
        ]
        table(rows, f"`fit` as a user runs it, {mixer}: 24 x 768, byte vocab, B=8, L=2048, bf16")
        print({k: v for k, v in r.items() if k.startswith("ratio")})
    return results
