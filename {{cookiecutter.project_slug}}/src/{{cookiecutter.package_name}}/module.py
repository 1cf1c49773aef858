"""How the model learns: one LightningModule for both tasks.

* language_model: token ids (B, L) -> next-token logits (B, L, V) through the backbone and a
  head tied to the embedding. Loss and metrics skip targets equal to -100.
* sequence_classification: real-valued series (B, L, C) -> input projection -> backbone ->
  pooling over time -> class logits (B, K).

Lightning calls the hooks below in this order during `fit`:
setup -> configure_optimizers -> [training_step -> (validation_step ...)]* -> on_save_checkpoint.
`test_step` runs for `test`, `predict_step` for `predict`.
"""

import math
from dataclasses import asdict, replace
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from .backbone import Backbone, BackboneConfig, InferenceParams
from .data import IGNORE_INDEX
from .graphs import GraphedLoss, Setting, decide
from .kernels import check_kernels
from .loss import linear_cross_entropy
from .pretrained import read_checkpoint, save

Task = Literal["language_model", "sequence_classification"]


class MambaModule(L.LightningModule):
    """A Mamba backbone with a task head, its metrics and its optimiser.

    Args:
        task: what the model learns; must match the data module's task.
        backbone: the backbone's shape and implementation (backbone.impl: auto|fused|reference).
        vocab_size / num_channels / num_classes: filled in from the data module by the CLI.
        pooling: how a classifier summarises time: "mean" over steps or the "last" step.
        lr: peak learning rate after warmup; cosine decay to lr * min_lr_ratio at the last step.
        weight_decay: AdamW decay for weight matrices; never for norms, biases and the
            parameters mamba-ssm marks `_no_weight_decay` (A_log, D, dt_bias).
        kernels: what to do when a fused fast path is missing: require (stop), warn, off.
        cuda_graphs: replay the training loss's forward and backward from CUDA graphs
            (graphs.py): auto (wherever it is safe), on (refuse where it cannot work), off.
        init_from: start from pretrained weights: a checkpoint folder (mamba-ssm's or HF's
            format) or a hub id such as state-spaces/mamba-130m; the backbone's shape comes
            from its config. init_revision pins a hub branch, tag or commit.
    """

    def __init__(
        self,
        task: Task = "language_model",
        backbone: BackboneConfig = BackboneConfig(),  # noqa: B008 (frozen: safe to share)
        vocab_size: int | None = None,
        num_channels: int | None = None,
        num_classes: int | None = None,
        pooling: Literal["mean", "last"] = "mean",
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        kernels: Literal["require", "warn", "off"] = "require",
        cuda_graphs: Setting = "auto",
        init_from: str | None = None,
        init_revision: str | None = None,
    ):
        super().__init__()
        pretrained = None
        if init_from is not None:
            if task != "language_model":
                raise ValueError(f"model.init_from={init_from!r} needs task=language_model")
            pretrained = read_checkpoint(init_from, init_revision)
            backbone, vocab_size = pretrained.configure(backbone, vocab_size)
        _check_hyperparameters(
            task,
            vocab_size,
            num_channels,
            num_classes,
            lr,
            weight_decay,
            warmup_steps,
            min_lr_ratio,
        )
        self.save_hyperparameters()
        if pretrained is not None:  # our checkpoints rebuild this shape and carry the weights
            saved = asdict(backbone) if isinstance(self.hparams.backbone, dict) else backbone
            self.hparams.update(backbone=saved, vocab_size=vocab_size)
            self.hparams.update(init_from=None, init_revision=None)
        if task == "language_model":
            self.backbone = Backbone(backbone, vocab_size=vocab_size)
            metrics = torchmetrics.MetricCollection(
                {
                    "acc": torchmetrics.Accuracy(
                        "multiclass", num_classes=vocab_size, ignore_index=IGNORE_INDEX
                    ),
                    "ppl": torchmetrics.text.Perplexity(ignore_index=IGNORE_INDEX),
                }
            )
        else:
            self.input_proj = nn.Linear(num_channels, backbone.d_model)
            self.backbone = Backbone(backbone, vocab_size=None)
            self.head = nn.Linear(backbone.d_model, num_classes)
            kind = "binary" if num_classes == 2 else "multiclass"
            args = {} if kind == "binary" else {"num_classes": num_classes}
            metrics = torchmetrics.MetricCollection(
                {
                    "acc": torchmetrics.Accuracy(kind, **args),
                    "f1": torchmetrics.F1Score(kind, average="macro", **args),
                    "auroc": torchmetrics.AUROC(kind, **args),
                }
            )
        if pretrained is not None:
            pretrained.load_into(self.backbone)
        self.train_metrics = metrics.clone(prefix="train/")  # classification only
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self._matmul_weights, self._batch_tokens = None, 0
        self._train_loss_fn = self._train_loss  # GraphedLoss(...) once fit decides to replay

    # ---------------------------------------------------------------------------- forward
    def forward(self, inputs: Tensor, inference_params: InferenceParams | None = None) -> Tensor:
        """LM: ids (B, L) -> logits (B, L, V). Classifier: (B, L, C) -> logits (B, K)."""
        if self.hparams.task == "language_model":
            hidden = self.backbone(inputs, inference_params)  # (B, L, D)
            return F.linear(hidden, self.backbone.embedding.weight)  # tied head
        hidden = self.backbone(self.input_proj(inputs))  # (B, L, D)
        pooled = hidden.mean(1) if self.hparams.pooling == "mean" else hidden[:, -1]
        return self.head(pooled)

    @property
    def flops_per_batch(self) -> int:
        """FLOPs of the last batch, for Lightning's ThroughputMonitor (MFU on the GPUs it knows).

        The usual estimate: 2 FLOPs per weight per token forward, 6 when training (forward and
        backward), over every weight matrix (the tied head included); the scan is not counted.
        """
        if self._matmul_weights is None:
            self._matmul_weights = sum(p.numel() for p in self.parameters() if p.ndim >= 2)
        return (6 if self.training else 2) * self._matmul_weights * self._batch_tokens

    def _train_loss(self, inputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss and one statistic: LM accuracy, or the classifier's logits.

        Only tensor work, no host syncs and no logging: this is what CUDA graphs replay.
        """
        if self.hparams.task == "language_model":
            # the head and the loss run chunk by chunk: no (B, L, V) logits in memory
            hidden = self.backbone(inputs)  # (B, L, D)
            weight = self.backbone.embedding.weight[: self.hparams.vocab_size]
            loss, correct = linear_cross_entropy(hidden, weight, targets)
            scored = (targets != IGNORE_INDEX).sum().clamp(min=1)
            return loss, correct / scored
        logits = self(inputs).float()  # (B, K)
        return F.cross_entropy(logits, targets), logits

    def _step(self, batch, metrics: torchmetrics.MetricCollection | None) -> Tensor:
        inputs, targets = batch
        self._batch_tokens = inputs.shape[0] * inputs.shape[1]
        stage = metrics.prefix.rstrip("/")
        if stage == "train":
            loss, stat = self._train_loss_fn(inputs, targets)
            if self.hparams.task == "language_model":
                self.log("train/acc", stat, on_step=True, on_epoch=False, sync_dist=True)
                metrics = None
            else:
                scores = stat.softmax(-1)
                metrics.update(scores[:, 1] if self.hparams.num_classes == 2 else scores, targets)
        elif self.hparams.task == "language_model":
            logits = self(inputs)[..., : self.hparams.vocab_size].float()  # drop padded rows
            loss = F.cross_entropy(
                logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX
            )
            metrics["acc"].update(logits.flatten(0, 1), targets.flatten())
            metrics["ppl"].update(logits, targets)
        else:
            logits = self(inputs).float()
            loss = F.cross_entropy(logits, targets)
            scores = logits.softmax(-1)
            metrics.update(scores[:, 1] if self.hparams.num_classes == 2 else scores, targets)
        on_step = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=not on_step,
            prog_bar=True,
            batch_size=targets.shape[0],
            sync_dist=True,  # under DDP: the mean over all ranks, not rank 0's share
        )
        if metrics is not None:
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    # --------------------------------------------------------------------------- hooks
    def setup(self, stage: str) -> None:
        """Runs on every process before training/evaluation: check the fused kernels and
        decide whether the training loss replays from CUDA graphs."""
        if self.backbone.impl == "fused":
            check_kernels(self.hparams.kernels)
        if stage == "fit":
            self._train_loss_fn = self._train_loss
            if self.use_cuda_graphs(self.trainer):
                self._train_loss_fn = GraphedLoss(self, self._train_loss)

    def use_cuda_graphs(self, trainer: L.Trainer, announce: bool = True) -> bool:
        """model.cuda_graphs resolved for this trainer; raises ValueError for `on` where it
        cannot work (the CLI calls this before anything is written, with announce=False)."""
        replay, reason = decide(
            self.hparams.cuda_graphs,
            device_type=trainer.strategy.root_device.type,
            world_size=trainer.world_size,
            accumulate_grad_batches=trainer.accumulate_grad_batches,
            precision=str(trainer.precision),
            impl=self.backbone.impl,
        )
        if announce and self.hparams.cuda_graphs != "off":
            rank_zero_info(f"cuda_graphs {'on' if replay else 'off'}: {reason}")
        return replay

    def training_step(self, batch, batch_idx):
        return self._step(batch, self.train_metrics)

    def validation_step(self, batch, batch_idx):
        self._step(batch, self.val_metrics)

    def test_step(self, batch, batch_idx):
        self._step(batch, self.test_metrics)

    def predict_step(self, batch, batch_idx):
        """LM: greedy continuation of each input (B, L) by 32 tokens. Classifier: class probs."""
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        if self.hparams.task == "language_model":
            return self.generate(inputs, max_new_tokens=32)
        return self(inputs).float().softmax(-1)

    def configure_optimizers(self):
        """AdamW without decay on norms, biases and `_no_weight_decay` parameters; warmup+cosine."""
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            skip = p.ndim < 2 or getattr(p, "_no_weight_decay", False)
            (no_decay if skip else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.hparams.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        # fused AdamW on a GPU, unless a loss scaler (16-mixed) must unscale before clipping
        fused = self.device.type == "cuda" and _loss_scaler(self.trainer) is None
        optimizer = torch.optim.AdamW(
            groups, lr=self.hparams.lr, betas=self.hparams.betas, fused=fused
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = warmup_cosine(self.hparams.warmup_steps, total, self.hparams.min_lr_ratio)
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

    # ------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
    ) -> Tensor:
        """Continue token ids (B, L) by max_new_tokens, carrying the recurrent state.

        The prompt runs through the parallel (chunked) forward once, which leaves each layer's
        conv and SSM state behind; every new token is then one recurrent step. temperature 0
        is greedy decoding.
        """
        if self.hparams.task != "language_model":
            raise ValueError("generate() needs task=language_model")
        batch, length = prompt.shape
        params = InferenceParams(max_seqlen=length + max_new_tokens, max_batch_size=batch)
        logits = self(prompt, inference_params=params)[:, -1]  # (B, V)
        tokens = [prompt]
        for _ in range(max_new_tokens):
            logits = logits[:, : self.hparams.vocab_size].float()
            if temperature > 0:
                logits = logits / temperature
                if top_k is not None:
                    kth = logits.topk(top_k, dim=-1).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                token = torch.multinomial(logits.softmax(-1), 1)
            else:
                token = logits.argmax(-1, keepdim=True)  # (B, 1)
            tokens.append(token)
            params.seqlen_offset += tokens[-2].shape[1]
            logits = self(token, inference_params=params)[:, -1]
        return torch.cat(tokens, dim=1)

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None, **overrides):
        """A language model initialised from a pretrained checkpoint (see `init_from`).

        `overrides` are any other constructor arguments, e.g. backbone=BackboneConfig(impl=...)
        or vocab_size (a tokenizer's, which may differ from the checkpoint's by padding only).
        """
        return cls(init_from=name_or_path, init_revision=revision, **overrides)

    def save_pretrained(self, directory: str, format: Literal["mamba_ssm", "hf"] = "mamba_ssm"):
        """Write a folder that mamba-ssm's or HF's `from_pretrained` loads (and ours too)."""
        return save(self, directory, format)

    @classmethod
    def load_for_device(cls, checkpoint_path: str, impl: str = "auto", **kwargs):
        """Load a checkpoint with another backbone implementation (e.g. fused -> reference)."""
        # mmap: only the hyperparameters are read here; load_from_checkpoint reads the weights
        hparams = torch.load(checkpoint_path, map_location="cpu", weights_only=False, mmap=True)
        saved = hparams["hyper_parameters"]["backbone"]  # the CLI's checkpoints: a dict
        config = {**saved, "impl": impl} if isinstance(saved, dict) else replace(saved, impl=impl)
        return cls.load_from_checkpoint(checkpoint_path, backbone=config, **kwargs)


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


def _check_hyperparameters(
    task, vocab_size, num_channels, num_classes, lr, weight_decay, warmup_steps, min_lr_ratio
) -> None:
    if task == "language_model" and not vocab_size:
        raise ValueError(
            f"model.task=language_model needs a vocab_size, got {vocab_size!r}; use a "
            "language-model data module (SelectiveCopying, InductionHeads, TextFile)."
        )
    if task == "sequence_classification" and not (num_channels and num_classes):
        raise ValueError(
            f"model.task=sequence_classification needs num_channels and num_classes, got "
            f"{num_channels!r} and {num_classes!r}; use a classification data module "
            "(SyntheticSeries, ArrayClassification)."
        )
    if not lr > 0:
        raise ValueError(f"model.lr={lr} must be > 0")
    if weight_decay < 0:
        raise ValueError(f"model.weight_decay={weight_decay} must be >= 0")
    if warmup_steps < 0:
        raise ValueError(f"model.warmup_steps={warmup_steps} must be >= 0")
    if not 0 <= min_lr_ratio <= 1:
        raise ValueError(f"model.min_lr_ratio={min_lr_ratio} must be in [0, 1]")
