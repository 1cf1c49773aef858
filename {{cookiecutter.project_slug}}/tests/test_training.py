"""The LightningModule and the CLI: the task trains on each mixer, configs print, runs resume."""

{% if cookiecutter.task == 'language_model' %}import logging
{% endif %}import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import PACKAGE, PROJECT, {% if cookiecutter.task == 'language_model' %}TINY, {% endif %}TINY_MODEL

from {{ cookiecutter.package_name }}.backbone import BackboneConfig
{% if cookiecutter.task == 'sequence_classification' %}from {{ cookiecutter.package_name }}.classifier import MambaClassifier
{% endif %}from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.loss import cross_entropy{% if cookiecutter.task == 'language_model' %}, linear_cross_entropy{% endif %}
{% if cookiecutter.task == 'language_model' %}from {{ cookiecutter.package_name }}.model import MambaLM
from {{ cookiecutter.package_name }}.module import LanguageModelling, MambaModule, warmup_cosine
{% else %}from {{ cookiecutter.package_name }}.module import Classification, MambaModule, warmup_cosine
{% endif %}
# The data of the task this project was made for: fewer samples than TINY_DATA, quick epochs.
{%- if cookiecutter.task == 'language_model' %}
TASK_DATA = [
    f"--data={PACKAGE}.data.SelectiveCopying",
    "--data.seq_len=24",
    "--data.num_tokens=4",
    "--data.batch_size=4",
    "--data.num_train_samples=64",
    "--data.num_val_samples=8",
]
{%- else %}
TASK_DATA = [
    f"--data={PACKAGE}.data.SyntheticSeries",
    "--data.seq_len=48",
    "--data.num_classes=2",
    "--data.batch_size=4",
    "--data.num_train_samples=32",
    "--data.num_val_samples=8",
]
{%- endif %}
{%- if cookiecutter.task == 'language_model' %}


def tiny_lm() -> MambaLM:
    torch.manual_seed(0)
    config = BackboneConfig(impl="reference", d_model=16, n_layer=2, d_state=8, headdim=8)
    return MambaLM(config, vocab_size=10)
{%- endif %}


def tiny_module(**kwargs) -> MambaModule:
    """The LightningModule of this project's task around a tiny network (kwargs: its own)."""
{%- if cookiecutter.task == 'language_model' %}
    return LanguageModelling(tiny_lm(), **kwargs)
{%- else %}
    torch.manual_seed(0)
    config = BackboneConfig(impl="reference", d_model=16, n_layer=2, d_state=8, headdim=8)
    return Classification(MambaClassifier(config, num_channels=2, num_classes=2), **kwargs)
{%- endif %}


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_fit_fast_dev_run_for_each_mixer(mixer, tmp_path):
    cli = main(
        [
            "fit",
            *TINY_MODEL,
            *TASK_DATA,
            f"--model.net.backbone.mixer={mixer}",
            "--trainer.fast_dev_run=2",
            f"--run.root={tmp_path}",
        ]
    )
    assert cli.trainer.state.finished
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    assert isinstance(cli.model.net, {{ 'MambaLM' if cookiecutter.task == 'language_model' else 'MambaClassifier' }})


def test_fit_logs_metrics_and_writes_last_and_best_checkpoints(tmp_path):
    cli = main(
        [
            "fit",
            *TINY_MODEL,
            *TASK_DATA,
            "--trainer.max_steps=6",
            "--trainer.val_check_interval=3",
            "--trainer.log_every_n_steps=1",
            "--run.id=demo",
            f"--run.root={tmp_path}",
        ]
    )
    checkpoints = tmp_path / "demo" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "best.ckpt",
        "last.ckpt",
        "previous.ckpt",  # the last.ckpt before the final one
    ]
    metrics = cli.trainer.callback_metrics
    for name in ("train/loss", "val/loss", "val/acc", "{{ 'val/ppl' if cookiecutter.task == 'language_model' else 'val/f1' }}"):
        assert name in metrics, name
    events = list((tmp_path / "demo").glob("events.out.tfevents.*"))
    assert events, "TensorBoard event file missing"
{%- if cookiecutter.task == 'language_model' %}


