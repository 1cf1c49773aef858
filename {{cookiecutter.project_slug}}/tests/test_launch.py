"""What `modal run` checks on your machine before any GPU time: every refusal names the value
and the fix. Needs neither Modal nor torch: these are the checks of the laptop side.
"""

from pathlib import Path

import pytest
from conftest import PACKAGE, PROJECT

from {{ cookiecutter.package_name }}.machinery import launch

BAKED_GPU = "{{ cookiecutter.modal_gpu }}"
GPUS = launch.gpu_fallbacks(BAKED_GPU)


def any_config() -> str:
    return min((PROJECT / "configs").glob("*.yaml")).relative_to(PROJECT).as_posix()


def check(config: str, project: Path = PROJECT, cluster_nodes: int = 2, **kwargs):
    """validate_request as modal_app.main calls it, for an app defined with CLUSTER_NODES=2."""
    return launch.validate_request(
        config, **kwargs, project=project, gpus=GPUS, cluster_nodes=cluster_nodes
    )


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"config": "configs/missing.yaml"}, ["configs/missing.yaml"]),
        ({"config": "gpu_stack.toml"}, ["gpu_stack.toml"]),
        ({"run_id": "../escape"}, ["../escape"]),
        ({"run_id": "a b"}, ["a b"]),
        ({"run_id": "-dash-first"}, ["-dash-first"]),  # the CLI would refuse it in the container
        ({"gpu": "H1000"}, ["H1000"]),
        ({"gpu": "H100:9"}, ["H100:9"]),
        ({"timeout_hours": 25}, ["25"]),
        ({"timeout_hours": 0}, ["--timeout-hours 0"]),
        ({"overrides": "--run.root=/tmp"}, ["--run.root=/tmp"]),
        ({"overrides": "trainer.max_steps=5"}, ["trainer.max_steps=5"]),
        ({"overrides": "--model.name='unclosed"}, ["--overrides", "Quote values"]),
        # GPUs per container against trainer.devices
        (
            {"gpu": "H100:2", "overrides": "--trainer.devices=4"},
            ["H100:2", "trainer.devices=4", "--gpu H100:4", "--trainer.devices=2"],
        ),
        ({"gpu": "L4", "overrides": "--trainer.devices=2"}, ["'L4'", "devices=2", "L4:2"]),
        ({"overrides": "--trainer.devices=[0,1]"}, ["trainer.devices=[0, 1]", "TYPE:N"]),
        ({"overrides": "--trainer.devices=0"}, ["trainer.devices=0", "auto"]),
        ({"overrides": "--trainer.devices=9"}, ["trainer.devices=9", "at most", "--nodes"]),
        # nodes
        ({"nodes": -1}, ["--nodes -1"]),
        ({"overrides": "--trainer.num_nodes=0"}, ["trainer.num_nodes=0"]),
        ({"nodes": 64}, ["--nodes 64", "at most 32"]),
        ({"nodes": 4}, ["--nodes 4", "CLUSTER_NODES=4 modal run"]),
        ({"overrides": "--trainer.num_nodes=4"}, ["--nodes 4", "CLUSTER_NODES=4"]),
        (
            {"nodes": 2, "overrides": "--trainer.num_nodes=3"},
            ["--nodes 2", "trainer.num_nodes=3"],
        ),
        ({"nodes": 2, "gpu": "H100:4"}, ["H100:4", "--gpu H100:8"]),
        ({"nodes": 2, "overrides": "--trainer.devices=4"}, ["devices=4", "--trainer.devices=8"]),
    ],
)
def test_bad_inputs_are_rejected_before_any_gpu_time(kwargs, named, monkeypatch):
    monkeypatch.chdir(PROJECT)
    with pytest.raises(ValueError) as err:
        check(**{"config": any_config(), **kwargs})
    for part in named:
        assert part in str(err.value), part


def test_good_inputs_become_a_request(monkeypatch):
    monkeypatch.chdir(PROJECT / "configs")
    name = Path(any_config()).name
    request = check(
        name, run_id="exp-1", overrides="--trainer.max_steps=5", gpu="h100:2", timeout_hours=6
    )
    assert request.config == f"configs/{name}"
    assert request.overrides == ["--trainer.max_steps=5"]
    assert (request.run_id, request.gpu, request.timeout_s) == ("exp-1", "h100:2", 6 * 3600)
    assert request.nodes == 1
    assert check(f"../{any_config()}").timeout_s == launch.TIMEOUT_HOURS * 3600


