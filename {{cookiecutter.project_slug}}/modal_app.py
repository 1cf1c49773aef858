"""Where it runs: the same LightningCLI training, on Modal GPUs.

    modal run modal_app.py --config configs/<name>.yaml
    modal run modal_app.py --config configs/<name>.yaml --overrides "--trainer.max_steps=20000"
    modal run --detach modal_app.py --config configs/<name>.yaml --gpu H100:2
    CLUSTER_NODES=2 modal run modal_app.py --config configs/<name>.yaml --nodes 2  # 2 x 8 GPUs
    modal run modal_app.py::prepare_text --path /vol/data/corpus.txt
    modal deploy modal_app.py                          # keeps the TensorBoard endpoint up

What happens where:
- On your machine, `main` checks every input (config path, run id, GPUs, nodes, timeout)
  before any GPU time is spent, then calls `train` (one container) or `train_cluster`
  (several) remotely. The number of GPUs follows the config's `trainer.devices` and
  `trainer.num_nodes`, after --overrides, unless --gpu names it.
- In the container, `train` reports which fast kernels are active (and with `--kernels require`
  stops if one is missing), then runs `python -m <package> fit ...` as a child process, with
  the Volumes' paths as the run root. Lightning re-launches that command once per further GPU
  (DDP), which is why training is a child process rather than a function call. Whenever a
  `last.ckpt` changes, the checkpoint and log Volumes are committed, so a retried or preempted
  attempt resumes from it: the CLI resumes by itself when
  `<run root>/<run id>/checkpoints/last.ckpt` exists, in every process.
- `train_cluster` runs the same child in every container of a Modal cluster, with the
  environment variables Lightning reads to join the nodes into one job.

docs/modal.md explains the GPU choice, several GPUs and nodes, `--detach`, the image builder
version and resuming.
"""

import os
import shlex
import signal
import subprocess
import sys
import threading
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path
from typing import Literal

import modal
import modal.experimental
import yaml

PACKAGE = "{{ cookiecutter.package_name }}"
APP_NAME = "{{ cookiecutter.project_slug }}"

# Locally this is the project folder; in the container Modal imports this file as
# /root/modal_app.py, and the image below puts everything it needs next to it in /root.
HERE = Path(__file__).resolve().parent
STACK_FILE = HERE / "gpu_stack.toml"

# --- GPUs ------------------------------------------------------------------------------------

# GPU types Modal knows (case-insensitive), with memory in GB.
GPU_MEMORY_GB = {
    "T4": 16,
    "L4": 24,
    "A10": 24,
    "A10G": 24,
    "A100": 40,
    "A100-40GB": 40,
    "L40S": 48,
    "A100-80GB": 80,
    "H100": 80,
    "H100!": 80,
    "RTX-PRO-6000": 96,
    "H200": 141,
    "B200": 180,
    "B200+": 180,
}
MAX_GPUS_PER_CONTAINER = {"A10": 4, "A10G": 4}  # 8 for every other type
FALLBACK_CANDIDATES = ["L4", "A10", "A100-40GB", "L40S", "A100-80GB", "H100", "H200", "B200"]


def gpu_fallbacks(first: str, extra: int = 2) -> list[str]:
    """`first`, then the `extra` closest GPU types with at least as much memory.

    Modal takes the first type in the list that has capacity, and a config that fits the first
    GPU's memory also fits the fallbacks.
    """
    need = GPU_MEMORY_GB[first]
    larger = [g for g in FALLBACK_CANDIDATES if g != first and GPU_MEMORY_GB[g] >= need]
    return [first, *sorted(larger, key=GPU_MEMORY_GB.__getitem__)[:extra]]


GPUS = gpu_fallbacks("{{ cookiecutter.modal_gpu }}")

# --- Several nodes ---------------------------------------------------------------------------

