"""A long run needs no more memory than a short one.

`fit` with the default config (the tiny reference model, so that it is quick) peaks at the
same resident memory after 200 steps as after 20. Memory that grows with the step count
ends a long run when the machine runs out: it once grew by hundreds of MB per step, freed
memory that the C allocator could not reuse because small tensors kept alive across steps
were placed between the step's large temporary blocks.

Each run is measured as a user starts it, `python -m <package> fit ...` in a process of its
own, by the peak resident set size (`ru_maxrss`) the kernel records for it.
"""

import os
import subprocess
import sys

from conftest import PACKAGE, PROJECT, QUIET, TINY_BACKBONE

SHORT, LONG = 20, 200
MAX_GROWTH = 1.2  # peak of the long run / peak of the short one

# Runs the command given as arguments and prints its peak resident memory in KiB (Linux) or
# bytes (macOS). A fresh process per measurement: RUSAGE_CHILDREN covers only this one run.
PEAK = (
    "import resource, subprocess, sys; "
    "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss(tmp_path, steps: int) -> int:
    fit = [
        *[sys.executable, "-m", PACKAGE, "fit", f"--config={PROJECT / 'configs/default.yaml'}"],
        *TINY_BACKBONE,
        *QUIET,
        f"--trainer.max_steps={steps}",
        "--trainer.limit_val_batches=0",
        f"--run.root={tmp_path}",
        f"--run.id=steps-{steps}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one core each: CI runs tests side by side
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *fit],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return int(done.stdout.split()[-1])


def test_peak_memory_of_a_long_run_is_that_of_a_short_one(tmp_path):
    short, long = peak_rss(tmp_path, SHORT), peak_rss(tmp_path, LONG)
    assert long <= MAX_GROWTH * short, (
        f"peak resident memory grew with the steps: {short} at {SHORT} steps, "
        f"{long} at {LONG} ({long / short:.2f}x, at most {MAX_GROWTH}x)"
    )
