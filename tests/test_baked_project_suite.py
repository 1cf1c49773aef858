"""A baked project installs into a fresh virtual environment and passes its own tests.

Slow (minutes each): every case builds a plain venv (no system site-packages, so a missing
dependency fails here instead of being borrowed from this machine), installs the CPU build of
torch first, as the project's README and CI do, then the project, and runs its tests and the
ruff checks inside the baked project.

The default project of each task installs `.[dev]` and runs its whole suite, as its README
tells users to: a task's project holds that task's code and tests only. The other cases run the
tests of what their answers change: the task and mixer of the configs and of the
LightningModule a command line without a config gets (test_training), the memory of a run of
the default config (test_memory), and the Modal image's Python and GPU (test_launch,
test_modal_app, and test_modal_generate where the task has it); they install what those tests
need (`.[modal]`, pytest, ruff). The rest of the suite gives every option the same tiny models
with explicit arguments, so running it once per task covers them all.
"""

import sys
import time

import pytest
from conftest import CHOICES, bake, failures_first, run

# A baked project installs on Python 3.11+; python_version only picks the Modal image, CI and
# ruff target. These tests run where the machine's Python is one the template offers.
HERE = f"{sys.version_info.major}.{sys.version_info.minor}"
pytestmark = pytest.mark.skipif(
    HERE not in CHOICES["python_version"],
    reason=f"baked projects offer Python {CHOICES['python_version']}, not {HERE}",
)

# The default project, a Mamba3 one, and one other per task, together covering every non-GPU
# option.
CASES = {
    "default": {},
    "language_model-Mamba1-Apache-py311": {
        "mamba_version": "Mamba1",
        "license": "Apache-2.0",
        "python_version": "3.11",
        "modal_gpu": "H100",
    },
    "language_model-Mamba3-H200": {"mamba_version": "Mamba3", "modal_gpu": "H200"},
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
OPTION_TESTS = [
    "tests/test_training.py",
    "tests/test_memory.py",
    "tests/test_launch.py",
    "tests/test_modal_app.py",
    "tests/test_modal_generate.py",
]


@pytest.mark.slow
@pytest.mark.parametrize("answers", CASES.values(), ids=CASES.keys())
def test_baked_project_installs_and_passes_its_own_tests(cookies, template, tmp_path, answers):
    project = bake(cookies, template, **answers)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    started = time.monotonic()
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    run(python, "-m", "pip", "install", "--quiet", TORCH, cwd=project)
    whole = set(answers) <= {"task"}  # a task's default project: everything, as its README says
    project_extra = ".[dev]" if whole else ".[modal]"
    tools = [] if whole else ["pytest>=8", "ruff>=0.6"]
    run(python, "-m", "pip", "install", "--quiet", "-e", project_extra, *tools, cwd=project)
    installed = time.monotonic()
    tests = [] if whole else [test for test in OPTION_TESTS if (project / test).exists()]
    suite = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-ra", "--tb=short", *tests]
    run(python, *suite, cwd=project, timeout=3000)
    run(python, "-m", "ruff", "check", "--no-cache", ".", cwd=project)
    run(python, "-m", "ruff", "format", "--no-cache", "--check", ".", cwd=project)
    tested = time.monotonic()
    print(
        f"\n{project.name} ({answers or 'defaults'}): install {installed - started:.0f} s, "
        f"tests and lint {tested - installed:.0f} s"
    )


# pytest's output for a failed suite, shortened: the end holds one assertion's data.
FAILED_SUITE = """\
..F.
=================================== FAILURES ===================================
____________ test_stopped_run_equals_an_uninterrupted_one[9] ____________
tests/test_resume.py:107: in assert_same_run
    assert got["scalars"][tag] == curve, f"{tag} differs"
E   AssertionError: train/loss differs
E   assert [(0, 2.3092), (1, 2.2983)] == [(0, 2.3092), (1, 2.2983), (2, 2.2871)]
___________________________ ERROR at setup of test_ddp ___________________________
E   TimeoutError: fit did not finish
=========================== short test summary info ============================
FAILED tests/test_resume.py::test_stopped_run_equals_an_uninterrupted_one[9]
ERROR tests/test_ddp.py::test_ddp - TimeoutError: fit did not finish
1 failed, 2 passed, 1 error in 300.00s
"""


def test_a_failed_suite_is_reported_by_its_failed_tests_and_first_assertion_lines():
    padded = FAILED_SUITE + "(199, 2.1882) " * 1000  # what a log of the curve leaves last
    report = failures_first(padded)
    head = report.splitlines()[:5]
    assert head == [
        "FAILED tests/test_resume.py::test_stopped_run_equals_an_uninterrupted_one[9]",
        "ERROR tests/test_ddp.py::test_ddp - TimeoutError: fit did not finish",
        "test_stopped_run_equals_an_uninterrupted_one[9]: AssertionError: train/loss differs",
        "test_stopped_run_equals_an_uninterrupted_one[9]: "
        "assert [(0, 2.3092), (1, 2.2983)] == [(0, 2.3092), (1, 2.2983), (2, 2.2871)]",
        "ERROR at setup of test_ddp: TimeoutError: fit did not finish",
    ]
    assert report.endswith(padded[-6000:])


def test_output_without_failures_is_only_cut_to_its_end():
    output = "Collecting torch\n" + "x" * 7000
    assert failures_first(output) == output[-6000:]