# A Modal cluster is a group of containers started together on a private network, each holding
# every GPU of its host. Modal fixes the group's size when the app is defined, which is before
# `main` sees its arguments, so the size comes from the environment of `modal run`:
#     CLUSTER_NODES=4 modal run modal_app.py --config ... --nodes 4
# Without CLUSTER_NODES the app has no cluster function at all, so runs on one container never
# depend on the workspace's access to clusters.
GPUS_PER_NODE = 8
MAX_CLUSTER_NODES = 32  # Modal's documented limit per cluster; larger ones on request
CLUSTER_GPU = GPUS[0] if GPUS[0] in {"H100", "H200", "B200"} else "H100"
RENDEZVOUS_PORT = 29500  # torch.distributed's usual port for the main node


def cluster_size(value: str | None) -> int:
    """The number of containers of `train_cluster` from $CLUSTER_NODES; 0 when it is unset."""
    if not value:
        return 0
    if not (value.isdigit() and 2 <= int(value) <= MAX_CLUSTER_NODES):
        raise ValueError(
            f"CLUSTER_NODES={value!r}: use a whole number from 2 to {MAX_CLUSTER_NODES}, the "
            "same as --nodes, e.g. CLUSTER_NODES=4 modal run modal_app.py ... --nodes 4."
        )
    return int(value)


CLUSTER_NODES = cluster_size(os.environ.get("CLUSTER_NODES"))

# --- Time limits and retries -----------------------------------------------------------------

MAX_TIMEOUT_HOURS = 24  # Modal's limit for one attempt
TIMEOUT_HOURS = 12  # per attempt; a timed-out attempt is retried and resumes from last.ckpt
RETRIES = modal.Retries(max_retries=4, backoff_coefficient=1.0, initial_delay=10.0)

# --- The image: one layer per step of gpu_stack.toml, local files last ------------------------


def not_source(path: Path) -> bool:
    """Files to leave behind: caches, bytecode, hidden files and folders."""
    return path.suffix == ".pyc" or any(p.startswith(".") or p == "__pycache__" for p in path.parts)


stack = tomllib.loads(STACK_FILE.read_text(encoding="utf-8"))
image = modal.Image.from_registry(stack["image"]["base"], add_python=stack["image"]["python"])
for step in stack["steps"]:
    image = image.run_commands(step["run"])
image = (
    image.env({"PYTHONUNBUFFERED": "1"})
    # Local files go last: they are attached when a container starts instead of being baked
    # into a layer, and Modal refuses any build step after them.
    .add_local_dir(HERE / "src" / PACKAGE, f"/root/{PACKAGE}", ignore=not_source)
    .add_local_dir(HERE / "configs", "/root/configs", ignore=not_source)
    .add_local_file(STACK_FILE, "/root/gpu_stack.toml")
    .add_local_dir(HERE / "benchmarks", "/root/benchmarks", ignore=not_source)
)

# --- Volumes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mounts:
    """Where the Volumes appear inside a container."""

    data: Path = Path("/vol/data")  # datasets: `modal volume put` uploads here
    runs: Path = Path("/vol/runs")  # --run.root: checkpoints and the saved config of each run
    logs: Path = Path("/vol/logs")  # --run.log_root: TensorBoard event files


MOUNTS = Mounts()
data_volume = modal.Volume.from_name(f"{APP_NAME}-data", create_if_missing=True)
runs_volume = modal.Volume.from_name(f"{APP_NAME}-runs", create_if_missing=True)
logs_volume = modal.Volume.from_name(f"{APP_NAME}-logs", create_if_missing=True)
VOLUMES = {
    str(MOUNTS.data): data_volume,
    str(MOUNTS.runs): runs_volume,
    str(MOUNTS.logs): logs_volume,
}

app = modal.App(APP_NAME, image=image)

# --- Checking inputs before any GPU time -----------------------------------------------------

# Set by this file from the Volumes; overriding them would write outside the Volumes.
RESERVED_OVERRIDES = ("--run.root", "--run.log_root", "--run.id")


