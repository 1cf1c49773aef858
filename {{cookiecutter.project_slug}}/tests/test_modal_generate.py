"""modal_app.py::generate, proven offline as tests/test_modal_app.py proves the rest: the function
runs locally (Function.local) with temporary folders standing in for the Volumes.
"""

import importlib
import sys

import pytest
import torch
from conftest import PROJECT

from {{ cookiecutter.package_name }}.backbone import BackboneConfig
from {{ cookiecutter.package_name }}.model import MambaLM

pytest.importorskip("modal", reason="modal_app.py needs Modal: pip install modal")
if str(PROJECT) not in sys.path:  # modal_app.py sits at the project root, next to src/
    sys.path.insert(0, str(PROJECT))
modal_app = importlib.import_module("modal_app")

pytestmark = pytest.mark.filterwarnings("ignore:The generate function is executing locally")


class FakeVolume:
    """Stands in for a modal.Volume: counts commits."""

    def __init__(self):
        self.commits = 0

    def commit(self):
        self.commits += 1


@pytest.fixture
def mounts(tmp_path, monkeypatch):
    mounts = modal_app.Mounts(*(tmp_path / name for name in ("data", "runs", "logs", "hf")))
    monkeypatch.setattr(modal_app, "MOUNTS", mounts)
    monkeypatch.setattr(modal_app, "hf_volume", FakeVolume())
    torch.manual_seed(0)
    config = BackboneConfig(impl="reference", d_model=16, n_layer=1, d_state=8, headdim=8)
    MambaLM(config, vocab_size=256).save_pretrained(mounts.hf / "tiny")
    mounts.data.mkdir()
    return mounts


OPTIONS = "--tokenizer bytes --impl reference --max_new_tokens 5"


def test_generate_streams_a_prompt_and_decodes_a_prompts_file_of_the_data_volume(mounts, capfd):
    tiny = str(mounts.hf / "tiny")
    modal_app.generate.local(pretrained=tiny, prompt="the cat", options=OPTIONS)
    printed = capfd.readouterr()
    assert printed.out.startswith("the cat") and printed.out.endswith("\n")
    assert "generated 5 tokens for 1 prompt(s)" in printed.err
    (mounts.data / "prompts.txt").write_text("a\nthe dog\nb\n")
    file = str(mounts.data / "prompts.txt")
    modal_app.generate.local(pretrained=tiny, prompts_file=file, options=OPTIONS)
    printed = capfd.readouterr()
    assert len(printed.out.split("\n\n")) >= 3 and printed.out.startswith("a")
    assert "generated 15 tokens for 3 prompt(s)" in printed.err
    assert modal_app.hf_volume.commits == 2  # weights fetched for --pretrained are kept


def test_generate_reads_a_run_of_the_runs_volume_and_stops_with_the_commands_one_line(
    mounts, capfd
):
    command = modal_app.generate_command("lm", "", "best", "a b", "", "--max_new_tokens 3")
    ckpt = mounts.runs / "lm" / "checkpoints" / "best.ckpt"
    assert command[3:-1] == ["generate", f"--ckpt_path={ckpt}", "--prompt=a b", "--max_new_tokens"]
    assert command[-1] == "3"
    for kwargs, message in [
        ({"run_id": "no-such-run", "prompt": "a"}, "no such file"),
        ({"prompt": "a"}, "give one of --ckpt_path (a .ckpt written by fit) and --pretrained"),
        ({"pretrained": str(mounts.hf / "tiny")}, "give --prompt (repeat it for several"),
    ]:
        with pytest.raises(SystemExit) as stop:
            modal_app.generate.local(**kwargs)
        err = capfd.readouterr().err.strip()
        assert stop.value.code == 2 and len(err.splitlines()) == 1 and message in err, err
    gpus = [gpu for gpu, _ in modal_app.generate.info().gpus]
    assert gpus == [g.upper() for g in modal_app.GPUS]
