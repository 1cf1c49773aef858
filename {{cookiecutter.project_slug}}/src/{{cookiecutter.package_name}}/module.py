"""How a model learns: the LightningModule that trains a {{ 'MambaLM' if cookiecutter.task == 'language_model' else 'MambaClassifier' }}.

It receives the network it trains (`net`, built by LightningCLI from the config's
`model.net` section) and adds what training needs: the loss, torchmetrics, AdamW with warmup
and cosine decay, gradient clipping and CUDA-graph replay. `MambaModule` holds what does not
depend on the task; `{{ 'LanguageModelling' if cookiecutter.task == 'language_model' else 'Classification' }}` says what a step computes and measures.

Lightning calls the hooks below in this order during `fit`:
setup -> configure_optimizers -> [training_step -> (validation_step ...)]* -> on_save_checkpoint.
`test_step` runs for `test`, `predict_step` for `predict`.
"""

import math

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

{% if cookiecutter.task == 'language_model' -%}
from .data import IGNORE_INDEX
{%- else -%}
from .classifier import MambaClassifier
{%- endif %}
{%- if cookiecutter.task == 'language_model' %}
from .loss import cross_entropy, linear_cross_entropy
{%- else %}
from .loss import cross_entropy
{%- endif %}
from .machinery.graphs import GraphedLoss, Setting, decide
from .machinery.kernels import Policy, check_kernels
{%- if cookiecutter.task == 'language_model' %}
from .model import MambaLM
{%- endif %}

NET_KEY = "net"  # the checkpoint entry that rebuilds the network: {"class", "config"}