@pytest.mark.parametrize("lr", [1e-12, 0.05], ids=["frozen", "learning"])
def test_a_run_still_at_chance_says_so_once_and_a_learning_one_does_not(tmp_path, caplog, lr):
    """NotLearning compares val/loss with the data's chance loss (ln 7 for 7 symbols): a model
    that cannot move (lr 1e-12) is told at the first validation after `after_step`, once; a model
    that learns the recall is not."""
    callback = f"--trainer.callbacks+={PACKAGE}.machinery.progress.NotLearning"
    caplog.set_level(logging.INFO)
    main([
        "fit", *TINY, f"--data={PACKAGE}.data.InductionHeads", "--data.seq_len=8",
        "--data.num_symbols=7", "--data.batch_size=32", "--data.num_train_samples=2048",
        "--data.num_val_samples=256", f"--model.lr={lr}", "--model.warmup_steps=0",
        callback, "--trainer.callbacks.after_step=40", "--trainer.max_steps=120",
        "--trainer.val_check_interval=20", f"--run.root={tmp_path}",
    ])  # fmt: skip
    said = [message for message in caplog.messages if "not learning" in message]
    assert len(said) == (1 if lr < 1e-6 else 0), said
    if said:
        assert "not learning: at step 40 val/loss " in said[0]
        assert "(1.946)" in said[0] and "another seed (seed_everything)" in said[0]
{%- endif %}


def test_gradient_norms_logs_each_layers_gradient_before_clipping(tmp_path):
    """GradientNorms logs every parameter's gradient norm on the steps that log: the per-layer
    signal that tells a stalled run from one that learns."""
    cli = main([
        "fit", *TINY_MODEL, *TASK_DATA,
        f"--trainer.callbacks+={PACKAGE}.machinery.progress.GradientNorms",
        "--trainer.max_steps=3", "--trainer.val_check_interval=3",
        "--trainer.log_every_n_steps=1", "--trainer.gradient_clip_val=1e-6",
        f"--run.root={tmp_path}",
    ])  # fmt: skip
    logged = cli.trainer.callback_metrics
    name = "grad_2.0_norm/net.backbone.layers.0.mixer.out_proj.weight"
    assert name in logged and float(logged[name]) > 0
    total = float(logged["grad_2.0_norm_total"])
    assert total > 1e-5  # the norm before clipping: clipping at 1e-6 leaves no gradient that large
    parts = [float(v) for k, v in logged.items() if k.startswith("grad_2.0_norm/")]
    assert abs(sum(p * p for p in parts) ** 0.5 - total) < 1e-3 * total


def test_gradient_norms_are_those_of_the_step_they_are_written_at(tmp_path):
    """Lightning writes the values of every log_every_n_steps-th step: the norms written are
    that step's (here the last step's, whose gradients fit leaves in place), not an earlier
    step's."""
    cli = main([
        "fit", *TINY_MODEL, *TASK_DATA,
        f"--trainer.callbacks+={PACKAGE}.machinery.progress.GradientNorms",
        "--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=2",
        "--trainer.gradient_clip_val=0", f"--run.root={tmp_path}",
    ])  # fmt: skip
    norm = torch.linalg.vector_norm
    last = norm(torch.stack([norm(p.grad) for p in cli.model.parameters() if p.grad is not None]))
    written = cli.trainer.callback_metrics["grad_2.0_norm_total"]
    assert float(written) == pytest.approx(float(last), rel=1e-4)


def test_a_second_start_with_the_same_run_id_resumes(tmp_path):
    args = ["fit", *TINY_MODEL, *TASK_DATA, "--run.id=resume", f"--run.root={tmp_path}"]
    main([*args, "--trainer.max_steps=4", "--trainer.val_check_interval=2"])
    last = tmp_path / "resume" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 4
    cli = main([*args, "--trainer.max_steps=8", "--trainer.val_check_interval=2"])
    assert cli.trainer.global_step == 8
    assert cli.config_init.fit.ckpt_path == str(last)


