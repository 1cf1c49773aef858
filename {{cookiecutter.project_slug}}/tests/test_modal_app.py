"""modal_app.py, proven offline: no Modal account, no network, no GPU.

The image is rendered with Modal's own Dockerfile writers for each builder version; the
function spec is read from the Function object; the entrypoint runs with Modal's Function and
FunctionCall stubbed; training runs locally with temporary folders standing in for the
Volumes. Skipped as a whole where Modal is not installed (a GPU-only environment).
"""

import importlib.util
import inspect
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import PACKAGE, PROJECT, QUIET, TASK_MODEL, TINY_BACKBONE

modal = pytest.importorskip("modal", reason="modal_app.py needs Modal: pip install modal")
synchronizer = pytest.importorskip("modal._utils.async_utils").synchronizer

if str(PROJECT) not in sys.path:  # modal_app.py sits at the project root, next to src/
    sys.path.insert(0, str(PROJECT))
modal_app = importlib.import_module("modal_app")

SLUG = "{{ cookiecutter.project_slug }}"
BAKED_GPU = "{{ cookiecutter.modal_gpu }}"
PYTHON = "{{ cookiecutter.python_version }}"
BUILDER_VERSIONS = ["2025.06", "2026.10"]
STACK = tomllib.loads((PROJECT / "gpu_stack.toml").read_text(encoding="utf-8"))
PYTHON_TAG = "cp" + PYTHON.replace(".", "")

# The kernel stack the GPU tests and benchmarks ran on; every other version is read from
# gpu_stack.toml, the one place it is written.
TESTED_KERNEL_STACK = {"torch": "2.10.0", "causal-conv1d": "1.7.0", "mamba-ssm": "2.3.2.post1"}
EXPECTED_ORDER = [
    "torch",
    "build tools",
    "causal-conv1d",
    "mamba-ssm's kernel packages",
    "mamba-ssm",
    "kernel import check",
    "training dependencies",
{%- if cookiecutter.task == 'language_model' %}
    "evaluation and hub data",
{%- endif %}
]

# Overrides of a shipped config: small enough to train a few steps on CPU in seconds.
TINY = [
    "--trainer.max_steps=2",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.limit_val_batches=1",
    *QUIET,
    "--model.kernels=off",
    *TINY_BACKBONE,
    "--data.init_args.batch_size=2",
]


def render(image: modal.Image, version: str) -> list[tuple[str, object]]:
    """The layers Modal would build for `image` under builder `version`, oldest first.

    Every Image method returns a lazy object whose loader closes over its base image and over
    the function that writes its Dockerfile lines for a builder version. This walks that chain
    and calls those functions, so the lines are Modal's own. Layers are ("build", lines),
    ("local", mount) for add_local_* (attached at container start) and ("python", series).
    """
    layers: list[tuple[str, object]] = []

    def walk(img) -> None:
        scope = inspect.getclosurevars(img._load).nonlocals
        if "split_image" in scope:  # from_registry(add_python=...)
            layers.append(("python", scope["add_python"]))
            newer = version > "2025.06"  # newer builders put the base and Python in two layers
            walk(scope["split_image"] if newer else scope["single_layer_image"])
        elif "mount" in scope:
            walk(scope["base_image"])
            layers.append(("local", scope["mount"]))
        else:
            for base in scope["base_images"].values():
                walk(base)
            layers.append(("build", scope["dockerfile_function"](version).commands))

    walk(synchronizer._translate_in(image))
    return layers


def build_lines(layers) -> list[list[str]]:
    return [lines for kind, lines in layers if kind == "build"]


def assert_local_files_last(layers) -> None:
    """Modal rejects (at deploy time) any build step after add_local_* with copy=False."""
    kinds = [kind for kind, _ in layers if kind != "python"]
    assert "local" in kinds
    after = kinds[kinds.index("local") :]
    assert after == ["local"] * len(after), f"build step after local files: {kinds}"


def attached_files(layers) -> list[tuple[Path, str]]:
    """(local path, container path) of every local file the image attaches."""
    mounts = [synchronizer._translate_in(m) for kind, m in layers if kind == "local"]
    return [
        (Path(local), str(remote))
        for m in mounts
        for e in m._entries
        for local, remote in e.get_files_to_upload()
    ]


def shipped_files(layers) -> set[str]:
    """Container paths of every local file the image attaches."""
    return {remote for _, remote in attached_files(layers)}


def pins_of(command: str) -> dict[str, str]:
    return dict(arg.split("==") for arg in shlex.split(command) if "==" in arg)


