{% if cookiecutter.task == 'language_model' -%}
"""CUDA-graph replay (model.cuda_graphs): where it is refused, and that it changes nothing learned.

The refusals run everywhere. The equality tests need a CUDA GPU with mamba-ssm: they train the
same model from the same seed on the same batches with and without replay, in one process (so
Triton's autotuned kernel choices are shared), with mamba-ssm's deterministic reductions.
"""

import importlib.util

import lightning as L
import pytest
import torch
from conftest import TASK_MODEL, TINY_DATA
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from {{ cookiecutter.package_name }}.backbone import BackboneConfig
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.machinery.graphs import GraphedLoss, decide
from {{ cookiecutter.package_name }}.machinery.progress import GradientNorms
from {{ cookiecutter.package_name }}.model import MambaLM
from {{ cookiecutter.package_name }}.module import LanguageModelling
{%- else -%}
"""CUDA-graph replay (model.cuda_graphs): where it is refused, on every machine."""

import pytest
import torch
from conftest import TASK_MODEL, TINY_DATA

from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.machinery.graphs import decide
{%- endif %}

SAFE = {
    "device_type": "cuda",
    "world_size": 1,
    "accumulate_grad_batches": 1,
    "precision": "bf16-mixed",
    "impl": "fused",
}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"device_type": "cpu"}, "needs a CUDA device and this run is on cpu"),
        ({"world_size": 2}, "this run has 2 processes"),
        ({"accumulate_grad_batches": 4}, "trainer.accumulate_grad_batches=4"),
        ({"precision": "16-mixed"}, "precision=16-mixed"),
    ],
)
def test_on_is_refused_where_replay_cannot_work_and_auto_turns_it_off(change, reason):
    with pytest.raises(ValueError, match="model.cuda_graphs=on cannot be used: .*" + reason):
        decide("on", **{**SAFE, **change})
    replay, why = decide("auto", **{**SAFE, **change})
    assert not replay and reason in why


def test_auto_replays_only_the_fused_kernels_and_off_never_replays():
    assert decide("auto", **SAFE)[0]
    assert decide("on", **SAFE)[0]
    assert not decide("auto", **{**SAFE, "impl": "reference"})[0]
    assert decide("on", **{**SAFE, "impl": "reference"})[0]  # asked for: the twin replays too
    assert not decide("off", **SAFE)[0]


def test_cuda_graphs_on_without_a_gpu_stops_the_cli_with_one_line_and_writes_nothing(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = [
        "fit",
        TASK_MODEL,
        "--model.net.backbone.d_model=16",
        "--model.net.backbone.n_layer=1",
        "--model.net.backbone.d_state=4",
        "--model.net.backbone.headdim=8",
        "--model.net.backbone.impl=reference",
        "--model.cuda_graphs=on",
        *TINY_DATA,
        "--trainer.max_steps=2",
        f"--run.root={tmp_path}",
    ]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.cuda_graphs=on cannot be used: it needs a CUDA device")
    assert "Use model.cuda_graphs=auto" in err and len(err.splitlines()) == 1
    assert not any(tmp_path.rglob("*.ckpt")) and not any(tmp_path.rglob("events.out.*"))
{%- if cookiecutter.task == 'language_model' %}


# --------------------------------------------------------------------------- on a GPU


def on_gpu(test):
    marks = [
        pytest.mark.gpu,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        pytest.mark.skipif(
            importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm (the GPU stack)"
        ),
        pytest.mark.usefixtures("deterministic"),
    ]
    for mark in marks:
        test = mark(test)
    return test


VOCAB = 64


@pytest.fixture
def deterministic(monkeypatch):
    """mamba-ssm's SSD backward reduces in a fixed order; no TF32 in torch's own matmuls."""
    monkeypatch.setenv("MAMBA_DETERMINISTIC", "1")
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def batches(n: int, batch: int, length: int, ragged: bool = False) -> StatefulDataLoader:
    """n batches of random tokens; a StatefulDataLoader, so a resumed run continues mid-epoch."""
    g = torch.Generator().manual_seed(1)
    samples = n * batch - (batch // 2 if ragged else 0)  # ragged: the last batch is smaller
    ids = torch.randint(0, VOCAB, (samples, length + 1), generator=g)
    return StatefulDataLoader(TensorDataset(ids[:, :-1], ids[:, 1:]), batch_size=batch)


class _Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(outputs["loss"].item())


def train(
    mixer, mlp, graphs, loader, steps=50, precision="32-true", ckpt=None, callbacks=(), log_every=50
):
    torch.manual_seed(0)
    config = BackboneConfig(
        impl="fused",
        mixer=mixer,
        d_model=64,
        n_layer=2,
        d_state=16,
        headdim=16,
        chunk_size=32,
        d_intermediate=128 if mlp else 0,
    )
    net = MambaLM(config, vocab_size=VOCAB)
    model = LanguageModelling(net, warmup_steps=5, cuda_graphs="on" if graphs else "off")
    losses = _Losses()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        gradient_clip_val=1.0,
        log_every_n_steps=log_every,
        logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses, *callbacks],
    )
    trainer.fit(model, loader, ckpt_path=ckpt)
    assert isinstance(model.train_loss, GraphedLoss) == graphs
    weights = {k: v.detach().double().cpu() for k, v in model.state_dict().items()}
    return weights, losses.losses, model