def test_run_id_is_derived_from_the_config_and_stable(tmp_path):
    args = ["fit", *TINY_MODEL, *TASK_DATA, "--trainer.fast_dev_run=1", f"--run.root={tmp_path}"]
    first, second = main(args), main(args)
    other = main(
        [
            "fit",
            *TINY_MODEL,
            *TASK_DATA,
            "--data.seq_len={{ 30 if cookiecutter.task == 'language_model' else 96 }}",
            "--trainer.fast_dev_run=1",
            f"--run.root={tmp_path}",
        ]
    )
    # the kernel policy (what to do without fused kernels) is not part of the experiment
    same = main(
        [
            "fit",
            *TINY_MODEL,
            *TASK_DATA,
            "--model.kernels=warn",
            "--trainer.fast_dev_run=1",
            f"--run.root={tmp_path}",
        ]
    )
    assert first.run_id == second.run_id == same.run_id != other.run_id


def test_throughput_is_logged_in_tokens_and_flops(tmp_path):
    """Lightning's ThroughputMonitor reports rates once its 100-step window is full."""
    cli = main(
        [
            "fit",
            *TINY_MODEL,
            *TASK_DATA,
            "--trainer.max_steps=101",
            "--trainer.log_every_n_steps=1",
            f"--run.root={tmp_path}",
        ]
    )
    logged = {k: float(v) for k, v in cli.trainer.logged_metrics.items()}
    weights = sum(p.numel() for p in cli.model.parameters() if p.ndim >= 2)
    tokens_per_s = logged["train/device/items_per_sec"]
    assert tokens_per_s > 0
    # training: 6 FLOPs per weight and token (forward and backward)
    assert logged["train/device/flops_per_sec"] == pytest.approx(6 * weights * tokens_per_s)


def test_training_puts_no_value_in_the_progress_bar_to_be_read_back_each_step(
    tmp_path, monkeypatch
):
    """Lightning turns each progress-bar value into a Python number after every step: on a
    GPU a host sync that keeps the CPU from queueing the next step. Training puts no value
    there; the line progress (a pipe) reads the loss itself when it prints."""
    from lightning.pytorch.trainer.connectors.logger_connector import result

    reads, convert = [], result.convert_tensors_to_scalars
    monkeypatch.setattr(
        result, "convert_tensors_to_scalars", lambda value: reads.append(value) or convert(value)
    )
    args = [*TINY_MODEL, *TASK_DATA, "--trainer.max_steps=20", "--trainer.limit_val_batches=0"]
    main(["fit", *args, f"--run.root={tmp_path}"])
    assert not reads, f"{len(reads)} progress-bar values read back in 20 training steps"


@pytest.mark.parametrize(
    "config", sorted((PROJECT / "configs").glob("*.yaml")), ids=lambda p: p.name
)
def test_print_config_shows_every_shipped_config(config):
    result = subprocess.run(
        [sys.executable, "-m", PACKAGE, "fit", "--config", str(config), "--print_config"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        check=True,
    )
    printed = yaml.safe_load(result.stdout)
    net = printed["model"]["init_args"]["net"]["init_args"]
    assert net["backbone"]["mixer"] in ("Mamba1", "Mamba2", "Mamba3")
    assert printed["data"]["class_path"].startswith(f"{PACKAGE}.data.")
    assert printed["trainer"]["gradient_clip_val"] == 1.0


GENERATED = {{ '("SelectiveCopying", "InductionHeads")' if cookiecutter.task == 'language_model' else '("SyntheticSeries",)' }}
GENERATED_TASK_CONFIGS = [  # the shipped configs that need no file and no download
    c
    for c in sorted((PROJECT / "configs").glob("*.yaml"))
    if any(t in c.read_text() for t in GENERATED)
]


@pytest.mark.parametrize("config", GENERATED_TASK_CONFIGS, ids=lambda p: p.name)
def test_every_monitor_of_a_shipped_config_names_a_metric_the_run_logs(config, tmp_path):
    """run.monitor, EarlyStopping and the curriculum are checked before the first step; a
    config whose monitor names no logged metric (a length missing from val_lengths) stops."""
    args = ["fit", f"--config={config}", "--trainer.max_steps=0", "--trainer.accelerator=cpu"]
    args += ["--trainer.num_sanity_val_steps=0", "--data.num_workers=0", f"--run.root={tmp_path}"]
    cli = main(args)
    watched = {c.monitor for c in cli.trainer.callbacks if getattr(c, "monitor", None)}
    logged = cli.model.validation_metric_names(cli.datamodule)
    assert watched and watched <= set(logged)


def test_optimizer_skips_decay_for_marked_params_norms_and_biases():
    model = tiny_module(weight_decay=0.1)
    model.trainer = type("T", (), {"estimated_stepping_batches": 100})()
    optimizer = model.configure_optimizers()["optimizer"]
    decay, no_decay = (group["params"] for group in optimizer.param_groups)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)].split(".")[-1] for p in no_decay}
    assert (
        {"A_log", "D", "dt_bias", "weight", "bias"} >= no_decay_names >= {"A_log", "D", "dt_bias"}
    )
    assert all(p.ndim >= 2 for p in decay)
    assert all(not getattr(p, "_no_weight_decay", False) for p in decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.55)
    assert factor(110) == pytest.approx(0.1)
{%- if cookiecutter.task == 'language_model' %}


