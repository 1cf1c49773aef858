"""Where it runs: the same LightningCLI training, on Modal GPUs.

    modal run --detach modal_app.py --config configs/<name>.yaml
    modal run --detach modal_app.py --config configs/<name>.yaml --overrides "--trainer.max_steps=9"
    modal run --detach modal_app.py --config configs/<name>.yaml --gpu H100:2
    CLUSTER_NODES=2 modal run --detach modal_app.py --config configs/<name>.yaml --nodes 2
{%- if cookiecutter.task == 'language_model' %}
    modal run modal_app.py::prepare_text --path /vol/data/corpus.txt
{%- endif %}
    modal deploy modal_app.py                          # keeps the TensorBoard endpoint up

The file reads top to bottom: the image, the Volumes, the training functions, the entrypoint,
then the helpers ({% if cookiecutter.task == 'language_model' %}GPU check, data preparation{% else %}extrapolation{% endif %}, TensorBoard).

What happens where:
- On your machine, `main` checks every input with `{{ cookiecutter.package_name }}.machinery.launch` (config path,
  run id, GPUs, nodes, timeout) before any GPU time is spent, without importing torch or
  Lightning.
  Then it spawns `train` (one container) or `train_cluster` (several) and waits for the call.
  A spawned call outlives the 24 hours of a `.remote()` call, and with `--detach` it runs on
  when your terminal closes; every retried attempt resumes from last.ckpt.
- In the container, `train` reports which fast kernels are active (and with `--kernels require`
  stops if one is missing), then runs `python -m {{ cookiecutter.package_name }} fit ...` as a child process,
  with the Volumes' paths as the run root. Lightning re-launches that command once per further
  GPU (DDP), which is why training is a child process rather than a function call. Whenever a
  `last.ckpt` changes, the Volumes are committed, so a retried or preempted attempt resumes
  from it: the CLI resumes by itself when `<run root>/<run id>/checkpoints/last.ckpt` exists.
- `train_cluster` runs the same child in every container of a Modal cluster, with the
  environment variables Lightning reads to join the nodes into one job.

docs/modal.md explains the GPU choice, several GPUs and nodes, `--detach`, the image, the
Hugging Face cache and resuming.
"""

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec, module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Literal

import modal
import modal.experimental

try:
    from {{ cookiecutter.package_name }}.machinery import launch
{%- if cookiecutter.task == 'language_model' %}
    from {{ cookiecutter.package_name }}.machinery.runid import checkpoint_path, pretrained_folder
{%- else %}
    from {{ cookiecutter.package_name }}.machinery.runid import checkpoint_path
{%- endif %}
except ModuleNotFoundError as err:  # on your machine: the package or PyYAML is not installed
    print(
        f"error: {err}. modal_app.py checks its inputs with {{ cookiecutter.package_name }}.machinery.launch: run "
        "`pip install pyyaml && pip install --no-deps -e .` in the project folder.",
        file=sys.stderr,
    )
    raise SystemExit(2) from None

PACKAGE = "{{ cookiecutter.package_name }}"
APP_NAME = "{{ cookiecutter.project_slug }}"

# Locally this is the project folder; in the container Modal imports this file as
# /root/modal_app.py, and the image below puts everything it needs next to it in /root.
HERE = Path(__file__).resolve().parent
STACK_FILE = HERE / "gpu_stack.toml"
INSTALL_SCRIPT = HERE / "scripts" / "install_gpu.py"

# The generated GPU type, then the two closest with at least as much memory: Modal takes the
# first that has capacity.
GPUS = launch.gpu_fallbacks("{{ cookiecutter.modal_gpu }}")
GPUS_PER_NODE = launch.GPUS_PER_NODE
CLUSTER_GPU = GPUS[0] if GPUS[0] in {"H100", "H200", "B200"} else "H100"
RENDEZVOUS_PORT = 29500  # torch.distributed's usual port for the main node

