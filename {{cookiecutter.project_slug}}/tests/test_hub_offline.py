"""The hub without a network: a hub id that cannot be reached fails at once, in one line, and
what is cached still loads; the local-rows recipe of configs/finetune_hub.yaml works as written."""

import json
import re

import pytest
import yaml
from conftest import PROJECT

from {{ cookiecutter.package_name }}.hub import PROXIES, hub_file, hub_unreachable


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """Online mode, with a hub endpoint that refuses connections and an empty cache."""
    from huggingface_hub import constants

    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read at import time
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: closed
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_unreachable.cache_clear()
    yield tmp_path / "hub"
    hub_unreachable.cache_clear()


def test_a_hub_id_that_cannot_be_reached_fails_without_retrying(unreachable_hub, caplog):
    with pytest.raises(FileNotFoundError) as failed:
        hub_file("state-spaces/mamba2-130m", "config.json")
    message = str(failed.value)
    assert "\n" not in message
    assert "config.json is not in the Hugging Face cache" in message
    assert "the hub cannot be reached (127.0.0.1:9: " in message
    assert "Retrying" not in caplog.text  # huggingface_hub's five retries, some 25 s


def test_a_cached_file_loads_while_the_hub_cannot_be_reached(unreachable_hub):
    repo = unreachable_hub / "models--state-spaces--mamba2-130m"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert hub_file("state-spaces/mamba2-130m", "config.json") == snapshot / "config.json"


def test_the_local_rows_recipe_of_finetune_hub_yaml_works_as_written(tmp_path, monkeypatch):
    pytest.importorskip("datasets")
    import datasets

    from {{ cookiecutter.package_name }}.data import HubText

    config = PROJECT / "configs" / "finetune_hub.yaml"
    if not config.exists():
        pytest.skip("finetune_hub.yaml is a language-model bake's config")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    [recipe] = [line for line in config.read_text().splitlines() if "local rows:" in line]
    given = re.findall(r"--data\.(\w+)=(\S+)", recipe.split("(parquet")[0])
    rows = dict(given)["data_files"]
    (tmp_path / rows).write_text(
        "".join(
            json.dumps({"text": f"row {i}: the cat sat on the mat.\n"}) + "\n" for i in range(60)
        )
    )
    settings = yaml.safe_load(config.read_text())["data"]["init_args"]
    settings |= {name: None if value == "null" else value for name, value in given}
    settings |= {"tokenizer": "bytes", "seq_len": 16, "num_proc": None}  # offline, small
    data = HubText(**settings)
    data.setup()
    assert len(data.dataset("train")) > 0 and len(data.dataset("val")) > 0
