"""Install the GPU stack on a local NVIDIA machine, exactly as the Modal image does.

    python scripts/install_gpu.py            # run the steps of gpu_stack.toml, in order
    python scripts/install_gpu.py --dry-run  # only print them

The commands come from gpu_stack.toml, the file modal_app.py builds its image from, so a
local GPU machine and Modal cannot drift apart. `python` in each command is the interpreter
running this script: activate the project's virtual environment first.

Needs nvcc on PATH (or CUDA_HOME set): the setup scripts of causal-conv1d and mamba-ssm call
it even when they only download a prebuilt wheel.
"""

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

STACK_FILE = Path(__file__).resolve().parents[1] / "gpu_stack.toml"


def load_steps(path: Path = STACK_FILE) -> list[tuple[str, list[str]]]:
    """(name, argv) for each step, in order, with `python` bound to this interpreter."""
    stack = tomllib.loads(path.read_text(encoding="utf-8"))
    steps = []
    for step in stack["steps"]:
        argv = shlex.split(step["run"])
        if argv[0] == "python":
            argv[0] = sys.executable
        steps.append((step["name"], argv))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    stack = tomllib.loads(STACK_FILE.read_text(encoding="utf-8"))
    wanted = stack["image"]["python"]
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != wanted:
        print(f"note: gpu_stack.toml pins Python {wanted}; this is Python {running}.")

    if not args.dry_run and shutil.which("nvcc") is None and "CUDA_HOME" not in os.environ:
        print(
            "nvcc was not found and CUDA_HOME is not set. causal-conv1d and mamba-ssm need nvcc "
            "at install time. Install the CUDA 12.x toolkit (or set CUDA_HOME to it) and retry.",
            file=sys.stderr,
        )
        return 1

    for name, command in load_steps():
        print(f"==> {name}: {shlex.join(command)}", flush=True)
        if not args.dry_run:
            subprocess.run(command, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