def test_the_run_id_rule_is_the_one_the_cli_applies():
    runs = pytest.importorskip(f"{PACKAGE}.machinery.runs", reason="the CLI side needs torch")
    assert runs.is_run_id is launch.is_run_id  # one rule, in machinery/runid.py
    for bad in ("-dash-first", "a/b", "x" * 129):
        with pytest.raises(ValueError, match="use only letters"):
            runs.RunConfig(id=bad)
        with pytest.raises(ValueError, match="use only letters"):
            check(any_config(), run_id=bad)


def test_gpu_fallbacks_have_at_least_the_first_gpus_memory():
    memory = launch.GPU_MEMORY_GB
    for first in ["L4", "A10", "A100-40GB", "L40S", "A100-80GB", "H100", "H200"]:
        chosen = launch.gpu_fallbacks(first)
        assert chosen[0] == first and len(chosen) > 1
        assert all(memory[g] >= memory[first] for g in chosen)


# --- Several GPUs and nodes -------------------------------------------------------------------


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder whose configs/multi.yaml asks for 4 GPUs per node on 2 nodes."""
    (tmp_path / "configs").mkdir()
    config = tmp_path / "configs" / "multi.yaml"
    config.write_text("trainer:\n  devices: 4\n  num_nodes: 2\n  max_steps: 10\n")
    monkeypatch.chdir(tmp_path)
    return "configs/multi.yaml"


@pytest.mark.parametrize(
    ("kwargs", "gpu", "nodes"),
    [
        ({}, None, 1),  # the baked fallback list, one GPU
        ({"overrides": "--trainer.devices=auto"}, None, 1),
        ({"overrides": "--trainer.devices=-1", "gpu": "H100:4"}, "H100:4", 1),
        ({"overrides": "--trainer.devices=4", "gpu": "H100:4"}, "H100:4", 1),
        ({"overrides": "--trainer.devices=1 --trainer.devices=4"}, f"{BAKED_GPU}:4", 1),
        ({"nodes": 2}, None, 2),  # train_cluster's own CLUSTER_GPU:8
        ({"overrides": "--trainer.num_nodes=2 --trainer.devices=8"}, None, 2),
        ({"nodes": 2, "gpu": "H200:8"}, "H200:8", 2),
    ],
)
def test_gpu_count_and_nodes_follow_the_config_unless_gpu_names_them(
    kwargs, gpu, nodes, monkeypatch
):
    monkeypatch.chdir(PROJECT)
    request = check(any_config(), **kwargs)
    assert (request.gpu, request.nodes) == (gpu, nodes)


def test_devices_and_num_nodes_are_read_from_the_yaml_and_overrides_win(project, tmp_path):
    with pytest.raises(ValueError) as err:
        check(project, tmp_path)
    assert "trainer.devices=4 (in configs/multi.yaml)" in str(err.value)
    assert "--trainer.devices=8" in str(err.value)

    request = check(project, tmp_path, overrides="--trainer.devices=auto")
    assert (request.gpu, request.nodes) == (None, 2)
    request = check(project, tmp_path, overrides="--trainer.num_nodes=1")
    assert (request.gpu, request.nodes) == (f"{BAKED_GPU}:4", 1)
    with pytest.raises(ValueError, match=r"--gpu 'H100:2'.*trainer.devices=4 \(in configs"):
        check(project, tmp_path, gpu="H100:2", overrides="--trainer.num_nodes=1")


def test_a_config_that_is_not_a_yaml_mapping_is_named(project, tmp_path):
    Path(project).write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match=f"--config {project}: not a YAML mapping"):
        check(project, tmp_path)


def test_nodes_without_cluster_nodes_names_the_variable(monkeypatch):
    monkeypatch.chdir(PROJECT)
    with pytest.raises(ValueError, match=r"CLUSTER_NODES \(here unset\).*CLUSTER_NODES=2 modal"):
        check(any_config(), cluster_nodes=0, nodes=2)


@pytest.mark.parametrize("value", ["1", "33", "four", "-2"])
def test_a_bad_cluster_size_is_rejected_with_the_fix(value):
    with pytest.raises(ValueError) as err:
        launch.cluster_size(value)
    assert f"CLUSTER_NODES={value!r}" in str(err.value)
    assert "CLUSTER_NODES=4 modal run" in str(err.value)
    assert launch.cluster_size(None) == 0 and launch.cluster_size("4") == 4
