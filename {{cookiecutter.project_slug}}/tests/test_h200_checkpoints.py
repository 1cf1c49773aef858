"""A last.ckpt written on a GPU with the fused kernels resumes on a CPU with the reference twin.

tests/fixtures/h200_<mixer>/ holds the last.ckpt and config.yaml of
`fit --config configs/default.yaml` (mixer <mixer>) run on an NVIDIA H200 with mamba-ssm's kernels
in bf16-mixed: the Mamba1 run ended at max_steps=20, the Mamba2 run was stopped by SIGTERM after
its first step. The same command here, with more steps, must continue exactly where the GPU
stopped: the same weights, optimizer moments, schedule position and next batch. The reverse (a
CPU checkpoint resuming on a GPU) is in tests/test_gpu.py.
"""

import copy
import itertools
from pathlib import Path

import pytest
import torch

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.module import LanguageModelling

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_an_h200_checkpoint_resumes_on_the_cpu_where_the_gpu_stopped(mixer, tmp_path, monkeypatch):
    folder = FIXTURES / f"h200_{mixer}"
    saved = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    step = saved["global_step"]
    start, batches = {}, []

    def on_train_start(self):  # the state the resumed run starts from
        start["weights"] = {k: v.detach().clone() for k, v in self.state_dict().items()}
        start["optimizer"] = copy.deepcopy(self.trainer.optimizers[0].state_dict())
        start["schedule"] = self.trainer.lr_scheduler_configs[0].scheduler.last_epoch

    training_step = LanguageModelling.training_step

    def recording_step(self, batch, batch_idx):
        batches.append(batch[0].clone())
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(LanguageModelling, "on_train_start", on_train_start, raising=False)
    monkeypatch.setattr(LanguageModelling, "training_step", recording_step)
    cli = main(
        [
            "fit",
            f"--config={folder / 'config.yaml'}",
            f"--ckpt_path={folder / 'last.ckpt'}",
            f"--trainer.max_steps={step + 3}",
            "--trainer.enable_progress_bar=false",
            f"--run.root={tmp_path}",
        ]
    )
    assert (
        cli.model.net.backbone.impl == "reference" and cli.model.net.backbone.config.mixer == mixer
    )
    assert start["weights"].keys() == saved["state_dict"].keys()
    for name, value in saved["state_dict"].items():
        assert torch.equal(start["weights"][name], value), name
    want = saved["optimizer_states"][0]["state"]
    got = start["optimizer"]["state"]
    assert got.keys() == want.keys()
    for index, moments in want.items():
        for key, value in moments.items():
            assert torch.equal(torch.as_tensor(got[index][key]), torch.as_tensor(value)), key
    assert start["schedule"] == step

    # the next batch is the one the GPU run would have trained on: batch `step` of epoch 0
    data = type(cli.datamodule)(
        **{k: v for k, v in saved["datamodule_hyper_parameters"].items() if k[0] != "_"}
    )
    data.setup("fit")
    expected = next(itertools.islice(data.train_dataloader(), step, None))[0]
    assert torch.equal(batches[0], expected)
    assert cli.trainer.global_step == step + 3 and len(batches) == 3
    resumed = tmp_path / "gpu-fixture" / "checkpoints" / "last.ckpt"
    resumed = torch.load(resumed, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == step + 3