def clean_env(tmp_path: Path) -> dict[str, str]:
    """No Modal token and no user config: what a fresh machine or CI sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODAL_")}
    env["HOME"] = str(tmp_path)
    return env


# --- The pins file ----------------------------------------------------------------------------


def stack_pins() -> dict[str, str]:
    """Every package gpu_stack.toml installs, with its version (a later step's repeat of a pin
    must agree with the first)."""
    pins = {}
    for step in STACK["steps"]:
        for name, version in pins_of(step["run"]).items():
            assert pins.setdefault(name, version) == version, (step["name"], name)
    return pins


def test_pins_file_pins_every_package_exactly_in_install_order():
    assert [step["name"] for step in STACK["steps"]] == EXPECTED_ORDER
    for step in STACK["steps"]:
        if "pip install" not in step["run"]:
            continue
        args = [a for a in shlex.split(step["run"]) if not a.startswith("-")][3:]  # after install
        loose = [a for a in args if "==" not in a]
        assert not loose, f"{step['name']}: unpinned {loose}"
    pins = stack_pins()
    assert {name: pins[name] for name in TESTED_KERNEL_STACK} == TESTED_KERNEL_STACK
    assert STACK["image"] == {"base": "nvidia/cuda:12.8.1-devel-ubuntu22.04", "python": PYTHON}
    assert STACK["torch"] == {"cuda": "12.8", "cxx11_abi": True}  # the build the wheels fit


def test_every_declared_dependency_floor_is_the_version_the_image_pins():
    """pyproject.toml accepts no version older than the tested one (what the image installs)."""
    from packaging.requirements import Requirement

    project = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = stack_pins()
    for line in project["project"]["dependencies"]:
        requirement = Requirement(line)
        pinned = pins[requirement.name + "[signatures]" * bool(requirement.extras)]
        assert requirement.specifier.contains(pinned), line
        floor = next(s.version for s in requirement.specifier if s.operator == ">=")
        assert pinned.startswith(floor), (line, pinned)


def test_every_install_after_torch_holds_torch_and_kernels_skip_build_isolation():
    installs = {s["name"]: s["run"] for s in STACK["steps"] if "pip install" in s["run"]}
    for name, command in installs.items():
        assert pins_of(command)["torch"] == "2.10.0", name
    for name in ("causal-conv1d", "mamba-ssm"):
        assert "--no-build-isolation" in shlex.split(installs[name]), name
    check = next(s["run"] for s in STACK["steps"] if s["name"] == "kernel import check")
    assert {"selective_scan_cuda", "causal_conv1d_cuda"} <= set(re.findall(r"\w+", check))


def load_install_script():
    spec = importlib.util.spec_from_file_location("install_gpu", PROJECT / "scripts/install_gpu.py")
    install_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install_gpu)
    return install_gpu


def image_commands() -> list[tuple[str, str]]:
    """The commands of the Modal image's steps: Python of the bake, on Modal's x86-64 hosts."""
    return load_install_script().stack_commands(STACK, "python", PYTHON_TAG, "linux_x86_64")


def test_local_install_script_runs_the_same_ordered_commands():
    install_gpu = load_install_script()
    local = install_gpu.load_steps()
    assert [name for name, _ in local] == EXPECTED_ORDER
    python = shlex.quote(sys.executable)
    tag, plat = install_gpu.local_platform()
    for (name, image), (_, here) in zip(image_commands(), local, strict=True):
        expected = image.replace("python -", f"{python} -")
        tags = f"-{PYTHON_TAG}-{PYTHON_TAG}-linux_x86_64.whl"
        expected = expected.replace(tags, f"-{tag}-{tag}-{plat}.whl")
        assert here == expected, name


# --- The kernels: prebuilt wheels first, a loud source build otherwise --------------------------

# Written out from the setup.py of each source release: <dist>-<version>+cu<CUDA major>
# torch<major.minor>cxx11abi<TRUE|FALSE>-<python tag>-<python tag>-<platform>.whl, under the
# GitHub release v<version>.
WHEELS = {
    "causal-conv1d": "https://github.com/Dao-AILab/causal-conv1d/releases/download/v1.7.0/"
    f"causal_conv1d-1.7.0+cu12torch2.10cxx11abiTRUE-{PYTHON_TAG}-{PYTHON_TAG}-linux_x86_64.whl",
    "mamba-ssm": "https://github.com/state-spaces/mamba/releases/download/v2.3.2.post1/"
    f"mamba_ssm-2.3.2.post1+cu12torch2.10cxx11abiTRUE-{PYTHON_TAG}-{PYTHON_TAG}-linux_x86_64.whl",
}


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (
            ("causal-conv1d", "1.7.0", "2.10.0", "12.8", True, "cp312", "linux_x86_64"),
            "causal_conv1d-1.7.0+cu12torch2.10cxx11abiTRUE-cp312-cp312-linux_x86_64.whl",
        ),
        (  # the local version of torch and the CUDA minor do not enter the name
            ("mamba-ssm", "2.3.2.post1", "2.11.0+cu130", "13.0", False, "cp311", "linux_aarch64"),
            "mamba_ssm-2.3.2.post1+cu13torch2.11cxx11abiFALSE-cp311-cp311-linux_aarch64.whl",
        ),
    ],
)
def test_wheel_names_are_computed_as_the_kernels_setup_py_computes_them(args, name):
    install_gpu = load_install_script()
    assert install_gpu.wheel_name(*args) == name
    with pytest.raises(ValueError, match="CUDA 10.2"):
        install_gpu.wheel_name(*args[:3], "10.2", *args[4:])


@pytest.mark.parametrize("version", BUILDER_VERSIONS)
def test_kernel_layers_install_the_release_wheel_and_fall_back_to_a_loud_source_build(version):
    runs = {line for lines in build_lines(render(modal_app.image, version)) for line in lines}
    pins = stack_pins()
    for package, url in WHEELS.items():
        pin = f"{package}=={pins[package]}"
        (line,) = [line for line in runs if line.startswith("RUN ") and pin in line]
        check, rest = line.removeprefix("RUN ").split(" && ", 1)
        wheel, fallback = rest.split(" || ", 1)
        assert "torch.version.cuda" in check and "_GLIBCXX_USE_CXX11_ABI" in check
        assert shlex.split(wheel) == ["python", "-m", "pip", "install", "torch==2.10.0", url]
        assert "BUILDING FROM SOURCE" in fallback and url.rsplit("/", 1)[1] in fallback
        build = f"python -m pip install --no-build-isolation torch==2.10.0 {pin}"
        assert fallback.endswith("; " + build + "; }")


FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "$*" >> "$CALLS"
case "$*" in
    "-c "*) exit "$CHECK_EXIT" ;;
    *.whl) exit "$WHEEL_EXIT" ;;
    *) exit "$BUILD_EXIT" ;;
esac
"""


