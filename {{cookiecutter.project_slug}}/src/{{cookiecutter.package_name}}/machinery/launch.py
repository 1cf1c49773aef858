"""The inputs of a Modal run, checked on your machine before any GPU time is spent.

`modal run modal_app.py ...` calls `validate_request` first: a config outside configs/, a run
id the CLI would refuse, a GPU type Modal does not know, a GPU count or node count that
disagrees with the config, or a time limit over Modal's stops here with a message that names
the value and the fix, instead of minutes later in a container.

This module imports only the standard library and PyYAML, never torch or Lightning: it is what
the laptop side of `modal run` needs (docs/modal.md, "What your machine needs").
"""

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from .runid import RULE, is_run_id

# --- What Modal offers -----------------------------------------------------------------------

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
# GPU types Modal rents that this project cannot train on, and why: the template's
# _unsupported_gpus, so the bake's check of modal_gpu and this one say the same.
UNSUPPORTED_GPUS = {
{%- for gpu, why in cookiecutter._unsupported_gpus.items() %}
    {{ gpu | jsonify }}: {{ why | jsonify }},
{%- endfor %}
}
MAX_GPUS_PER_CONTAINER = {"A10": 4, "A10G": 4}  # 8 for every other type
FALLBACK_CANDIDATES = ["L4", "A10", "A100-40GB", "L40S", "A100-80GB", "H100", "H200", "B200"]
GPUS_PER_NODE = 8  # a cluster container takes every GPU of its host
MAX_CLUSTER_NODES = 32  # Modal's documented limit per cluster; larger ones on request
MAX_TIMEOUT_HOURS = 24  # Modal's limit for one attempt
TIMEOUT_HOURS = 12  # per attempt; a timed-out attempt is retried and resumes from last.ckpt

# Set by modal_app.py from the Volumes; overriding them would write outside the Volumes.
RESERVED_OVERRIDES = ("--run.root", "--run.log_root", "--run.id")


def gpu_fallbacks(first: str, extra: int = 2) -> list[str]:
    """`first`, then the `extra` closest GPU types with at least as much memory.

    Modal takes the first type in the list that has capacity, and a config that fits the first
    GPU's memory also fits the fallbacks.
    """
    need = GPU_MEMORY_GB[first]
    larger = [g for g in FALLBACK_CANDIDATES if g != first and GPU_MEMORY_GB[g] >= need]
    return [first, *sorted(larger, key=GPU_MEMORY_GB.__getitem__)[:extra]]


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


# --- One request -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """The validated inputs of one `modal run`."""

    config: str  # relative to the project folder, e.g. "configs/lm.yaml"
    overrides: list[str]
    run_id: str  # "" lets the CLI derive a stable id from the config
    gpu: str | None  # e.g. "H100:2"; None keeps the function's own request
    nodes: int  # 1: `train`; more: `train_cluster` with that many containers
    timeout_s: int


def validate_request(
    config: str,
    run_id: str = "",
    overrides: str = "",
    gpu: str = "",
    timeout_hours: float = TIMEOUT_HOURS,
    nodes: int = 0,
    *,
    project: Path,
    gpus: list[str],
    cluster_nodes: int,
) -> Request:
    """Check every user input; raise ValueError naming the value and the fix.

    `project` is the project folder (configs/ lives there), `gpus` the fallback list of
    `train`, `cluster_nodes` the size $CLUSTER_NODES gave the cluster function (0: none).
    """
    project = project.resolve()
    configs_dir = project / "configs"
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
    if run_id and not is_run_id(run_id):
        raise ValueError(f"--run-id {run_id!r}: use {RULE} (no '/' or spaces), e.g. lm-small-1.")

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
        if known[gpu_type.upper()] in UNSUPPORTED_GPUS:
            raise ValueError(
                f"--gpu {gpu!r} is not supported: {UNSUPPORTED_GPUS[known[gpu_type.upper()]]}. "
                f"Use one of {', '.join(FALLBACK_CANDIDATES)}, e.g. L4 or H100:2."
            )
        limit = MAX_GPUS_PER_CONTAINER.get(known[gpu_type.upper()], GPUS_PER_NODE)
        if count and not (count.isdigit() and 1 <= int(count) <= limit):
            raise ValueError(
                f"--gpu {gpu!r}: the count must be a whole number from 1 to {limit} "
                f"for {known[gpu_type.upper()]}, e.g. {known[gpu_type.upper()]}:2."
            )
    config = path.relative_to(project).as_posix()
    settings = trainer_settings(project, config, extra)
    gpu_request, nodes = validate_scale(gpu, nodes, settings, gpus, cluster_nodes)

    if not 0 < timeout_hours <= MAX_TIMEOUT_HOURS:
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
        timeout_s=int(timeout_hours * 3600),
    )


# --- GPUs and nodes against the config -------------------------------------------------------


def trainer_settings(
    project: Path, config: str, overrides: list[str]
) -> dict[str, tuple[object, str]]:
    """trainer.devices and trainer.num_nodes as the CLI will see them, with where each was set.

    `config` is relative to `project`. The YAML file first, then the overrides in order (the
    last one wins), each value parsed as YAML, as LightningCLI parses it. Keys that are set
    nowhere are left out.
    """
    try:
        text = (project / config).read_text(encoding="utf-8")
        trainer = (yaml.safe_load(text) or {})["trainer"]
    except KeyError:
        trainer = {}
    except (yaml.YAMLError, TypeError) as err:
        raise ValueError(
            f"--config {config}: not a YAML mapping ({err}). Fix the file; `python -m "
            f"{{ cookiecutter.package_name }} fit --config {config} --print_config` shows what the CLI reads."
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
    gpu: str,
    nodes: int,
    settings: dict[str, tuple[object, str]],
    gpus: list[str],
    cluster_nodes: int,
) -> tuple[str | None, int]:
    """Check --gpu and --nodes against trainer.devices and trainer.num_nodes.

    Returns the GPU request for Modal ("H100:2"), or None to keep the function's own (the
    fallback list `gpus` for one container, the cluster GPU x 8 for a cluster), and the number
    of nodes. `gpu` is an already checked --gpu value or "".
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
        if nodes != cluster_nodes:
            raise ValueError(
                f"--nodes {nodes}: Modal fixes a cluster's size when the app is defined, from "
                f"CLUSTER_NODES (here {cluster_nodes or 'unset'}). Run "
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
    limit = MAX_GPUS_PER_CONTAINER.get(gpus[0], GPUS_PER_NODE)
    if per_container > limit:
        raise ValueError(
            f"trainer.devices={devices!r} ({devices_where}): a {gpus[0]} container has at "
            f"most {limit} GPUs. Use fewer devices, or several nodes with --nodes."
        )
    # with_options takes one GPU type, so a several-GPU request has no fallbacks.
    return f"{gpus[0]}:{per_container}", 1