def test_generate_is_greedy_decoding_of_the_parallel_forward():
    model = tiny_lm().eval()
    prompt = torch.randint(0, 10, (2, 7))
    out = model.generate(prompt, max_new_tokens=6)
    assert out.shape == (2, 13)
    assert torch.equal(out[:, :7], prompt)
    logits = model(out)
    torch.testing.assert_close(out[:, 7:], logits[:, 6:-1].argmax(-1), rtol=0, atol=0)
{%- endif %}


def test_networks_refuse_missing_data_sizes_and_the_module_a_bad_learning_rate():
{%- if cookiecutter.task == 'language_model' %}
    with pytest.raises(ValueError, match="MambaLM needs a vocab_size >= 1, got None"):
        MambaLM()
{%- else %}
    with pytest.raises(ValueError, match="num_channels >= 1 and num_classes >= 2, got 3 and None"):
        MambaClassifier(num_channels=3)
{%- endif %}
    with pytest.raises(ValueError, match="model.lr=-0.1 must be > 0"):
        tiny_module(lr=-0.1)


def test_the_network_imports_and_runs_with_torch_alone():
    """The network's module is plain PyTorch: importing it (and using it) never imports
    Lightning."""
    code = (
        "import sys, torch\n"
        f"from {PACKAGE}.backbone import BackboneConfig\n"
        "config = BackboneConfig(impl='reference', d_model=16, n_layer=1, headdim=8)\n"
{%- if cookiecutter.task == 'language_model' %}
        f"from {PACKAGE}.model import MambaLM\n"
        "MambaLM(config, 10).generate(torch.zeros(1, 3, dtype=torch.long), 2)\n"
{%- else %}
        f"from {PACKAGE}.classifier import MambaClassifier\n"
        "assert MambaClassifier(config, 3, 2)(torch.zeros(1, 8, 3)).shape == (1, 2)\n"
{%- endif %}
        "print(sorted(n for n in sys.modules if n.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'torchmetrics', 'jsonargparse')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("chunk_size", [5, 4096])
def test_cross_entropy_is_the_plain_loss_with_its_gradient_and_hits(chunk_size):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 11, 16, dtype=torch.float64, generator=g)).requires_grad_()
    targets = torch.randint(0, 16, (3, 11), generator=g)
    targets[0, :4] = -100
    loss, correct = cross_entropy(logits, targets, chunk_size=chunk_size)
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected)
    scored = targets != -100
    assert correct == (logits.argmax(-1)[scored] == targets[scored]).sum()
    (grad,) = torch.autograd.grad(2.5 * loss, logits)
    (expected_grad,) = torch.autograd.grad(2.5 * expected, logits)
    torch.testing.assert_close(grad, expected_grad)
    assert grad[0, :4].abs().max() == 0  # ignored positions get no gradient
{%- if cookiecutter.task == 'language_model' %}