@pytest.mark.parametrize(
    ("exits", "expected_calls", "code"),
    [
        ((0, 0, 0), ["check", "wheel"], 0),  # the wheel exists: no build, no banner
        ((0, 1, 0), ["check", "wheel", "build"], 0),  # 404: banner, then the source build
        ((1, 0, 0), ["check", "build"], 0),  # another torch: never its wheel
        ((0, 1, 1), ["check", "wheel", "build"], 1),  # a failed build fails the layer
    ],
)
def test_a_kernel_step_builds_from_source_only_when_the_wheel_fails(
    exits, expected_calls, code, tmp_path
):
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    calls = tmp_path / "calls"
    commands = load_install_script().stack_commands(STACK, str(python), PYTHON_TAG, "linux_x86_64")
    command = dict(commands)["causal-conv1d"]
    env = {**os.environ, "CALLS": str(calls)}
    env.update(zip(("CHECK_EXIT", "WHEEL_EXIT", "BUILD_EXIT"), map(str, exits), strict=True))
    out = subprocess.run(["sh", "-c", command], env=env, capture_output=True, text=True)
    kinds = []
    for call in calls.read_text().splitlines():
        kinds.append("check" if call.startswith("-c ") else "wheel" if ".whl" in call else "build")
        if kinds[-1] == "build":
            assert "--no-build-isolation" in call and "causal-conv1d==1.7.0" in call
    assert kinds == expected_calls
    assert out.returncode == code
    assert ("BUILDING FROM SOURCE" in out.stdout) == ("build" in kinds)


# --- The image --------------------------------------------------------------------------------


@pytest.mark.parametrize("version", BUILDER_VERSIONS)
def test_image_starts_from_cuda_devel_with_the_baked_python(version):
    layers = render(modal_app.image, version)
    print(f"\nbuilder {version}:")
    for kind, item in layers:
        print(f"  {kind}: {item if kind != 'local' else 'add_local_*'}")
    assert ("python", PYTHON) in layers
    first = build_lines(layers)[0]
    assert first[0] == f"FROM {STACK['image']['base']}"
    python_layer = next(
        lines for lines in build_lines(layers) if "COPY /python/. /usr/local" in lines
    )
    # 2025.06 adds Python in the base layer; 2026.10 in its own layer on top of the base.
    assert (python_layer is first) == (version == "2025.06")


@pytest.mark.parametrize("version", BUILDER_VERSIONS)
def test_image_runs_each_stack_step_as_its_own_layer_in_order(version):
    runs = [lines[1:] for lines in build_lines(render(modal_app.image, version))[1:]]
    steps = [[f"RUN {command}"] for _, command in image_commands()]
    python_layer = [1] if version > "2025.06" else []
    assert runs[len(python_layer) : len(python_layer) + len(steps)] == steps