@dataclass(frozen=True)
class Request:
    """The validated inputs of one `modal run`."""

    config: str  # relative to the project folder, e.g. "configs/lm.yaml"
    overrides: list[str]
    run_id: str  # "" lets the CLI derive a stable id from the config
    gpu: str | None  # e.g. "H100:2"; None keeps the function's own request
    nodes: int  # 1: `train`; more: `train_cluster` with that many containers
    timeout_s: int


def trainer_settings(config: str, overrides: list[str]) -> dict[str, tuple[object, str]]:
    """trainer.devices and trainer.num_nodes as the CLI will see them, with where each was set.

    `config` is relative to the project folder. The YAML file first, then the overrides in
    order (the last one wins), each value parsed as YAML, as LightningCLI parses it. Keys that
    are set nowhere are left out.
    """
    try:
        trainer = (yaml.safe_load((HERE / config).read_text(encoding="utf-8")) or {})["trainer"]
    except KeyError:
        trainer = {}
    except (yaml.YAMLError, TypeError) as err:
        raise ValueError(
            f"--config {config}: not a YAML mapping ({err}). Fix the file; `python -m "
            f"{PACKAGE} fit --config {config} --print_config` shows what the CLI reads."
        ) from None
    found = {}
    for key in ("devices", "num_nodes"):
        if isinstance(trainer, dict) and key in trainer:
            found[key] = (trainer[key], f"in {config}")
    for arg in overrides:
        name, has_value, value = arg.partition("=")
        key = name.removeprefix("--trainer.")
        if key in ("devices", "num_nodes") and key != name and has_value:
            try:
                found[key] = (yaml.safe_load(value), "in --overrides")
            except yaml.YAMLError:
                found[key] = (value, "in --overrides")
    return found


def gpus_per_container(devices: object, where: str) -> int | None:
    """The GPU count trainer.devices asks of each container; None for all it has (auto, -1)."""
    if devices in ("auto", -1, "-1"):
        return None
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    raise ValueError(
        f"trainer.devices={devices!r} ({where}): on Modal give the number of GPUs per "
        "container, e.g. 2, or auto for every GPU it has. GPUs are picked with --gpu TYPE:N, "
        "not by index."
    )


