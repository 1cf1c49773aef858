"""Which fused fast paths are active, checked before any training starts.

mamba-ssm falls back silently when a kernel is missing (causal-conv1d absent -> nn.Conv1d),
so a GPU run can be several times slower without a word. `check_kernels` makes that visible
and, with policy "require", stops the run instead.

    python -m <package>.kernels            # print the report
    python -m <package>.kernels --require  # exit 1 if any fast path is missing
"""

import argparse
import importlib
import logging
import sys
from typing import Literal

import torch

from ..ops import mamba3_kernel_problem

log = logging.getLogger(__name__)

Policy = Literal["require", "warn", "off"]

FAST_PATHS = {
    "selective_scan": "selective_scan_cuda (mamba-ssm's CUDA selective scan, Mamba1)",
    "causal_conv1d": "causal_conv1d_cuda (causal-conv1d's CUDA depthwise conv)",
    "triton_ssd": "mamba_ssm.ops.triton.ssd_combined (Triton SSD kernels, Mamba2)",
    "mamba3_siso": "mamba_ssm.ops.triton.mamba3 (Triton Mamba-3 SISO kernels, Hopper only)",
}
# what a run of each mixer needs beyond the common paths (the norms, conv and decode kernels)
COMMON = ("selective_scan", "causal_conv1d", "triton_ssd")
NEEDED = {"Mamba1": COMMON, "Mamba2": COMMON, "Mamba3": (*COMMON, "mamba3_siso")}


def _probe(name: str) -> str | None:
    """None when the fast path works, else why not."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        if name == "selective_scan":
            importlib.import_module("selective_scan_cuda")
        elif name == "causal_conv1d":
            importlib.import_module("causal_conv1d_cuda")
            from causal_conv1d import causal_conv1d_fn

            x = torch.randn(1, 8, 16, device="cuda")
            causal_conv1d_fn(x, torch.randn(8, 4, device="cuda"), activation="silu")
        elif name == "triton_ssd":
            from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

            b, length, h, p, n = 1, 64, 2, 16, 16
            mamba_chunk_scan_combined(
                torch.randn(b, length, h, p, device="cuda"),
                torch.rand(b, length, h, device="cuda"),
                -torch.rand(h, device="cuda"),
                torch.randn(b, length, 1, n, device="cuda"),
                torch.randn(b, length, 1, n, device="cuda"),
                chunk_size=64,
            )
        elif name == "mamba3_siso":
            problem = mamba3_kernel_problem()
            if problem is not None:
                return problem
            from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

            b, length, h, p, n = 1, 64, 2, 64, 64
            bf16 = {"device": "cuda", "dtype": torch.bfloat16}
            mamba3_siso_combined(
                torch.randn(b, length, 1, n, **bf16),
                torch.randn(b, length, 1, n, **bf16),
                torch.randn(b, length, h, p, **bf16),
                -torch.rand(b, h, length, device="cuda"),
                torch.rand(b, h, length, device="cuda"),
                torch.rand(b, h, length, **bf16),
                torch.ones(h, n, device="cuda"),
                torch.ones(h, n, device="cuda"),
                torch.rand(b, length, h, n // 4, **bf16),
            )
        torch.cuda.synchronize()
    except Exception as err:  # an import error, a missing symbol or a kernel that fails to run
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def probe_all(mixer: str | None = None) -> dict[str, str | None]:
    """Each fast path the mixer needs (every one if None) -> None when it works, else why not."""
    return {name: _probe(name) for name in (NEEDED[mixer] if mixer else FAST_PATHS)}


def check_kernels(policy: Policy = "require", mixer: str = "Mamba2") -> dict[str, bool]:
    """Report the fast paths a mixer needs. Policy: require (raise if one is missing), warn
    (log and run the plain-PyTorch version where a kernel is missing), off."""
    if policy == "off":
        return {}
    problems = probe_all(mixer)
    for name, problem in problems.items():
        state = "active" if problem is None else f"MISSING ({problem})"
        log.info("fast path %-14s %s", name, state)
    missing = {name: p for name, p in problems.items() if p is not None}
    if missing:
        detail = "; ".join(f"{FAST_PATHS[n]}: {p}" for n, p in missing.items())
        message = (
            f"fused kernels missing: {detail}. Install the pinned GPU stack "
            "(scripts/install_gpu.py, or the Modal image), or set model.kernels=warn to run slower."
        )
        if policy == "require":
            raise RuntimeError(message)
        log.warning(message)
    return {name: problem is None for name, problem in problems.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Report which fused Mamba kernels are active.")
    parser.add_argument("--require", action="store_true", help="exit 1 if any is missing")
    parser.add_argument("--mixer", choices=sorted(NEEDED), help="only what this mixer needs")
    args = parser.parse_args(argv)
    problems = probe_all(args.mixer)
    for name, problem in problems.items():
        print(f"{name:15s} {'active' if problem is None else 'missing: ' + problem}")
    return 1 if args.require and any(problems.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