@pytest.mark.parametrize("version", BUILDER_VERSIONS)
def test_local_files_come_last_and_ship_package_configs_and_pins(version):
    layers = render(modal_app.image, version)
    assert_local_files_last(layers)
    shipped = shipped_files(layers)
    assert "/root/gpu_stack.toml" in shipped
    configs = sorted((PROJECT / "configs").glob("*.yaml"))
    assert configs, "configs/ holds no YAML file"
    assert {f"/root/configs/{c.name}" for c in configs} <= shipped
    package = PROJECT / "src" / PACKAGE
    sources = {
        f"/root/{PACKAGE}/{p.relative_to(package).as_posix()}" for p in package.rglob("*.py")
    }
    assert sources and sources <= shipped
{%- if cookiecutter.task == 'language_model' %}
    assert "/root/benchmarks/throughput.py" in shipped  # for modal_app.throughput
{%- endif %}
    assert "/root/scripts/install_gpu.py" in shipped  # modal_app.py builds its steps with it
    assert not any("__pycache__" in path or "/." in path for path in shipped)


def test_the_container_imports_modal_app_from_the_shipped_files_alone(tmp_path):
    """A container's /root holds modal_app.py and the files the image attaches, nothing else."""
    root = tmp_path / "root"
    for local, remote in attached_files(render(modal_app.image, BUILDER_VERSIONS[-1])):
        target = root / Path(remote).relative_to("/root")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
    shutil.copyfile(PROJECT / "modal_app.py", root / "modal_app.py")
    code = f"import modal_app, {PACKAGE}; print({PACKAGE}.__file__)"
    env = {**clean_env(tmp_path), "PYTHONPATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(root / PACKAGE / "__init__.py")
{%- if cookiecutter.task == 'language_model' %}


def test_throughput_runs_the_benchmark_script_shipped_in_the_image(tmp_path):
    out = tmp_path / "report.json"
    command = modal_app.throughput_command("Mamba2,Mamba1", True, out)
    script = Path(command[1])
    assert script == PROJECT / "benchmarks" / "throughput.py" and script.is_file()
    assert command[2:] == ["--mixers", "Mamba2,Mamba1", "--out", str(out), "--quick"]
    assert "--quick" not in modal_app.throughput_command("Mamba2", False, out)
    gpus = [gpu for gpu, _ in modal_app.throughput.info().gpus]
    assert gpus == [g.upper() for g in modal_app.GPUS]
    help_text = subprocess.run(
        [*command[:2], "--help"], capture_output=True, text=True, env=modal_app.package_env()
    )
    assert help_text.returncode == 0 and "--mixers" in help_text.stdout
{%- endif %}


def test_a_build_step_after_local_files_is_caught():
    late = modal_app.image.run_commands("echo too late")
    with pytest.raises(AssertionError, match="build step after local files"):
        assert_local_files_last(render(late, "2026.10"))


def test_importing_modal_app_needs_no_token_and_no_torch(tmp_path):
    code = "import sys, modal_app; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=PROJECT,
        env=clean_env(tmp_path),
        capture_output=True,
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "False"


def test_a_missing_local_dependency_is_one_error_line_with_the_install_command(tmp_path):
    (tmp_path / "yaml.py").write_text("raise ModuleNotFoundError(\"No module named 'yaml'\")\n")
    env = {**clean_env(tmp_path), "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    out = subprocess.run(
        [sys.executable, "-c", "import modal_app"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: No module named 'yaml'") and out.stderr.count("\n") == 1
    assert "pip install pyyaml && pip install --no-deps -e ." in out.stderr


# --- Function spec and the entrypoint ---------------------------------------------------------


def test_train_function_spec_has_gpu_fallbacks_timeout_retries_and_volumes():
    info = modal_app.train.info()
    assert info.gpus[0] == (BAKED_GPU.upper(), 1)
    assert [gpu for gpu, _ in info.gpus] == [g.upper() for g in modal_app.GPUS]
    assert len(info.gpus) > 1
    assert 0 < info.timeout < 24 * 3600
    assert 1 <= info.max_retries <= 10
    names = {path: mount.name for path, mount in info.volumes.items()}
    assert names == {
        "/vol/data": f"{SLUG}-data",
        "/vol/runs": f"{SLUG}-runs",
        "/vol/logs": f"{SLUG}-logs",
        "/vol/hf": f"{SLUG}-hf-cache",
    }


@pytest.mark.parametrize("version", BUILDER_VERSIONS)
def test_the_hugging_face_cache_lives_on_the_mounted_volume(version):
    lines = [line for lines in build_lines(render(modal_app.image, version)) for line in lines]
    assert f"ENV HF_HOME={modal_app.MOUNTS.hf}" in lines
    # compiled Triton kernels persist in the cache Volume, with their autotuning
    assert f"ENV TRITON_CACHE_DIR={modal_app.MOUNTS.triton}" in lines
    assert modal_app.MOUNTS.triton.is_relative_to(modal_app.MOUNTS.hf)
    assert "ENV TRITON_CACHE_AUTOTUNING=1" in lines
    assert str(modal_app.MOUNTS.hf) in modal_app.train.info().volumes


def test_modal_run_help_lists_the_entrypoint_options(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "modal", "run", "modal_app.py", "--help"],
        check=False,
        cwd=PROJECT,
        env={**clean_env(tmp_path), "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    options = ["--config", "--run-id", "--overrides", "--gpu", "--nodes", "--timeout-hours"]
    for option in [*options, "--kernels"]:
        assert option in out.stdout, option


def any_config() -> str:
    return min((PROJECT / "configs").glob("*.yaml")).relative_to(PROJECT).as_posix()


class FakeCall:
    """Stands in for a modal.FunctionCall: records that the caller waited for it."""

    object_id = "fc-offline"

    def __init__(self, calls: list):
        self.calls = calls

    def get(self, timeout=None):
        self.calls.append(("get", timeout))


class FakeFunction:
    """Stands in for a Modal Function: records with_options and spawn; has no .remote()."""

    def __init__(self, calls: list, name: str, options: dict | None = None):
        self.calls, self.name, self.options = calls, name, options or {}

    def with_options(self, **options):
        return FakeFunction(self.calls, self.name, {**self.options, **options})

    def spawn(self, *args):
        self.calls.append((self.name, self.options, args))
        return FakeCall(self.calls)


@pytest.fixture
def functions(monkeypatch):
    """train and train_cluster replaced by FakeFunctions; the app as with CLUSTER_NODES=2."""
    monkeypatch.chdir(PROJECT)
    monkeypatch.setattr(modal_app, "CLUSTER_NODES", 2)
    calls = []
    for name in ("train", "train_cluster"):
        monkeypatch.setattr(modal_app, name, FakeFunction(calls, name), raising=False)
    return calls


@pytest.mark.parametrize(
    ("kwargs", "function", "options"),
    [
        ({}, "train", {}),
        ({"overrides": "--trainer.devices=2"}, "train", {"gpu": f"{BAKED_GPU}:2"}),
        ({"gpu": "H100:2", "timeout_hours": 2}, "train", {"gpu": "H100:2", "timeout": 7200}),
        ({"nodes": 2}, "train_cluster", {}),
        ({"nodes": 2, "gpu": "H200:8"}, "train_cluster", {"gpu": "H200:8"}),
    ],
)
def test_main_spawns_one_container_or_the_cluster_and_waits_for_the_call(
    kwargs, function, options, functions
):
    modal_app.main.info.raw_f(config=any_config(), **kwargs)
    overrides = shlex.split(kwargs.get("overrides", ""))
    # spawned, then awaited without a time limit: the call outlives .remote()'s 24 hours
    spawned = (function, options, (any_config(), overrides, "", "require"))
    assert functions == [spawned, ("get", None)]


def test_main_stops_on_a_bad_input_with_one_error_line_and_spawns_nothing(functions, capsys):
    with pytest.raises(SystemExit) as stop:
        modal_app.main.info.raw_f(config=any_config(), run_id="a/b")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --run-id 'a/b'") and err.count("\n") == 1
    assert functions == []


def test_the_local_side_of_modal_run_never_imports_torch_or_lightning(tmp_path):
    """What `modal run` does on a laptop, up to the spawned call, in a fresh interpreter."""
    code = f"""
import sys
import modal_app

class Call:
    object_id = "fc-offline"
    def get(self):
        print("waited")

class Train:
    def spawn(self, *args):
        print("spawned", args)
        return Call()

modal_app.train = Train()
modal_app.main.info.raw_f(config={any_config()!r}, run_id="exp-1")
heavy = ("torch", "lightning", "{PACKAGE}.machinery.runs")
print("heavy:", sorted(m for m in heavy if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, env=clean_env(tmp_path), capture_output=True
    )
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    spawned = next(line for line in lines if line.startswith("spawned ("))
    assert "'exp-1'" in spawned
    assert lines[-2:] == ["waited", "heavy: []"]


def import_with_cluster_nodes(value: str, monkeypatch):
    """modal_app.py imported afresh, as `CLUSTER_NODES=<value> modal run` imports it."""
    monkeypatch.setenv("CLUSTER_NODES", value)
    spec = importlib.util.spec_from_file_location(f"modal_app_{value}", PROJECT / "modal_app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cluster_nodes_the_app_defines_no_cluster_function():
    assert modal_app.CLUSTER_NODES == 0
    assert not hasattr(modal_app, "train_cluster")


def test_the_app_runs_the_commands_of_the_task_this_project_was_made_for():
    import modal

    functions = {name for name, f in vars(modal_app).items() if isinstance(f, modal.Function)}
{%- if cookiecutter.task == 'language_model' %}
    commands = {"throughput", "extrapolate", "evaluate", "generate", "prepare_text"}
{%- else %}
    commands = {"extrapolate"}  # a classifier's: no language-model command, no GPU benchmark
{%- endif %}
    assert functions == {"train", "tensorboard", *commands}


def test_cluster_function_spec_has_eight_gpus_per_node_rdma_retries_and_volumes(monkeypatch):
    clustered = import_with_cluster_nodes("2", monkeypatch)
    info = clustered.train_cluster.info()
    assert (info.cluster_info.size, info.cluster_info.rdma) == (2, True)
    assert info.gpus == [(clustered.CLUSTER_GPU, 8)]
    assert clustered.CLUSTER_GPU in {"H100", "H200", "B200"}
    train = clustered.train.info()
    assert (info.timeout, info.max_retries) == (train.timeout, train.max_retries)
    assert info.volumes == train.volumes
    assert len(info.secrets) == 1  # env: CLUSTER_NODES again, for the containers' import
    assert import_with_cluster_nodes("4", monkeypatch).train_cluster.info().cluster_info.size == 4


@pytest.mark.parametrize("node_rank", [0, 1, 2])
def test_each_node_gets_the_rendezvous_lightning_reads(node_rank, monkeypatch):
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch import Trainer
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    addresses = ["fdaa:0:1::a", "fdaa:0:1::b", "fdaa:0:1::c"]  # Modal gives IPv6 addresses
    env = modal_app.rendezvous_env(node_rank, addresses, port=29555)
    assert env == {"MASTER_ADDR": addresses[0], "MASTER_PORT": "29555", "NODE_RANK": str(node_rank)}

    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The Trainer records its global rank in this process-wide flag; later tests need rank 0.
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)
    trainer = Trainer(accelerator="cpu", devices=2, num_nodes=3, strategy="ddp", logger=False)
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, LightningEnvironment)
    assert not cluster.creates_processes_externally  # Lightning starts one process per device
    assert (cluster.main_address, cluster.main_port) == (addresses[0], 29555)
    assert (trainer.node_rank, trainer.num_nodes, trainer.world_size) == (node_rank, 3, 6)


def test_rendezvous_rejects_a_rank_outside_the_cluster():
    with pytest.raises(ValueError, match="node rank 2 is not one of the 2 nodes"):
        modal_app.rendezvous_env(2, ["fdaa::a", "fdaa::b"])


# --- Running in the container, locally -------------------------------------------------------


# Function.local() warns that Volumes are not mounted locally: the fixture below stands in.
local_volumes = pytest.mark.filterwarnings("ignore:The train function is executing locally")


class FakeVolume:
    """Stands in for a modal.Volume: counts commits and reloads; a reload may fail."""

    def __init__(self, reload_error: Exception | None = None):
        self.commits = self.reloads = 0
        self.reload_error = reload_error

    def commit(self):
        self.commits += 1

    def reload(self):
        self.reloads += 1
        if self.reload_error:
            raise self.reload_error


@pytest.fixture
def volumes(tmp_path, monkeypatch):
    """Temporary folders for the Volumes, counting commits; kernel check recorded."""
    mounts = modal_app.Mounts(*(tmp_path / name for name in ("data", "runs", "logs", "hf")))
    monkeypatch.setattr(modal_app, "MOUNTS", mounts)
    runs, logs, hf = FakeVolume(), FakeVolume(), FakeVolume()
    monkeypatch.setattr(modal_app, "runs_volume", runs)
    monkeypatch.setattr(modal_app, "logs_volume", logs)
    monkeypatch.setattr(modal_app, "hf_volume", hf)
    policies = []

    def check_kernels(policy="require"):
        policies.append(policy)
        return {"selective_scan": False, "causal_conv1d": False, "triton_ssd": False}

    kernels = type(sys)(f"{PACKAGE}.machinery.kernels")
    kernels.check_kernels = check_kernels
    monkeypatch.setitem(sys.modules, f"{PACKAGE}.machinery.kernels", kernels)
    return mounts, runs, policies


def test_checkpoint_watcher_commits_each_new_last_ckpt(tmp_path):
    commits = []
    ckpt = tmp_path / "run-1" / "checkpoints" / "last.ckpt"
    watcher = modal_app.CheckpointWatcher(tmp_path, lambda: commits.append(ckpt.read_bytes()), 0.05)
    watcher.start()
    try:
        ckpt.parent.mkdir(parents=True)
        for content in [b"step 1", b"step 2, longer"]:
            ckpt.write_bytes(content)
            deadline = time.monotonic() + 5
            while (not commits or commits[-1] != content) and time.monotonic() < deadline:
                time.sleep(0.02)
    finally:
        watcher.stopped.set()
        watcher.join()
    assert commits == [b"step 1", b"step 2, longer"]


@local_volumes
def test_failed_training_raises_so_modal_retries_and_still_commits(volumes, monkeypatch):
    _, runs, policies = volumes
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    monkeypatch.setattr(modal_app, "fit_command", lambda *args: failing)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        modal_app.train.local("configs/any.yaml", [], "run-1", "require")
    assert policies == ["require"]
    assert runs.commits == 1


def test_sigterm_is_forwarded_to_the_training_process(volumes, monkeypatch):
    child = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "time.sleep(30)\n"
    )
    monkeypatch.setattr(modal_app, "fit_command", lambda *args: [sys.executable, "-c", child])
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    assert modal_app.run_training("configs/any.yaml", [], "run-1", "off") == 7
    assert time.monotonic() - started < 20


def test_tensorboard_endpoint_serves_the_logs_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    from werkzeug.test import Client

    with SummaryWriter(tmp_path / "run-1") as writer:
        writer.add_scalar("train/loss", 1.5, 7)
    client = Client(modal_app.tensorboard_app(tmp_path))
    response = client.get("/data/environment")
    assert response.status_code == 200
    assert response.get_json()["data_location"] == str(tmp_path)
    for _ in range(600):  # the first read of the folder runs in a thread of its own
        if "run-1" in client.get("/data/runs").get_json():
            break
        time.sleep(0.1)
    scalars = client.get("/data/plugin/scalars/scalars?run=run-1&tag=train/loss").get_json()
    assert [(step, value) for _, step, value in scalars] == [(7, 1.5)]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_tensorboard_reloads_the_logs_volume_on_requests_at_most_every_30_s(tmp_path):
    from werkzeug.test import Client

    volume, clock = FakeVolume(), Clock()
    board = modal_app.tensorboard_app(tmp_path, volume)
    board.clock = clock
    client = Client(board)
    reloads = []
    for step in [0, 10, 19, 5, 1, 29]:  # seconds between requests: at 0, 10, 29, 34, 35, 64
        clock.now += step
        assert client.get("/data/environment").status_code == 200
        reloads.append(volume.reloads)
    assert reloads == [1, 1, 1, 2, 2, 3]  # the first request, then 30 s after the last reload


def test_a_reload_blocked_by_an_open_file_still_serves_the_page(tmp_path, capsys):
    from werkzeug.test import Client

    busy = RuntimeError("there are open files preventing the operation: /vol/logs/run/events")
    volume = FakeVolume(reload_error=busy)
    client = Client(modal_app.tensorboard_app(tmp_path, volume))
    response = client.get("/data/environment")
    assert response.status_code == 200
    assert response.get_json()["data_location"] == str(tmp_path)
    assert volume.reloads == 1
    assert "logs Volume not reloaded (there are open files" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:The tensorboard function is executing locally")
def test_the_deployed_endpoint_reloads_the_logs_volume(tmp_path, monkeypatch):
    monkeypatch.setattr(modal_app, "MOUNTS", modal_app.Mounts(logs=tmp_path))
    board = modal_app.tensorboard.local()
    assert isinstance(board, modal_app.ReloadingLogs)
    assert board.volume is modal_app.logs_volume
    assert board.every_s <= 60


@pytest.mark.skipif(
    importlib.util.find_spec(f"{PACKAGE}.cli") is None,
    reason=f"{PACKAGE}.cli is not written yet; this test runs the real CLI",
)
@local_volumes
def test_training_runs_locally_and_a_second_call_resumes(volumes, capfd):
    mounts, runs, policies = volumes
    config = "configs/default.yaml"  # the demo config: its data is generated, no file needed
    modal_app.train.local(config, TINY, "resume-test", "off")
    ckpt = mounts.runs / "resume-test" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    assert list((mounts.logs / "resume-test").rglob("events.out.tfevents.*"))
    capfd.readouterr()

    more = [*TINY, "--trainer.max_steps=4"]
    modal_app.train.local(config, more, "resume-test", "off")
    output = "".join(capfd.readouterr())
    assert "Restoring states from the checkpoint" in output
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4
    assert policies == ["off", "off"]
    assert runs.commits >= 2


def loopback() -> tuple[str, int]:
    """A local address and a free port on it: IPv6 (like Modal's cluster network) if possible."""
    for family, address in ((socket.AF_INET6, "::1"), (socket.AF_INET, "127.0.0.1")):
        try:
            with socket.socket(family) as s:
                s.bind((address, 0))
                return address, s.getsockname()[1]
        except OSError:  # no IPv6 on this machine
            continue
    raise RuntimeError("no loopback address")


@pytest.fixture
def children(monkeypatch):
    """Starts modal_app's child processes in their own process groups; kills what is left."""
    started, popen = [], subprocess.Popen

    def start(*args, **kwargs):
        started.append(popen(*args, **kwargs, start_new_session=True))
        return started[-1]

    monkeypatch.setattr(modal_app.subprocess, "Popen", start)
    yield started
    for child in started:
        if child.poll() is None:  # a node that waits for its peer forever: the test failed
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


@pytest.mark.skipif(
    importlib.util.find_spec(f"{PACKAGE}.cli") is None,
    reason=f"{PACKAGE}.cli is not written yet; this test runs the real CLI",
)
def test_two_cluster_nodes_on_one_cpu_machine_train_as_one_job(volumes, children, capfd):
    """What every container of `train_cluster` runs, twice on this machine, one CPU each.

    The nodes meet at the loopback address (IPv6 where the machine has it, as Modal's cluster
    addresses are); the job's world size is 2 although each node starts one process, and only
    node 0 writes.
    """
    mounts, runs, policies = volumes
    address, port = loopback()
    addresses = [address, address]
    ddp = [*TINY, "--trainer.strategy=ddp"]  # devices=1 per node
    codes = {}

    def node(rank: int) -> None:
        codes[rank] = modal_app.run_cluster_node(
            "configs/default.yaml", ddp, "two-nodes", "off", rank, addresses, port
        )

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    output = "".join(capfd.readouterr())
    assert codes == {0: 0, 1: 0}, output[-8000:]
    assert "Starting with 2 processes" in output
    assert "--trainer.num_nodes=2" in output  # the command each node printed
    ckpt = mounts.runs / "two-nodes" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 2
    assert len(list((mounts.logs / "two-nodes").rglob("events.out.tfevents.*"))) == 1
    assert runs.commits >= 1
    assert policies == ["off", "off"]


def test_only_node_zero_commits_and_every_node_is_told_the_cluster_size(monkeypatch):
    seen = {}

    def run_training(config, overrides, run_id, kernels, commit, env):
        seen[env["NODE_RANK"]] = (overrides, commit is modal_app.commit_run_volumes, env)
        return 0

    monkeypatch.setattr(modal_app, "run_training", run_training)
    addresses = ["fdaa::a", "fdaa::b", "fdaa::c"]
    for rank in range(3):
        modal_app.run_cluster_node("configs/x.yaml", ["--a=1"], "r", "off", rank, addresses)
    assert {rank: commits for rank, (_, commits, _) in seen.items()} == {
        "0": True,
        "1": False,
        "2": False,
    }
    assert all(o == ["--a=1", "--trainer.num_nodes=3"] for o, _, _ in seen.values())
    assert {env["MASTER_ADDR"] for _, _, env in seen.values()} == {"fdaa::a"}


def test_extrapolate_evaluates_a_run_of_the_runs_volume_at_other_lengths(
    tmp_path, monkeypatch, capfd
):
    from {{ cookiecutter.package_name }}.cli import main

    task, length = {{ '("InductionHeads", 32)' if cookiecutter.task == 'language_model' else '("SyntheticSeries", 96)' }}
    data = [f"--data={PACKAGE}.data.{task}", f"--data.seq_len={length}"]
    data += ["--data.num_train_samples=16", "--data.num_val_samples=8"]
    main(["fit", TASK_MODEL, *data, *TINY, f"--run.root={tmp_path}", "--run.id=short"])
    monkeypatch.setattr(modal_app, "MOUNTS", modal_app.Mounts(runs=tmp_path))
    lengths = f"{length},{2 * length}"
    command = modal_app.extrapolate_command("short", lengths, "last")
    assert command[-2] == f"--ckpt_path={tmp_path / 'short' / 'checkpoints' / 'last.ckpt'}"
    modal_app.extrapolate.local("short", lengths)
    printed = capfd.readouterr().out
    assert f"{task} at 2 lengths" in printed and f"{2 * length:9d} |" in printed
    with pytest.raises(SystemExit) as stop:
        modal_app.extrapolate.local("no-such-run", str(length))
    assert stop.value.code == 2 and "no such file" in capfd.readouterr().err
    gpus = [gpu for gpu, _ in modal_app.extrapolate.info().gpus]
    assert gpus == [g.upper() for g in modal_app.GPUS]
{%- if cookiecutter.task == 'language_model' %}


def test_evaluate_needs_a_run_or_pretrained_weights_and_asks_for_the_training_gpus(
    monkeypatch, tmp_path, capfd
):
    monkeypatch.setattr(modal_app, "MOUNTS", modal_app.Mounts(runs=tmp_path))
    with pytest.raises(SystemExit) as stop:
        modal_app.evaluate.local("lambada_openai")
    assert stop.value.code == 2 and "give one of --run-id" in capfd.readouterr().err
    command = modal_app.evaluate_command("lambada_openai", "lm", "last", "", "", "")
    assert command[-1] == f"--ckpt_path={tmp_path / 'lm' / 'checkpoints' / 'last.ckpt'}"
    command = modal_app.evaluate_command("piqa", "", "best", "state-spaces/mamba-130m", "", "5")
    assert command[-3:] == [
        "--pretrained=state-spaces/mamba-130m",
        f"--out={tmp_path / 'eval' / 'state-spaces_mamba-130m'}",
        "--limit=5",
    ]
    gpus = [gpu for gpu, _ in modal_app.evaluate.info().gpus]
    assert gpus == [g.upper() for g in modal_app.GPUS]
{%- endif %}