def validate_scale(
    gpu: str, nodes: int, settings: dict[str, tuple[object, str]]
) -> tuple[str | None, int]:
    """Check --gpu and --nodes against trainer.devices and trainer.num_nodes.

    Returns the GPU request for Modal ("H100:2"), or None to keep the function's own (the
    fallback list for one GPU, CLUSTER_GPU:8 for a cluster), and the number of nodes.
    `gpu` is an already checked --gpu value or "".
    """
    devices, devices_where = settings.get("devices", ("auto", "the default"))
    per_container = gpus_per_container(devices, devices_where)
    config_nodes, nodes_where = settings.get("num_nodes", (1, "the default"))
    if isinstance(config_nodes, bool) or not isinstance(config_nodes, int) or config_nodes < 1:
        raise ValueError(
            f"trainer.num_nodes={config_nodes!r} ({nodes_where}): use a whole number >= 1, "
            "or leave it out and pass --nodes."
        )
    if nodes < 0:
        raise ValueError(f"--nodes {nodes}: use 1 or more (0 takes trainer.num_nodes).")
    if nodes and "num_nodes" in settings and nodes != config_nodes:
        raise ValueError(
            f"--nodes {nodes} contradicts trainer.num_nodes={config_nodes} ({nodes_where}). "
            f"Pass only one of them, or make them agree."
        )
    nodes = nodes or config_nodes
    gpu_type, _, count = gpu.partition(":")
    gpu_count = int(count or 1)

    if nodes > 1:
        if nodes > MAX_CLUSTER_NODES:
            raise ValueError(
                f"--nodes {nodes}: a Modal cluster holds at most {MAX_CLUSTER_NODES} nodes "
                "(ask Modal for more). Use fewer nodes."
            )
        if nodes != CLUSTER_NODES:
            raise ValueError(
                f"--nodes {nodes}: Modal fixes a cluster's size when the app is defined, from "
                f"CLUSTER_NODES (here {CLUSTER_NODES or 'unset'}). Run "
                f"CLUSTER_NODES={nodes} modal run modal_app.py ... --nodes {nodes}."
            )
        if gpu and gpu_count != GPUS_PER_NODE:
            raise ValueError(
                f"--gpu {gpu!r} with --nodes {nodes}: every container of a Modal cluster takes "
                f"all {GPUS_PER_NODE} GPUs of its host. Use --gpu {gpu_type}:{GPUS_PER_NODE}."
            )
        if per_container not in (None, GPUS_PER_NODE):
            raise ValueError(
                f"trainer.devices={devices!r} ({devices_where}) with --nodes {nodes}: each "
                f"node has {GPUS_PER_NODE} GPUs and all of them train. Use "
                f'--overrides "--trainer.devices={GPUS_PER_NODE}" (or auto).'
            )
        return gpu or None, nodes

    if gpu:
        if per_container is not None and per_container != gpu_count:
            raise ValueError(
                f"--gpu {gpu!r} gives the container {gpu_count} GPU(s), but trainer.devices="
                f"{devices!r} ({devices_where}) trains on {per_container}. Use --gpu "
                f'{gpu_type}:{per_container}, or --overrides "--trainer.devices={gpu_count}".'
            )
        return gpu, 1
    if per_container is None or per_container == 1:
        return None, 1
    limit = MAX_GPUS_PER_CONTAINER.get(GPUS[0], GPUS_PER_NODE)
    if per_container > limit:
        raise ValueError(
            f"trainer.devices={devices!r} ({devices_where}): a {GPUS[0]} container has at "
            f"most {limit} GPUs. Use fewer devices, or several nodes with --nodes."
        )
    # with_options takes one GPU type, so a several-GPU request has no fallbacks.
    return f"{GPUS[0]}:{per_container}", 1


def validate_request(
    config: str,
    run_id: str = "",
    overrides: str = "",
    gpu: str = "",
    timeout_hours: float = 0,
    nodes: int = 0,
) -> Request:
    """Check every user input; raise ValueError naming the value and the fix."""
    configs_dir = HERE / "configs"
    path = Path(config)
    path = (path if path.is_absolute() else Path.cwd() / path).resolve()
    available = ", ".join(f"configs/{p.name}" for p in sorted(configs_dir.glob("*.yaml")))
    if not path.is_file():
        raise ValueError(f"--config {config!r}: no such file. Use one of: {available}.")
    if not path.is_relative_to(configs_dir):
        raise ValueError(
            f"--config {config!r} is outside {configs_dir}; only that folder is shipped to "
            "Modal. Copy the file into configs/ and pass configs/<name>.yaml."
        )

    # The CLI's own rule, checked here so a bad id fails before a GPU starts.
    if run_id and not import_module(f"{PACKAGE}.runs").RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"--run-id {run_id!r}: use only letters, digits, '.', '_' and '-', starting with a "
            "letter or digit, at most 128 (no '/' or spaces), e.g. --run-id lm-small-1."
        )

    try:
        extra = shlex.split(overrides)
    except ValueError as err:
        raise ValueError(f"--overrides {overrides!r}: {err}. Quote values with spaces.") from None
    for arg in extra:
        if not arg.startswith("--"):
            raise ValueError(
                f"--overrides: {arg!r} is not an option. Write each override as "
                '--key=value, e.g. --overrides "--trainer.max_steps=1000".'
            )
        if arg.split("=", 1)[0] in RESERVED_OVERRIDES:
            raise ValueError(
                f"--overrides: {arg!r} is set by modal_app.py (the Volumes hold every run). "
                "Use --run-id to name the run."
            )

    if gpu:
        gpu_type, _, count = gpu.partition(":")
        known = {name.upper(): name for name in GPU_MEMORY_GB}
        if gpu_type.upper() not in known:
            raise ValueError(
                f"--gpu {gpu!r}: Modal has no GPU type {gpu_type!r}. "
                f"Use one of {', '.join(GPU_MEMORY_GB)}, optionally with a count, e.g. H100:2."
            )
        limit = MAX_GPUS_PER_CONTAINER.get(known[gpu_type.upper()], GPUS_PER_NODE)
        if count and not (count.isdigit() and 1 <= int(count) <= limit):
            raise ValueError(
                f"--gpu {gpu!r}: the count must be a whole number from 1 to {limit} "
                f"for {known[gpu_type.upper()]}, e.g. {known[gpu_type.upper()]}:2."
            )
    config = path.relative_to(HERE).as_posix()
    gpu_request, nodes = validate_scale(gpu, nodes, trainer_settings(config, extra))

    hours = timeout_hours or TIMEOUT_HOURS
    if not 0 < hours <= MAX_TIMEOUT_HOURS:
        raise ValueError(
            f"--timeout-hours {timeout_hours}: Modal allows at most {MAX_TIMEOUT_HOURS} hours "
            "per attempt. Use a smaller value; a timed-out attempt is retried and resumes "
            "from last.ckpt."
        )

    return Request(
        config=config,
        overrides=extra,
        run_id=run_id,
        gpu=gpu_request,
        nodes=nodes,
        timeout_s=int(hours * 3600),
    )