# A Modal cluster's size is fixed when the app is defined, which is before `main` sees its
# arguments, so it comes from the environment of `modal run`:
#     CLUSTER_NODES=4 modal run modal_app.py --config ... --nodes 4
# Without CLUSTER_NODES the app has no cluster function at all, so runs on one container never
# depend on the workspace's access to clusters.
CLUSTER_NODES = launch.cluster_size(os.environ.get("CLUSTER_NODES"))

# One attempt lasts at most TIMEOUT_HOURS; a failed or timed-out attempt is retried and
# resumes from last.ckpt, so a run may take up to 5 x 12 hours.
TIMEOUT_HOURS = launch.TIMEOUT_HOURS
RETRIES = modal.Retries(max_retries=4, backoff_coefficient=1.0, initial_delay=10.0)


@dataclass(frozen=True)
class Mounts:
    """Where the Volumes appear inside a container."""

    data: Path = Path("/vol/data")  # datasets: `modal volume put` uploads here
    runs: Path = Path("/vol/runs")  # --run.root: checkpoints and the saved config of each run
    logs: Path = Path("/vol/logs")  # --run.log_root: TensorBoard event files
    hf: Path = Path("/vol/hf")  # HF_HOME: the Hugging Face hub cache (pretrained weights)
    # TRITON_CACHE_DIR, in the same Volume: Triton's compiled kernels and autotuning results.
    # mamba-ssm autotunes each Triton kernel over up to 54 configs per shape; Mamba3's compile
    # for minutes on a fresh container, so every later container reads them from here.
    triton: Path = Path("/vol/hf/triton")


MOUNTS = Mounts()

# --- The image: one layer per step of gpu_stack.toml, local files last ------------------------


def load_install_script():
    """scripts/install_gpu.py as a module: it turns gpu_stack.toml into shell commands."""
    spec = spec_from_file_location("install_gpu", INSTALL_SCRIPT)
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def not_source(path: Path) -> bool:
    """Files to leave behind: caches, bytecode, hidden files and folders."""
    return path.suffix == ".pyc" or any(p.startswith(".") or p == "__pycache__" for p in path.parts)


stack = tomllib.loads(STACK_FILE.read_text(encoding="utf-8"))
python_tag = "cp" + stack["image"]["python"].replace(".", "")
steps = load_install_script().stack_commands(stack, "python", python_tag, "linux_x86_64")

image = modal.Image.from_registry(stack["image"]["base"], add_python=stack["image"]["python"])
for _name, command in steps:
    image = image.run_commands(command)
image = (
    image.env(
        {
            "PYTHONUNBUFFERED": "1",
            "HF_HOME": str(MOUNTS.hf),
            "TRITON_CACHE_DIR": str(MOUNTS.triton),
            "TRITON_CACHE_AUTOTUNING": "1",  # keep the chosen configs too, not only the binaries
        }
    )
    # Local files go last: they are attached when a container starts instead of being baked
    # into a layer, and Modal refuses any build step after them.
    .add_local_dir(HERE / "src" / PACKAGE, f"/root/{PACKAGE}", ignore=not_source)
    .add_local_dir(HERE / "configs", "/root/configs", ignore=not_source)
    .add_local_file(STACK_FILE, "/root/gpu_stack.toml")
    .add_local_file(INSTALL_SCRIPT, "/root/scripts/install_gpu.py")
    .add_local_dir(HERE / "benchmarks", "/root/benchmarks", ignore=not_source)
)

# --- Volumes ---------------------------------------------------------------------------------

