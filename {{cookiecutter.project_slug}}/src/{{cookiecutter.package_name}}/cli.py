"""How a run is started: LightningCLI plus stable run directories and automatic resume.

    python -m <package> fit --config configs/default.yaml [--trainer.max_steps=...]
    python -m <package> fit --config configs/default.yaml --print_config

Every run has an id (`--run.id`, or one derived from the config) and lives in
`<run.root>/<id>/`: checkpoints in `checkpoints/` (last.ckpt, best.ckpt), TensorBoard events in
`<run.log_root>/<id>/`. Starting `fit` again with the same id resumes from last.ckpt, so a
restart never silently begins from scratch.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from .module import MambaModule

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class RunConfig:
    """Where a run lives and how often it checkpoints.

    Args:
        id: stable name of the run; default: config file name + hash of model/data/seed.
        root: checkpoints go to <root>/<id>/checkpoints.
        log_root: TensorBoard logs go to <log_root>/<id>; default: root.
        checkpoint_minutes: write last.ckpt at least this often while training.
    """

    id: str | None = None
    root: str = "runs"
    log_root: str | None = None
    checkpoint_minutes: float = 10.0

    def __post_init__(self):
        if self.id is not None and not RUN_ID.fullmatch(self.id):
            raise ValueError(
                f"run.id={self.id!r} may hold only letters, digits, '.', '_' and '-' (at most "
                "128, starting with a letter or digit); it names a directory. Pick such a name."
            )
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"run.checkpoint_minutes={self.checkpoint_minutes} must be > 0")


def derive_run_id(config) -> str:
    """<config stem>-<8 hex>: the same experiment config gives the same id on every start."""
    configs = config.get("config") or []
    stem = Path(str(configs[-1])).stem if configs else "run"
    experiment = {}
    for key in ("model", "data", "seed_everything"):
        value = config.get(key)
        experiment[key] = value.as_dict() if hasattr(value, "as_dict") else value
    digest = hashlib.sha256(json.dumps(experiment, sort_keys=True, default=str).encode())
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', stem)}-{digest.hexdigest()[:8]}"


def default_precision() -> str:
    """bf16-mixed on a GPU that has bf16, else full fp32."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def _tokens(batch) -> int:
    inputs = batch[0]
    return inputs.shape[0] * inputs.shape[1]


class MambaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_class_arguments(RunConfig, "run")
        for name in ("task", "vocab_size", "num_channels", "num_classes"):
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")

    def _run_paths(self) -> tuple[str, Path, Path]:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run = config.run
        run_id = run.id or derive_run_id(config)
        run_dir = Path(run.root) / run_id
        log_dir = Path(run.log_root or run.root) / run_id
        return run_id, run_dir, log_dir

    def instantiate_trainer(self, **kwargs):
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        run_id, run_dir, log_dir = self._run_paths()
        self.run_id, self.run_dir = run_id, run_dir
        if trainer_config.get("precision") is None:
            trainer_config["precision"] = default_precision()
        trainer_config.setdefault("default_root_dir", str(run_dir))
        if trainer_config.get("logger") in (None, True):
            trainer_config["logger"] = TensorBoardLogger(save_dir=str(log_dir), name="", version="")
        ckpt_dir = run_dir / "checkpoints"
        minutes = config.run.checkpoint_minutes
        callbacks = [
            self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys
        ]
        # Both checkpoint callbacks write last.ckpt (no -v1 copies): after each validation, and
        # at least every `checkpoint_minutes` of training.
        callbacks += [
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor="val/acc",
                mode="max",
                save_top_k=1,
                save_last=True,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            ModelCheckpoint(
                dirpath=ckpt_dir,
                save_top_k=0,
                save_last=True,
                train_time_interval=timedelta(minutes=minutes),
                enable_version_counter=False,
            ),
            LearningRateMonitor(logging_interval="step"),
            ThroughputMonitor(batch_size_fn=lambda batch: batch[0].shape[0], length_fn=_tokens),
        ]
        return self._instantiate_trainer(trainer_config, callbacks)

    def before_fit(self):
        fit = self.config_init.fit
        last = self.run_dir / "checkpoints" / "last.ckpt"
        if fit.get("ckpt_path") is None and last.is_file():
            print(f"run {self.run_id}: resuming from {last}")
            fit["ckpt_path"] = str(last)
        else:
            print(f"run {self.run_id}: writing to {self.run_dir}")


def main(args: list[str] | None = None) -> MambaCLI:
    return MambaCLI(
        MambaModule,
        LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        auto_configure_optimizers=False,
    )