# --- Training --------------------------------------------------------------------------------


def fit_command(config: str, overrides: list[str], run_id: str) -> list[str]:
    """The child process: the local `python -m <pkg> fit` command, rooted in the Volumes."""
    command = [sys.executable, "-m", PACKAGE, "fit", "--config", str(HERE / config)]
    if run_id:
        command.append(f"--run.id={run_id}")
    return [*command, f"--run.root={MOUNTS.runs}", f"--run.log_root={MOUNTS.logs}", *overrides]


def commit_run_volumes() -> None:
    """Persist checkpoints and logs so the next attempt (and TensorBoard) sees them."""
    runs_volume.commit()
    logs_volume.commit()


class CheckpointWatcher(threading.Thread):
    """Calls `commit` once a changed `last.ckpt` under `root` has stopped changing."""

    def __init__(self, root: Path, commit: Callable[[], None], poll_s: float = 10.0):
        super().__init__(daemon=True)
        self.root, self.commit, self.poll_s = root, commit, poll_s
        self.stopped = threading.Event()
        self.committed = self.snapshot()

    def snapshot(self) -> dict[Path, tuple[float, int]]:
        found = {}
        for path in self.root.glob("*/checkpoints/last.ckpt"):
            try:
                stat = path.stat()
            except FileNotFoundError:  # replaced between glob and stat
                continue
            found[path] = (stat.st_mtime, stat.st_size)
        return found

    def run(self) -> None:
        previous = self.committed
        while not self.stopped.wait(self.poll_s):
            current = self.snapshot()
            # Same as one poll ago (so not mid-write) but not yet committed.
            if current == previous and current != self.committed:
                self.commit()
                self.committed = current
            previous = current