data_volume = modal.Volume.from_name(f"{APP_NAME}-data", create_if_missing=True)
runs_volume = modal.Volume.from_name(f"{APP_NAME}-runs", create_if_missing=True)
logs_volume = modal.Volume.from_name(f"{APP_NAME}-logs", create_if_missing=True)
{% if cookiecutter.task == 'language_model' %}# Pretrained weights fetched by huggingface_hub (--model.net.init_from=<hub id>) land here once
# and every later container reads them from the cache instead of downloading them again.
{% else %}# HF_HOME, and Triton's compiled kernels (MOUNTS.triton): compiled once, read by every later
# container.
{% endif %}hf_volume = modal.Volume.from_name(f"{APP_NAME}-hf-cache", create_if_missing=True)
VOLUMES = {
    str(MOUNTS.data): data_volume,
    str(MOUNTS.runs): runs_volume,
    str(MOUNTS.logs): logs_volume,
    str(MOUNTS.hf): hf_volume,
}

app = modal.App(APP_NAME, image=image)

# --- Training --------------------------------------------------------------------------------


def fit_command(config: str, overrides: list[str], run_id: str) -> list[str]:
    """The child process: the local `python -m <pkg> fit` command, rooted in the Volumes."""
    command = [sys.executable, "-m", PACKAGE, "fit", "--config", str(HERE / config)]
    if run_id:
        command.append(f"--run.id={run_id}")
    return [*command, f"--run.root={MOUNTS.runs}", f"--run.log_root={MOUNTS.logs}", *overrides]


def commit_run_volumes() -> None:
    """Persist checkpoints, logs and downloaded weights for the next attempt (and TensorBoard)."""
    runs_volume.commit()
    logs_volume.commit()
    hf_volume.commit()


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
    report = import_module(f"{PACKAGE}.machinery.kernels").check_kernels(kernels)
    if report:
        print("fast paths:", ", ".join(f"{k}={'on' if v else 'OFF'}" for k, v in report.items()))

    for mount in (MOUNTS.data, MOUNTS.runs, MOUNTS.logs, MOUNTS.hf):
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


