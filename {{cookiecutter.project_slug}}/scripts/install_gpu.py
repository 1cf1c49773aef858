"""Install the GPU stack on a local NVIDIA machine, exactly as the Modal image does.

    python scripts/install_gpu.py            # run the steps of gpu_stack.toml, in order
    python scripts/install_gpu.py --dry-run  # only print them

The commands come from gpu_stack.toml through `stack_commands`, the function modal_app.py
builds its image with, so a local GPU machine and Modal cannot drift apart. `python` in each
command is the interpreter running this script: activate the project's virtual environment
first.

The two kernel packages, causal-conv1d and mamba-ssm, are installed from upstream's prebuilt
wheel for this torch, CUDA, C++ ABI, Python and platform when one exists. When none does, the
step prints a banner saying so and builds the package from source, which needs nvcc (the CUDA
12.x toolkit on PATH, or CUDA_HOME set) and takes 15 to 35 minutes.
"""

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

STACK_FILE = Path(__file__).resolve().parents[1] / "gpu_stack.toml"


def wheel_name(
    package: str, version: str, torch: str, cuda: str, cxx11_abi: bool, python: str, plat: str
) -> str:
    """The file name of upstream's prebuilt wheel, as the package's own setup.py computes it.

    causal-conv1d 1.7.0 and mamba-ssm 2.3.2.post1 name a release asset after torch's
    major.minor, the CUDA major of torch's build (each major has one build upstream: 11.8,
    12.3, 13.0, minor versions being compatible), torch's C++11 ABI flag, the Python tag
    twice and the platform:
    mamba_ssm-2.3.2.post1+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl.
    """
    cuda_major = cuda.split(".")[0]
    if cuda_major not in ("11", "12", "13"):
        raise ValueError(f"CUDA {cuda}: upstream publishes kernel wheels for CUDA 11, 12, 13 only")
    torch_minor = ".".join(torch.split("+")[0].split(".")[:2])
    abi = str(cxx11_abi).upper()
    local = f"cu{cuda_major}torch{torch_minor}cxx11abi{abi}"
    return f"{package.replace('-', '_')}-{version}+{local}-{python}-{python}-{plat}.whl"


def local_platform() -> tuple[str, str]:
    """(Python tag, platform) of this interpreter, as the kernels' setup.py reads them."""
    machine = platform.machine().lower()
    plat = "linux_aarch64" if machine in ("aarch64", "arm64") else f"linux_{machine}"
    return f"cp{sys.version_info.major}{sys.version_info.minor}", plat


def pins_of(command: str) -> dict[str, str]:
    """{package: version} of every `name==version` argument of a command."""
    return dict(arg.split("==", 1) for arg in shlex.split(command) if "==" in arg)


def with_python(command: str, python: str) -> str:
    """`command` with its leading `python` replaced by the interpreter `python`."""
    return f"{python}{command[len('python') :]}" if command.startswith("python ") else command


def kernel_command(step: dict, torch: dict, python: str, python_tag: str, plat: str) -> str:
    """Install a kernel package from its prebuilt wheel; if that fails, say why and build it.

    The wheel is chosen for the torch that gpu_stack.toml's [torch] table describes; a check
    of the installed torch comes first, so a torch that differs (another CUDA major, the other
    ABI) builds from source instead of installing a wheel that would not load.
    """
    pins = pins_of(step["run"])
    torch_version = pins.pop("torch")
    ((package, version),) = pins.items()
    name = wheel_name(
        package, version, torch_version, torch["cuda"], torch["cxx11_abi"], python_tag, plat
    )
    url = step["wheels"].format(version=version, wheel=name)
    cuda_major, abi = torch["cuda"].split(".")[0], torch["cxx11_abi"]
    check = (
        'import torch; found = (torch.__version__.split("+")[0], torch.version.cuda.split(".")[0], '
        f'torch._C._GLIBCXX_USE_CXX11_ABI); assert found == ("{torch_version}", "{cuda_major}", '
        f'{abi}), "torch (version, CUDA major, C++11 ABI) is %s; {name} needs torch '
        f'{torch_version}, CUDA {cuda_major}, C++11 ABI {abi}" % (found,)'
    )
    minutes = "15 to 35 minutes with nvcc, 9 GPU architectures"
    banner = (
        f"!!! {package} {version}: no usable prebuilt wheel {name} (the error above says why). "
        f"BUILDING FROM SOURCE: {minutes}. !!!"
    )
    fallback = with_python(step["run"], python)
    return (
        f"{python} -c {shlex.quote(check)} && "
        f"{python} -m pip install torch=={torch_version} {shlex.quote(url)} || "
        + "{ echo "  # a shell group: the banner, then the build
        + f"{shlex.quote(banner)}; {fallback}; "
        + "}"
    )


def stack_commands(
    stack: dict, python: str = "python", python_tag: str | None = None, plat: str | None = None
) -> list[tuple[str, str]]:
    """(name, shell command) for each step of gpu_stack.toml, in order.

    `python` is the interpreter the commands run; `python_tag` (cp312) and `plat`
    (linux_x86_64) pick the kernel wheels, by default this interpreter's own.
    """
    own_tag, own_plat = local_platform()
    python_tag, plat = python_tag or own_tag, plat or own_plat
    commands = []
    for step in stack["steps"]:
        if "wheels" in step:
            command = kernel_command(step, stack["torch"], python, python_tag, plat)
        else:
            command = with_python(step["run"], python)
        commands.append((step["name"], command))
    return commands


def load_steps(path: Path = STACK_FILE) -> list[tuple[str, str]]:
    """(name, shell command) for each step, with `python` bound to this interpreter."""
    stack = tomllib.loads(path.read_text(encoding="utf-8"))
    return stack_commands(stack, python=shlex.quote(sys.executable))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)

    stack = tomllib.loads(STACK_FILE.read_text(encoding="utf-8"))
    wanted = stack["image"]["python"]
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if running != wanted:
        print(f"note: gpu_stack.toml pins Python {wanted}; this is Python {running}.")

    if shutil.which("nvcc") is None and "CUDA_HOME" not in os.environ:
        print(
            "note: nvcc was not found and CUDA_HOME is not set. The prebuilt kernel wheels do "
            "not need it; building causal-conv1d or mamba-ssm from source (when no wheel "
            "matches) does: install the CUDA 12.x toolkit or set CUDA_HOME if a step says so."
        )

    for name, command in load_steps():
        print(f"==> {name}: {command}", flush=True)
        if not args.dry_run:
            subprocess.run(command, shell=True, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