def package_env() -> dict[str, str]:
    """This process's environment, with PYTHONPATH set so a child imports the same package."""
    package_dir = find_spec(PACKAGE).submodule_search_locations[0]
    paths = [str(Path(package_dir).resolve().parent), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def run_training(
    config: str,
    overrides: list[str],
    run_id: str,
    kernels: str,
    commit: Callable[[], None] = commit_run_volumes,
    poll_s: float = 10.0,
    env: dict[str, str] | None = None,
) -> int:
    """Kernel check, then `fit` in a child process; returns the child's exit code.

    `env` adds environment variables for the child (and the processes Lightning starts
    from it), such as the rendezvous of a cluster.
    """
    report = import_module(f"{PACKAGE}.kernels").check_kernels(kernels)
    if report:
        print("fast paths:", ", ".join(f"{k}={'on' if v else 'OFF'}" for k, v in report.items()))

    for mount in (MOUNTS.data, MOUNTS.runs, MOUNTS.logs):
        mount.mkdir(parents=True, exist_ok=True)
    command = fit_command(config, overrides, run_id)
    print("running:", shlex.join(command), flush=True)
    child_env = {**package_env(), **(env or {})}

    watcher = CheckpointWatcher(MOUNTS.runs, commit, poll_s=poll_s)
    watcher.start()
    child = subprocess.Popen(command, cwd=HERE, env=child_env)

    # Lets Lightning save a checkpoint before the container stops. Only the child gets the
    # signal; under DDP its ranks agree to stop after the same step.
    def forward(signum, _frame):
        child.send_signal(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        watcher.stopped.set()
        watcher.join()
        commit()


@app.function(gpu=GPUS, timeout=TIMEOUT_HOURS * 3600, retries=RETRIES, volumes=VOLUMES)
def train(config: str, overrides: list[str], run_id: str = "", kernels: str = "require") -> None:
    """One attempt of a training run. Modal retries a failed attempt; the retry resumes."""
    code = run_training(config, overrides, run_id, kernels)
    if code != 0:
        raise RuntimeError(f"`{PACKAGE} fit` exited with code {code}; see the log above.")


# --- Training on several nodes ---------------------------------------------------------------


def rendezvous_env(node_rank: int, node_addresses: list[str], port: int = RENDEZVOUS_PORT):
    """The environment Lightning reads to make one job of the processes on every node.

    Lightning's default cluster environment takes the main node's address and port from
    MASTER_ADDR and MASTER_PORT and this node's index from NODE_RANK; the world size is
    num_nodes x devices, from the Trainer's arguments. LOCAL_RANK stays unset: it would tell
    Lightning that something else started every process, and it would start none per GPU.
    """
    if not 0 <= node_rank < len(node_addresses):
        raise ValueError(f"node rank {node_rank} is not one of the {len(node_addresses)} nodes")
    return {
        "MASTER_ADDR": node_addresses[0],  # node 0 hosts global rank 0 and the rendezvous
        "MASTER_PORT": str(port),
        "NODE_RANK": str(node_rank),
    }


def run_cluster_node(
    config: str,
    overrides: list[str],
    run_id: str,
    kernels: str,
    node_rank: int,
    node_addresses: list[str],
    port: int = RENDEZVOUS_PORT,
) -> int:
    """One node's share of a cluster run: the same child as `train`, joined to the others."""
    nodes = [f"--trainer.num_nodes={len(node_addresses)}"]
    # Lightning writes checkpoints and logs from global rank 0 only, which runs on node 0, so
    # the other nodes have nothing to commit (and resume from what node 0 committed).
    commit = commit_run_volumes if node_rank == 0 else lambda: None
    env = rendezvous_env(node_rank, node_addresses, port)
    return run_training(config, [*overrides, *nodes], run_id, kernels, commit=commit, env=env)


if CLUSTER_NODES:
    # `env` repeats CLUSTER_NODES in the containers, which import this file again and must
    # find the function there too.
    @app.function(
        gpu=f"{CLUSTER_GPU}:{GPUS_PER_NODE}",
        timeout=TIMEOUT_HOURS * 3600,
        retries=RETRIES,
        volumes=VOLUMES,
        env={"CLUSTER_NODES": str(CLUSTER_NODES)},
    )
    @modal.clustered(size=CLUSTER_NODES, rdma=True)
    def train_cluster(
        config: str, overrides: list[str], run_id: str = "", kernels: str = "require"
    ) -> None:
        """One attempt on CLUSTER_NODES containers; Modal runs it in each, with the same inputs."""
        cluster = modal.experimental.get_cluster_info()
        code = run_cluster_node(
            config, overrides, run_id, kernels, cluster.rank, cluster.container_ips
        )
        if code != 0:
            raise RuntimeError(
                f"`{PACKAGE} fit` on node {cluster.rank} exited with code {code}; "
                "see the log above."
            )


@app.local_entrypoint()
def main(
    config: str,
    run_id: str = "",
    overrides: str = "",
    gpu: str = "",
    nodes: int = 0,
    timeout_hours: float = TIMEOUT_HOURS,
    kernels: Literal["require", "warn", "off"] = "require",
) -> None:
    """Train on Modal with a LightningCLI config from configs/.

    --overrides takes LightningCLI arguments in one string, e.g. "--trainer.max_steps=1000".
    --run-id names the run (default: derived from the config); rerunning it resumes.
    --gpu takes one type with an optional count, e.g. H100:2, instead of the fallback list;
    without it the count is the config's trainer.devices.
    --nodes trains on a cluster of that many containers with 8 GPUs each (default: the
    config's trainer.num_nodes, 1); set CLUSTER_NODES to the same number.
    """
    request = validate_request(config, run_id, overrides, gpu, timeout_hours, nodes)
    fn = train_cluster if request.nodes > 1 else train
    options = {}
    if request.gpu:
        options["gpu"] = request.gpu
    if request.timeout_s != TIMEOUT_HOURS * 3600:
        options["timeout"] = request.timeout_s
    if options:
        fn = fn.with_options(**options)
    if request.nodes > 1:
        where = f"{request.nodes} nodes of {request.gpu or f'{CLUSTER_GPU}:{GPUS_PER_NODE}'}"
    else:
        where = request.gpu or " or ".join(GPUS)
    print(f"training {request.config} on {where}")
    fn.remote(request.config, request.overrides, request.run_id, kernels)


# --- GPU proof ------------------------------------------------------------------------------


def gpu_check_command(sections: str, out: Path) -> list[str]:
    script = HERE / "benchmarks" / "gpu_check.py"
    return [sys.executable, str(script), "--sections", sections, "--out", str(out)]


@app.function(gpu=GPUS, timeout=3600)
def gpu_check(sections: str = "kernels,parity,throughput,profile") -> str:
    """benchmarks/gpu_check.py on a Modal GPU: prints its tables, returns its JSON report.

    Run it with `modal run modal_app.py::gpu_check --sections kernels,parity`.
    """
    out = Path("/tmp/gpu_check.json")
    subprocess.run(gpu_check_command(sections, out), check=True, cwd=HERE, env=package_env())
    return out.read_text(encoding="utf-8")


# --- Data and TensorBoard --------------------------------------------------------------------


@app.function(volumes={str(MOUNTS.data): data_volume}, timeout=3600)
def prepare_text(path: str) -> None:
    """Build the TextFile byte cache inside the data Volume, on CPU, before any GPU run.

    Upload first with Modal's CLI, then prepare:
        modal volume put {{ cookiecutter.project_slug }}-data corpus.txt corpus.txt
        modal run modal_app.py::prepare_text --path /vol/data/corpus.txt
    and train with --overrides "--data.init_args.path=/vol/data/corpus.txt".
    """
    if not Path(path).is_relative_to(MOUNTS.data):
        raise ValueError(f"--path {path!r} is outside the data Volume; use {MOUNTS.data}/<name>.")
    import_module(f"{PACKAGE}.data").TextFile(path=path).prepare_data()
    data_volume.commit()


def tensorboard_app(logdir: Path):
    """TensorBoard's own WSGI app, reading event files under `logdir`."""
    from tensorboard import program
    from tensorboard.backend import application

    board = program.TensorBoard()
    board.configure(logdir=str(logdir), reload_interval=30)
    data_provider, multiplexer = board._make_data_provider()
    return application.TensorBoardWSGIApp(
        board.flags, board.plugin_loaders, data_provider, board.assets_zip_provider, multiplexer
    )


@app.function(volumes={str(MOUNTS.logs): logs_volume}, scaledown_window=300)
@modal.concurrent(max_inputs=100)
@modal.wsgi_app()
def tensorboard():
    """TensorBoard over the logs Volume, at the URL `modal serve`/`modal deploy` prints."""
    return tensorboard_app(MOUNTS.logs)
