"""Tokens/s of `fit` on 1 and on N GPUs of one machine (Lightning DDP), and the scaling efficiency.

    python benchmarks/scaling.py --devices 1 2        # or: --devices 1 8
    python benchmarks/scaling.py --mixer Mamba2

The model is the 129M language model of gpu_check.py (benchmarks/gpu/common.py: 24 layers,
d_model 768, vocab 50280), fused kernels, bf16, B=8 per GPU, L=2048: each GPU gets its own
batch (data parallel), so the ideal is N times the one-GPU rate. Efficiency = rate(N) /
(N * rate(1)). Each N runs in its own `python` process, because Lightning's DDP starts one
process per GPU from this script.
Writes benchmarks/results/scaling.json.
"""

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(devices: int, mixer: str, steps: int, warmup: int) -> dict:
    """Body of one measurement; runs in every DDP rank."""
    import torch
    from gpu.common import SIZE, _Timer, fit_setup  # the same model, data and Trainer

    batch, length = SIZE["batch"], SIZE["length"]
    timer = _Timer(warmup)
    model, loader, trainer = fit_setup(
        mixer, "fused", batch, length, warmup + steps, 1.0, timer, devices=devices
    )
    trainer.fit(model, loader)
    tokens = timer.steps * batch * length * devices
    return {
        "devices": devices,
        "ktok_s": tokens / timer.seconds / 1e3,
        "step_ms": timer.seconds / timer.steps * 1e3,
        "peak_gib_per_gpu": torch.cuda.max_memory_allocated() / 2**30,
        "is_global_zero": trainer.is_global_zero,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--mixer", choices=["Mamba1", "Mamba2"], default="Mamba1")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a single measurement
    parser.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = parser.parse_args()

    if args.one is not None:
        result = run_one(args.one, args.mixer, args.steps, args.warmup)
        if result.pop("is_global_zero"):
            print("RESULT " + json.dumps(result), flush=True)
        return

    import torch

    runs = []
    for devices in args.devices:
        command = [sys.executable, __file__, "--one", str(devices), "--mixer", args.mixer]
        command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
        out = subprocess.run(command, capture_output=True, text=True)
        lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            runs.append({"devices": devices, "error": out.stderr[-2000:]})
            continue
        runs.append(json.loads(lines[-1][len("RESULT ") :]))
    base = next((r["ktok_s"] for r in runs if r.get("devices") == 1 and "ktok_s" in r), None)
    print(f"\n{args.mixer}, 24 x 768, B=8 per GPU, L=2048, bf16, DDP")
    print(f"{'GPUs':>5} {'ktok/s':>10} {'ms/step':>9} {'GiB/GPU':>8} {'efficiency':>11}")
    for r in runs:
        if "ktok_s" not in r:
            print(f"{r['devices']:>5} failed: {r['error'][-300:]}")
            continue
        if base:
            r["efficiency"] = r["ktok_s"] / (r["devices"] * base)
        eff = f"{r['efficiency']:.1%}" if "efficiency" in r else "-"
        print(
            f"{r['devices']:>5} {r['ktok_s']:>10.1f} {r['step_ms']:>9.1f} "
            f"{r['peak_gib_per_gpu']:>8.1f} {eff:>11}"
        )
    report = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "gpus_visible": torch.cuda.device_count(),
        "versions": {"torch": torch.__version__},
        "mixer": args.mixer,
        "setup": "24 layers, d_model 768, vocab 50280, B=8 per GPU, L=2048, bf16, fused AdamW",
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