# --- The entrypoint: checks on your machine, then one spawned call ----------------------------


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
    Use `modal run --detach` for anything long: the run then survives a closed terminal.
    """
    try:
        request = launch.validate_request(
            config,
            run_id,
            overrides,
            gpu,
            timeout_hours,
            nodes,
            project=HERE,
            gpus=GPUS,
            cluster_nodes=CLUSTER_NODES,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None

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

    # spawn, then wait: a spawned call and its retries may run for days, while a .remote()
    # call expires after 24 hours and would lose a longer run's caller.
    call = fn.spawn(request.config, request.overrides, request.run_id, kernels)
    print(f"training {request.config} on {where}: function call {call.object_id}", flush=True)
    call.get()
{%- if cookiecutter.task == 'language_model' %}


# --- Training speed -------------------------------------------------------------------------


def throughput_command(mixers: str, quick: bool, out: Path) -> list[str]:
    script = HERE / "benchmarks" / "throughput.py"
    command = [sys.executable, str(script), "--mixers", mixers, "--out", str(out)]
    return [*command, "--quick"] if quick else command


@app.function(gpu=GPUS, timeout=3600)
def throughput(mixers: str = "{{ cookiecutter.mamba_version }}", quick: bool = False) -> str:
    """benchmarks/throughput.py on a Modal GPU: prints its tables, returns its JSON report.

    Run it with `modal run modal_app.py::throughput --mixers Mamba2,Mamba1 --quick`.
    """
    out = Path("/tmp/throughput.json")
    subprocess.run(throughput_command(mixers, quick, out), check=True, cwd=HERE, env=package_env())
    return out.read_text(encoding="utf-8")
{%- else %}


# --- Other sequence lengths -----------------------------------------------------------------
{%- endif %}


def extrapolate_command(run_id: str, lengths: str, checkpoint: str) -> list[str]:
    """`python -m <pkg> extrapolate` on one checkpoint of a run in the runs Volume."""
    ckpt = checkpoint_path(MOUNTS.runs, run_id, checkpoint)
    command = [sys.executable, "-m", PACKAGE, "extrapolate"]
    return [*command, f"--ckpt_path={ckpt}", f"--lengths={lengths}"]


@app.function(gpu=GPUS, timeout=3600, volumes={str(MOUNTS.runs): runs_volume})
def extrapolate(run_id: str, lengths: str = "2^6..2^20", checkpoint: str = "last") -> None:
    """A run's checkpoint evaluated at other sequence lengths, with the fused kernels.

    Run it with `modal run modal_app.py::extrapolate --run-id <id> --lengths 2^6..2^20`.
    """
    command = extrapolate_command(run_id, lengths, checkpoint)
    code = subprocess.run(command, cwd=HERE, env=package_env()).returncode
    if code != 0:
        raise SystemExit(code)  # the command printed its one-line reason
{%- if cookiecutter.task == 'language_model' %}


def evaluate_command(
    tasks: str, run_id: str, checkpoint: str, pretrained: str, tokenizer: str, limit: str
) -> list[str]:
    """`python -m <pkg> evaluate` on a run's checkpoint in the runs Volume (results into
    runs/<id>/eval) or on published weights (results into runs/eval/<name>). The Hugging Face
    caches (weights, tokenizer, task data) live on the HF Volume through HF_HOME."""
    if bool(run_id) == bool(pretrained):
        raise ValueError("give one of --run-id (a run in the runs Volume) and --pretrained")
    command = [sys.executable, "-m", PACKAGE, "evaluate", f"--tasks={tasks}"]
    if run_id:
        command.append(f"--ckpt_path={checkpoint_path(MOUNTS.runs, run_id, checkpoint)}")
    else:
        out = MOUNTS.runs / "eval" / pretrained_folder(pretrained)
        command += [f"--pretrained={pretrained}", f"--out={out}"]
    command += [f"--tokenizer={tokenizer}"] if tokenizer else []
    return command + ([f"--limit={limit}"] if limit else [])


@app.function(
    gpu=GPUS, timeout=4 * 3600, volumes={str(MOUNTS.runs): runs_volume, str(MOUNTS.hf): hf_volume}
)
def evaluate(
    tasks: str,
    run_id: str = "",
    checkpoint: str = "best",
    pretrained: str = "",
    tokenizer: str = "",
    limit: str = "",
) -> None:
    """lm-evaluation-harness scores of a run's checkpoint, or of published weights.

    `modal run modal_app.py::evaluate --run-id <id> --tasks lambada_openai` writes lm-eval's
    results JSON into the run's folder in the runs Volume (runs/eval/<name> for --pretrained);
    weights, tokenizers and task data are fetched once into the Hugging Face cache Volume.
    """
    try:
        command = evaluate_command(tasks, run_id, checkpoint, pretrained, tokenizer, limit)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    code = subprocess.run(command, cwd=HERE, env=package_env()).returncode
    runs_volume.commit()
    hf_volume.commit()
    if code != 0:
        raise SystemExit(code)  # the command printed its one-line reason


def generate_command(
    run_id: str, pretrained: str, checkpoint: str, prompt: str, prompts_file: str, options: str
) -> list[str]:
    """`python -m <pkg> generate` on a run's checkpoint in the runs Volume, or published weights;
    what is not given is left to the command, which says in one line what it needs."""
    command = [sys.executable, "-m", PACKAGE, "generate"]
    if run_id:
        command.append(f"--ckpt_path={checkpoint_path(MOUNTS.runs, run_id, checkpoint)}")
    if pretrained:
        command.append(f"--pretrained={pretrained}")
    if prompt:
        command.append(f"--prompt={prompt}")
    if prompts_file:
        command.append(f"--prompts_file={prompts_file}")
    return [*command, *shlex.split(options)]


@app.function(
    gpu=GPUS,
    timeout=3600,
    volumes={
        str(MOUNTS.data): data_volume,
        str(MOUNTS.runs): runs_volume,
        str(MOUNTS.hf): hf_volume,
    },
)
def generate(
    run_id: str = "",
    pretrained: str = "",
    checkpoint: str = "last",
    prompt: str = "",
    prompts_file: str = "",
    options: str = "",
) -> None:
    """Text from a run's checkpoint or from published weights, decoded on a Modal GPU.

    `modal run modal_app.py::generate --run-id <id> --prompt "Mamba is"` streams one prompt;
    `--prompts-file /vol/data/prompts.txt` (uploaded with `modal volume put`) decodes a file in
    batches; `--pretrained state-spaces/mamba-130m --options "--tokenizer
    EleutherAI/gpt-neox-20b --max_new_tokens 200 --temperature 0.8"` passes the command's other
    arguments. Weights fetched for --pretrained stay in the Hugging Face cache Volume.
    """
    command = generate_command(run_id, pretrained, checkpoint, prompt, prompts_file, options)
    code = subprocess.run(command, cwd=HERE, env=package_env()).returncode
    hf_volume.commit()
    if code != 0:
        raise SystemExit(code)  # the command printed its one-line reason


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
{%- else %}


# --- TensorBoard ----------------------------------------------------------------------------
{%- endif %}


class ReloadingLogs:
    """WSGI middleware: shows TensorBoard the logs Volume as last committed.

    A container sees a Volume as it was when the container started. Before a request, and at
    most once per `every_s`, this reloads the Volume so a running job's new events appear. A
    reload fails while a file on the Volume is open (TensorBoard opens each event file only
    while it reads it); the page is then served from what is loaded and the next request
    tries again.
    """

    def __init__(self, app, volume, every_s: float = 30.0, clock=time.monotonic):
        self.app, self.volume, self.every_s, self.clock = app, volume, every_s, clock
        self.reloaded_at: float | None = None
        self.lock = threading.Lock()  # requests are served from several threads

    def __call__(self, environ, start_response):
        with self.lock:
            now = self.clock()
            if self.reloaded_at is None or now - self.reloaded_at >= self.every_s:
                self.reloaded_at = now
                try:
                    self.volume.reload()
                except Exception as err:  # an open file, a network blip: keep serving
                    print(f"logs Volume not reloaded ({err}); serving the loaded events")
        return self.app(environ, start_response)


def tensorboard_app(logdir: Path, volume=None, reload_interval: int = 15):
    """TensorBoard's own WSGI app, reading event files under `logdir`.

    It rereads the folder every `reload_interval` seconds. load_fast=false keeps the reading in
    this process, which opens an event file only while reading it (the separate data server
    holds them open, which would block every Volume reload). With `volume`, requests reload
    that Volume first (ReloadingLogs).
    """
    from tensorboard import program
    from tensorboard.backend import application
    from tensorboard.backend.event_processing.data_ingester import LocalDataIngester

    board = program.TensorBoard()
    board.configure(logdir=str(logdir), reload_interval=reload_interval, load_fast="false")
    ingester = LocalDataIngester(board.flags)  # reads the event files in this process
    ingester.start()  # and rereads them every reload_interval seconds
    wsgi = application.TensorBoardWSGIApp(
        board.flags,
        board.plugin_loaders,
        ingester.data_provider,
        board.assets_zip_provider,
        ingester.deprecated_multiplexer,
    )
    return wsgi if volume is None else ReloadingLogs(wsgi, volume)


@app.function(volumes={str(MOUNTS.logs): logs_volume}, scaledown_window=300)
@modal.concurrent(max_inputs=100)
@modal.wsgi_app()
def tensorboard():
    """TensorBoard over the logs Volume, at the URL `modal serve`/`modal deploy` prints.

    A running job's curves appear within about a minute: the job commits the Volume at each
    checkpoint, a request reloads it (at most every 30 s), TensorBoard rereads every 15 s.
    """
    return tensorboard_app(MOUNTS.logs, logs_volume)
