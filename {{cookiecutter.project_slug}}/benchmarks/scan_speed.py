"""CPU time of the chunked scans against the token-by-token oracles.

    python benchmarks/scan_speed.py [--lengths 256 1024 4096] [--batch 2]

Times forward and forward+backward for Mamba1's selective scan and Mamba2's SSD at the shapes
of the demo model (d_inner 128, d_state 16; 8 heads of 16), prints a table and writes
benchmarks/results/scan_speed.json. Goal: the chunked scan >= 5x faster at L=1024.
"""

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }}.scan import (
    selective_scan,
    selective_scan_sequential,
    ssd_scan,
    ssd_scan_sequential,
)

RESULTS = Path(__file__).resolve().parent / "results"


def selective_inputs(batch, length, dim=128, nstate=16):
    return [
        torch.randn(batch, length, dim),
        F.softplus(torch.randn(batch, length, dim) - 3),
        -torch.arange(1, nstate + 1.0).repeat(dim, 1),
        torch.randn(batch, length, nstate),
        torch.randn(batch, length, nstate),
    ]


def ssd_inputs(batch, length, nheads=8, headdim=16, nstate=16):
    return [
        torch.randn(batch, length, nheads, headdim),
        F.softplus(torch.randn(batch, length, nheads) - 3),
        -torch.rand(nheads) * 8 - 1,
        torch.randn(batch, length, 1, nstate),
        torch.randn(batch, length, 1, nstate),
    ]


def seconds(fn, inputs, backward: bool, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        leaves = [t.clone().requires_grad_(backward) for t in inputs]
        start = time.perf_counter()
        out = fn(*leaves)
        if backward:
            out.sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    cases = {
        "selective (Mamba1)": (selective_scan, selective_scan_sequential, selective_inputs),
        "ssd (Mamba2)": (lambda *a: ssd_scan(*a, chunk_size=64), ssd_scan_sequential, ssd_inputs),
    }
    rows = []
    header = ("scan", "L", "pass", "chunked ms", "oracle ms", "speed-up")
    print(f"{header[0]:20s} " + " ".join(f"{h:>10s}" for h in header[1:]))
    for name, (chunked, oracle, make) in cases.items():
        for length in args.lengths:
            inputs = make(args.batch, length)
            for backward in (False, True):
                fast, slow = seconds(chunked, inputs, backward), seconds(oracle, inputs, backward)
                row = {
                    "scan": name,
                    "length": length,
                    "batch": args.batch,
                    "pass": "fwd+bwd" if backward else "fwd",
                    "chunked_ms": fast * 1e3,
                    "oracle_ms": slow * 1e3,
                    "speedup": slow / fast,
                }
                rows.append(row)
                print(
                    f"{name:20s} {length:6d} {row['pass']:>9s} {row['chunked_ms']:11.1f} "
                    f"{row['oracle_ms']:10.1f} {row['speedup']:8.1f}x"
                )
    RESULTS.mkdir(exist_ok=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    (RESULTS / "scan_speed.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