@pytest.mark.parametrize("chunk_size", [5, 64])
def test_chunked_linear_cross_entropy_equals_the_plain_loss_and_its_gradients(chunk_size):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 8, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(13, 8, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.randint(0, 13, (3, 11), generator=g)
    targets[0, :4] = -100
    loss, correct = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    logits = hidden @ weight.T
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected)
    scored = targets != -100
    assert correct == (logits.argmax(-1)[scored] == targets[scored]).sum()
    grads = torch.autograd.grad(2.5 * loss, (hidden, weight))
    expected_grads = torch.autograd.grad(2.5 * expected, (hidden, weight))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)
{%- endif %}


@pytest.mark.parametrize("chunk_size", [4, 4096])
def test_a_sure_model_keeps_its_loss_and_gradient_where_float32_reads_zero(chunk_size):
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 16, (3, 11), generator=g)
    targets[0, :4] = -100
    # a sure model: every target ahead by 30 to 40 logits; float32's plain loss reads 0.0
    margin = 30 + 10 * torch.rand(3, 11, 1, generator=g)
    sure = torch.randn(3, 11, 16, generator=g).scatter(-1, targets.clamp(min=0)[..., None], margin)
    plain = F.cross_entropy(sure.flatten(0, 1), targets.flatten(), ignore_index=-100)
    scored = targets != -100
    x = sure.double()[scored]  # (N, 16), in float64 from the definition:
    target = F.one_hot(targets[scored], 16).bool()
    others = (x - x[target][:, None]).exp().masked_fill(target, 0).sum(1)  # mass over p_t's
    exact = torch.log1p(others).mean()  # -log p_t = log(1 + others)
    assert plain == 0.0 and 1e-20 < exact < 1e-10
    logits = sure.clone().requires_grad_()
    loss, _ = cross_entropy(logits, targets, chunk_size=chunk_size)
    torch.testing.assert_close(loss.double(), exact, rtol=1e-4, atol=0)
    (grad,) = torch.autograd.grad(loss, logits)
    at_target = grad[scored].gather(1, targets[scored][:, None]).squeeze(1)
    want = -(others / (1 + others)) / len(x)  # -(1 - p_t) / N, about -1e-15: not 0
    torch.testing.assert_close(at_target.double(), want, rtol=1e-4, atol=0)


CURRICULUM = [
    "--trainer.reload_dataloaders_every_n_epochs=1",
    f"--trainer.callbacks+={PACKAGE}.curriculum.LengthCurriculum",
{% if cookiecutter.task == 'language_model' %}]
LENGTHS = [8, 16, 24]  # the last is TASK_DATA's seq_len{% else %}    "--data.seq_len=96",
]
LENGTHS = [48, 72, 96]  # the last is the seq_len above{% endif %}


def test_length_curriculum_moves_to_the_next_length_when_validation_reaches_the_threshold(
    tmp_path,
):
    cli = main(
        [
            "fit",
            *TINY_MODEL,
            *TASK_DATA,
            *CURRICULUM,
            f"--trainer.callbacks.lengths={LENGTHS}",
            "--trainer.callbacks.threshold=0.001",  # any trained model passes it
            "--trainer.max_epochs=3",
            "--trainer.log_every_n_steps=1",
            "--run.id=curriculum",
            f"--run.root={tmp_path}",
        ]
    )
    curriculum = next(c for c in cli.trainer.callbacks if type(c).__name__ == "LengthCurriculum")
    assert curriculum.stage == 2 and cli.datamodule.seq_len == LENGTHS[-1]
    last = torch.load(tmp_path / "curriculum" / "checkpoints" / "last.ckpt", weights_only=False)
    assert {"stage": 2} in last["callbacks"].values()  # a resumed run continues at the last


def test_length_curriculum_refuses_a_last_length_other_than_the_data_length(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "fit",
                *TINY_MODEL,
                *TASK_DATA,
                *CURRICULUM,
                f"--trainer.callbacks.lengths={LENGTHS[:2]}",
                "--trainer.max_steps=2",
                f"--run.root={tmp_path}",
            ]
        )
    assert stopped.value.code == 2
    message = f"last length {LENGTHS[1]} must equal data.seq_len={LENGTHS[2]}"
    assert message in capsys.readouterr().err
