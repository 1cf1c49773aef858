"""What the sections share beyond the bake's benchmarks/throughput.py (the benchmark model's
size, its Trainer, the raw loops, `table` and `guarded`): the package's name, the template's
results folder, relative error.
"""

from pathlib import Path

import torch

PACKAGE = "mamba_project"
RESULTS = Path(__file__).resolve().parents[2] / "results"  # the template's results/


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()
