"""The parts of harness/gpu_check.py, one measurement per module.

They measure the baked project whose package is on the path (`PYTHONPATH=<bake>/src`, or an
editable install): PROJECT is its folder, where the cli and copying sections start its
`fit`, and its benchmarks/throughput.py, the benchmark model with its Trainer and the raw
mamba-ssm loops, is imported from there as `throughput`.
"""

import sys
from pathlib import Path

import mamba_project

PROJECT = Path(mamba_project.__file__).resolve().parents[2]  # <bake>/src/mamba_project/
if not (PROJECT / "benchmarks" / "throughput.py").is_file():
    sys.exit(
        f"{PROJECT} holds no benchmarks/throughput.py: the harness measures a language-model "
        "bake with the default answers whose src/ is on PYTHONPATH (or installed with -e)."
    )
sys.path.insert(0, str(PROJECT / "benchmarks"))