def worst_relative(a: dict, b: dict) -> float:
    return max(((a[k] - b[k]).norm() / b[k].norm().clamp(min=1e-12)).item() for k in b)


@on_gpu
@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
@pytest.mark.parametrize("mlp", [False, True], ids=["no-mlp", "mlp"])
@pytest.mark.parametrize("shape", [(4, 64, False), (2, 96, True)], ids=["4x64", "2x96-ragged"])
def test_replayed_training_equals_eager_training_in_float32(mixer, mlp, shape):
    batch, length, ragged = shape
    loader = batches(25, batch, length, ragged)
    eager, eager_losses, _ = train(mixer, mlp, False, loader)
    again, _, _ = train(mixer, mlp, False, loader)
    replayed, replayed_losses, model = train(mixer, mlp, True, loader)
    assert len(model.train_loss.graphs) == (2 if ragged else 1)  # one capture per shape
    spread, error = worst_relative(again, eager), worst_relative(replayed, eager)
    # Mamba2's SSD backward still adds a few gradients with float32 atomics, in no fixed order:
    # two eager runs then differ by ~1e-6 after 50 steps. Replay may differ no more than that.
    bound = max(1e-6, 3 * spread)
    assert error <= bound, f"replayed vs eager {error:.2e}; eager vs eager {spread:.2e}"
    assert replayed_losses == pytest.approx(eager_losses, rel=bound)


@on_gpu
@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_replayed_training_follows_the_eager_loss_curve_in_bf16(mixer):
    loader = batches(25, 4, 64)
    _, eager, _ = train(mixer, True, False, loader, precision="bf16-mixed")
    _, replayed, _ = train(mixer, True, True, loader, precision="bf16-mixed")
    # bf16 rounds at 2**-8 relative; the two curves share every kernel and differ by far less
    assert replayed == pytest.approx(eager, rel=2e-3)
    assert eager[-1] < eager[0]


class _GradientTotals(L.Callback):
    """The total gradient norm each step, read where GradientNorms reads it."""

    def __init__(self):
        self.totals = []

    def on_before_optimizer_step(self, trainer, module, optimizer):
        norms = [p.grad.norm() for p in module.parameters() if p.grad is not None]
        self.totals.append(torch.linalg.vector_norm(torch.stack(norms)).item())


@on_gpu
@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_gradient_norms_under_replay_are_those_of_eager_training(mixer):
    """Under replay the backward runs inside a graph: the gradients GradientNorms reads before
    each optimizer step are that step's, as in eager training, and so is what it logs."""
    loader = batches(25, 4, 64)
    totals, logged = {}, {}
    for graphs in (False, True):
        seen = _GradientTotals()
        *_, model = train(
            mixer, False, graphs, loader, steps=8, callbacks=[GradientNorms(), seen], log_every=1
        )
        totals[graphs] = seen.totals
        logged[graphs] = float(model.trainer.callback_metrics["grad_2.0_norm_total"])
    assert len(totals[True]) == 8 and len(set(totals[True])) == 8  # a new gradient every step
    assert totals[True] == pytest.approx(totals[False], rel=1e-5)
    assert logged[True] == pytest.approx(totals[True][-1], rel=1e-5)
    assert logged[True] == pytest.approx(logged[False], rel=1e-5)


@on_gpu
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "replayed"])
@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_resume_mid_epoch_equals_an_uninterrupted_run(mixer, graphs, tmp_path):
    loader = batches(30, 4, 64)  # 30 steps an epoch: the step-20 checkpoint is mid-epoch
    every_20 = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=20, save_top_k=-1)
    whole, whole_losses, _ = train(mixer, False, graphs, loader, callbacks=[every_20])
    saved = sorted(p.name for p in tmp_path.iterdir())
    resumed, resumed_losses, _ = train(mixer, False, graphs, loader, ckpt=tmp_path / "step=20.ckpt")
    error = worst_relative(resumed, whole)
    bound = 1e-6 if mixer == "Mamba1" else 1e-5  # Mamba2: the atomics above, over 30 steps
    assert error <= bound, (
        f"resumed vs whole {error:.2e}; saved {saved}; {len(resumed_losses)} resumed losses; "
        f"first {resumed_losses[:3]} vs {whole_losses[19:23]}"
    )
    assert resumed_losses == pytest.approx(whole_losses[20:], rel=bound)
{%- endif %}