class MambaModule(L.LightningModule):
    """The optimiser, schedule, clipping and graph replay.

    Args:
        net: the network to train (a {{ 'MambaLM' if cookiecutter.task == 'language_model' else 'MambaClassifier' }}).
        lr: peak learning rate after warmup; cosine decay to lr * min_lr_ratio at the last step.
        weight_decay: AdamW decay for weight matrices; never for norms, biases and the
            parameters mamba-ssm marks `_no_weight_decay` (A_log, D, dt_bias).
        kernels: what to do when a fused fast path is missing: require (stop), warn, off.
        cuda_graphs: replay the training loss's forward and backward from CUDA graphs
            (machinery/graphs.py): auto (wherever it is safe), on (refuse where it cannot
            work), off.
    """

    def __init__(
        self,
        net: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        kernels: Policy = "require",
        cuda_graphs: Setting = "auto",
    ):
        super().__init__()
        for name, value, ok, rule in (
            ("lr", lr, lr > 0, "> 0"),
            ("weight_decay", weight_decay, weight_decay >= 0, ">= 0"),
            ("warmup_steps", warmup_steps, warmup_steps >= 0, ">= 0"),
            ("min_lr_ratio", min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1]"),
        ):
            if not ok:
                raise ValueError(f"model.{name}={value} must be {rule}")
        self.net = net
        self.lr, self.weight_decay, self.betas = lr, weight_decay, betas
        self.warmup_steps, self.min_lr_ratio = warmup_steps, min_lr_ratio
        self.kernels, self.cuda_graphs = kernels, cuda_graphs
        self.matmul_weights = sum(p.numel() for p in net.parameters() if p.ndim >= 2)
        self.batch_tokens = 0
        self.train_loss = self.training_loss  # GraphedLoss(...) once fit decides to replay

    @property
    def fused(self) -> bool:
        """Whether the network calls the fused kernels (`impl: fused`); the loss follows it."""
        return self.net.backbone.impl == "fused"

    def training_loss(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss and one statistic for the metrics. Only tensor work, no host
        syncs and no logging: this is what CUDA graphs replay."""
        raise NotImplementedError

    @property
    def flops_per_batch(self) -> int:
        """FLOPs of the last batch, for the throughput log (MFU on the GPUs Lightning knows).

        The usual estimate: 2 FLOPs per weight per token forward, 6 when training (forward and
        backward), over every weight matrix (a tied head counted once); the scan is not counted.
        """
        return (6 if self.training else 2) * self.matmul_weights * self.batch_tokens

    def log_loss(self, name: str, loss: Tensor, batch_size: int) -> None:
        """Log a loss. Validation's goes to the progress bar here; the training loss is not
        a `prog_bar` value, because Lightning reads those back to the host after every step, a
        sync that would keep the CPU from queueing the next step while the GPU works: the
        bars read it themselves when they draw (machinery.progress.with_training_loss)."""
        train = name.startswith("train/")
        self.log(
            name,
            loss,
            on_step=train,
            on_epoch=not train,
            prog_bar=not train,
            batch_size=batch_size,
            sync_dist=True,  # under DDP: the mean over all ranks, not rank 0's share
            add_dataloader_idx=False,  # several validation loaders are told apart by name
        )

    def log_metrics(self, metrics: torchmetrics.MetricCollection, prog_bar: bool = True) -> None:
        self.log_dict(
            metrics, on_step=False, on_epoch=True, prog_bar=prog_bar, add_dataloader_idx=False
        )

    def new_metrics(self) -> torchmetrics.MetricCollection:
        """The task's evaluation metrics, unprefixed (acc, ...): one fresh set per use."""
        raise NotImplementedError

    def validation_metric_names(self, data) -> list[str]:
        """What validation logs with this data module: val/loss, val/acc, ... val/acc@4096."""
        names = ["loss", *self.new_metrics().keys()]
        return [f"val/{name}{suffix}" for suffix in loader_suffixes(data) for name in names]

    # --------------------------------------------------------------------------- hooks
    def setup(self, stage: str) -> None:
        """Runs on every process before training/evaluation: check the fused kernels, make the
        validation metrics (a set per loader) and decide whether the loss replays from graphs."""
        if self.fused:
            check_kernels(self.kernels, self.net.backbone.config.mixer)
        self.val_metrics = nn.ModuleList(  # one set per validation loader, named by suffix
            self.new_metrics().clone(prefix="val/", postfix=suffix or None)
            for suffix in loader_suffixes(self.trainer.datamodule)
        )
        if stage == "fit":
            self.train_loss = self.training_loss
            if self.use_cuda_graphs(self.trainer):
                self.train_loss = GraphedLoss(self, self.training_loss)

    def use_cuda_graphs(self, trainer: L.Trainer, announce: bool = True) -> bool:
        """model.cuda_graphs resolved for this trainer; raises ValueError for `on` where it
        cannot work (the CLI calls this before anything is written, with announce=False)."""
        replay, reason = decide(
            self.cuda_graphs,
            device_type=trainer.strategy.root_device.type,
            world_size=trainer.world_size,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            precision=str(trainer.precision),
            impl=self.net.backbone.impl,
        )
        if announce and self.cuda_graphs != "off":
            rank_zero_info(f"cuda_graphs {'on' if replay else 'off'}: {reason}")
        return replay

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The network's class and shape travel with its weights: `checkpoint.load_trained`
        rebuilds it from them without this module or Lightning."""
        net = self.net
        checkpoint[NET_KEY] = {"class": type(net).__name__, "config": net.config}

    def configure_optimizers(self):
        """AdamW without decay on norms, biases and `_no_weight_decay` parameters; warmup+cosine."""
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim < 2 or getattr(p, "_no_weight_decay", False)
            (no_decay if skip else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # fused AdamW on a GPU, unless a loss scaler (16-mixed) must unscale before clipping
        fused = self.device.type == "cuda" and _loss_scaler(self.trainer) is None
        optimizer = torch.optim.AdamW(groups, lr=self.lr, betas=self.betas, fused=fused)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine(self.warmup_steps, total, self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        """Clip directly when no loss scaler is involved (32-true, bf16-mixed).

        Lightning refuses to clip under mixed precision with a fused optimizer, because with a
        float16 loss scaler the gradients would still be scaled. bf16 has no scaler, so the
        gradients are final here and clipping them is exact.
        """
        if gradient_clip_val and _loss_scaler(self.trainer) is None:
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            elif isinstance(self.trainer.strategy, FSDPStrategy):
                # each rank holds a shard of the gradients: only FSDP's own clip sees the
                # global norm (Lightning itself clips FSDP by value only)
                self.trainer.model.clip_grad_norm_(gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val, foreach=True)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
{%- if cookiecutter.task == 'language_model' %}


class LanguageModelling(MambaModule):
    """Next-token prediction: loss and accuracy over the targets that are not IGNORE_INDEX,
    perplexity in validation. `predict` gives the likeliest next token at each scored position."""

    def __init__(self, net: MambaLM, **kwargs):
        """kwargs: MambaModule's (lr, weight_decay, betas, ...)."""
        super().__init__(net, **kwargs)
        self.val_metrics = nn.ModuleList([self.new_metrics().clone(prefix="val/")])  # see setup
        self.test_metrics = self.new_metrics().clone(prefix="test/")

    def new_metrics(self) -> torchmetrics.MetricCollection:
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(
                    "multiclass", num_classes=self.net.vocab_size, ignore_index=IGNORE_INDEX
                ),
                "ppl": torchmetrics.text.Perplexity(ignore_index=IGNORE_INDEX),
            }
        )

    def training_loss(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        # the head and the loss run chunk by chunk: no (B, L, V) logits in memory
        hidden = self.net.backbone(inputs)  # (B, L, D)
        loss, correct = linear_cross_entropy(
            hidden, self.net.output_weight, targets, IGNORE_INDEX, kernels=self.fused
        )
        return loss, correct / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        self.batch_tokens = inputs.numel()
        loss, accuracy = self.train_loss(inputs, targets)
        self.log("train/acc", accuracy, on_step=True, on_epoch=False, sync_dist=True)
        self.log_loss("train/loss", loss, len(targets))
        return loss

    def evaluate(self, batch, metrics: torchmetrics.MetricCollection) -> None:
        inputs, targets = batch
        logits = self.net(inputs).float()  # (B, L, V)
        loss, _ = cross_entropy(logits, targets, IGNORE_INDEX, kernels=self.fused)
        metrics["acc"].update(logits.flatten(0, 1), targets.flatten())
        metrics["ppl"].update(logits, targets)
        self.log_loss(f"{metrics.prefix}loss{metrics.postfix or ''}", loss, len(targets))
        self.log_metrics(metrics)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.evaluate(batch, self.val_metrics[dataloader_idx])

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, self.test_metrics)

    def predict_step(self, batch, batch_idx) -> list[dict]:
        """Each sample's next-token predictions (the likeliest token) at its scored positions,
        with the targets there: one JSON-ready row per sample, for the predictions file."""
        inputs, targets = batch
        predicted = self.net(inputs).argmax(-1)  # (B, L)
        rows = []
        for guess, target in zip(predicted.tolist(), targets.tolist(), strict=True):
            scored = [i for i, t in enumerate(target) if t != IGNORE_INDEX]
            rows.append(
                {"predicted": [guess[i] for i in scored], "target": [target[i] for i in scored]}
            )
        return rows
{%- endif %}
{%- if cookiecutter.task == 'sequence_classification' %}


