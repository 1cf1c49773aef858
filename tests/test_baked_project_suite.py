"""A baked project installs into a fresh virtual environment and passes its own tests.

Slow (a few minutes each): every case builds a plain venv (no system site-packages, so a
missing dependency fails here instead of being borrowed from this machine), installs the
CPU build of torch first, as the project's README and CI do, then `pip install -e '.[dev]'`,
and runs `python -m pytest -q` and the ruff checks inside the baked project.
"""

import sys
import time

import pytest
from conftest import CHOICES, bake, run

# A baked project installs on Python 3.11+; python_version only picks the Modal image, CI and
# ruff target. These tests run where the machine's Python is one the template offers.
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
pytestmark = pytest.mark.skipif(
    HERE not in CHOICES["python_version"],
    reason=f"baked projects offer Python {CHOICES['python_version']}, not {HERE}",
)

# The default project and one other per task, together covering every non-GPU option.
CASES = {
    "default": {},
    "language_model-Mamba1-Apache-py311": {
        "mamba_version": "Mamba1",
        "license": "Apache-2.0",
        "python_version": "3.11",
        "modal_gpu": "H100",
    },
    "sequence_classification-Mamba2": {"task": "sequence_classification"},
    "sequence_classification-Mamba1-none-py311": {
        "task": "sequence_classification",
        "mamba_version": "Mamba1",
        "license": "none",
        "python_version": "3.11",
        "project_name": "Sequence Sorter",
    },
}

TORCH = "torch==2.13.0"  # the CPU build that this machine and CI keep on local disk


@pytest.mark.slow
@pytest.mark.parametrize("answers", CASES.values(), ids=CASES.keys())
def test_baked_project_installs_and_passes_its_own_tests(cookies, template, tmp_path, answers):
    project = bake(cookies, template, **answers)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    started = time.monotonic()
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(python, "-m", "pip", "install", "--quiet", TORCH, cwd=project)
    run(python, "-m", "pip", "install", "--quiet", "-e", ".[dev]", cwd=project)
    installed = time.monotonic()
    run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project, timeout=900)
    run(python, "-m", "ruff", "check", "--no-cache", ".", cwd=project)
    run(python, "-m", "ruff", "format", "--no-cache", "--check", ".", cwd=project)
    tested = time.monotonic()
    print(
        f"\n{project.name} ({answers or 'defaults'}): install {installed - started:.0f} s, "
        f"tests and lint {tested - installed:.0f} s"
    )