class Classification(MambaModule):
    """One label per series: cross-entropy, with accuracy, macro F1 and AUROC.
    `predict` gives each series' class and class probabilities."""

    def __init__(self, net: MambaClassifier, **kwargs):
        """kwargs: MambaModule's (lr, weight_decay, betas, ...)."""
        super().__init__(net, **kwargs)
        self.train_metrics = self.new_metrics().clone(prefix="train/")
        self.val_metrics = nn.ModuleList([self.new_metrics().clone(prefix="val/")])  # see setup
        self.test_metrics = self.new_metrics().clone(prefix="test/")

    def new_metrics(self) -> torchmetrics.MetricCollection:
        kind = "binary" if self.net.num_classes == 2 else "multiclass"
        args = {} if kind == "binary" else {"num_classes": self.net.num_classes}
        return torchmetrics.MetricCollection(
            {
                "acc": torchmetrics.Accuracy(kind, **args),
                "f1": torchmetrics.F1Score(kind, average="macro", **args),
                "auroc": torchmetrics.AUROC(kind, **args),
            }
        )

    def training_loss(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.net(inputs).float()  # (B, K)
        return cross_entropy(logits, targets, kernels=self.fused)[0], logits

    def measure(self, metrics: torchmetrics.MetricCollection, logits: Tensor, targets) -> None:
        scores = logits.softmax(-1)
        metrics.update(scores[:, 1] if self.net.num_classes == 2 else scores, targets)
        self.log_metrics(metrics, prog_bar=metrics.prefix != "train/")

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        self.batch_tokens = inputs.shape[0] * inputs.shape[1]
        loss, logits = self.train_loss(inputs, targets)
        self.log_loss("train/loss", loss, len(targets))
        return {"loss": loss, "logits": logits.detach()}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        """The training metrics, after backward: AUROC keeps every score of the epoch, and
        those small tensors, allocated while the step's activations were alive, fragmented
        the heap of a CPU run by hundreds of MB a step (tests/test_memory.py)."""
        self.measure(self.train_metrics, outputs["logits"], batch[1])

    def evaluate(self, batch, metrics: torchmetrics.MetricCollection) -> None:
        inputs, targets = batch
        logits = self.net(inputs).float()  # (B, K)
        loss, _ = cross_entropy(logits, targets, kernels=self.fused)
        self.log_loss(f"{metrics.prefix}loss{metrics.postfix or ''}", loss, len(targets))
        self.measure(metrics, logits, targets)

    def validation_step(self, batch, batch_idx, dataloader_idx=0):
        self.evaluate(batch, self.val_metrics[dataloader_idx])

    def test_step(self, batch, batch_idx):
        self.evaluate(batch, self.test_metrics)

    def predict_step(self, batch, batch_idx) -> list[dict]:
        """Each sample's class, its probabilities and its label: one JSON-ready row per sample,
        for the predictions file."""
        inputs, labels = batch
        scores = self.net(inputs).float().softmax(-1)  # (B, K)
        return [
            {"class": max(range(len(p)), key=p.__getitem__), "probabilities": p, "label": label}
            for p, label in zip(scores.tolist(), labels.tolist(), strict=True)
        ]
{%- endif %}


def loader_suffixes(data) -> tuple[str, ...]:
    """What each validation loader's metric names end with: the data module's `val_suffixes`
    ("", "@4096", ...); one unnamed loader for data without them (or no data module)."""
    return tuple(getattr(data, "val_suffixes", ("",)))


def _loss_scaler(trainer):
    return getattr(trainer.precision_plugin, "scaler", None)


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier: linear warmup to 1, then cosine down to min_ratio at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
