"""How a run is started: LightningCLI plus stable run directories and automatic resume.

    python -m <package> fit --config configs/default.yaml [--trainer.max_steps=...]
    python -m <package> fit --config configs/default.yaml --print_config
{%- if cookiecutter.task == 'language_model' %}
    python -m <package> generate --ckpt_path <ckpt> --prompt "Once upon a time"
    python -m <package> export --ckpt_path <ckpt> --format mamba_ssm|hf --out <folder>
{%- endif %}

Every run has an id (`--run.id`, or one derived from the config) and lives in
`<run.root>/<id>/`: checkpoints in `checkpoints/` (last.ckpt, best.ckpt), TensorBoard events in
`<run.log_root>/<id>/`. Starting `fit` again with the same id resumes from last.ckpt, so a
restart never silently begins from scratch.
"""

import difflib
import inspect
import json
import logging
import os
import sys
import warnings
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import torch
from lightning.fabric.plugins.io import CheckpointIO
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import (
    BasePredictionWriter,
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
)
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from .backbone import BackboneConfig
{%- if cookiecutter.task == 'sequence_classification' %}
from .classifier import MambaClassifier
{%- endif %}
from .commands import COMMANDS, run
from .data import BaseDataModule
from .machinery.devices import device_settings
from .machinery.errors import input_error
from .machinery.progress import Announce, Bar, LineProgress, LoggedThroughput, ParameterSummary
from .machinery.runid import CHECKPOINTS, run_folder
from .machinery.runs import (
    LAST,
    AtomicCheckpointIO,
    BestCheckpoint,
    ContinueTensorBoard,
    FlushedTensorBoardLogger,
    Interrupted,
    LastCheckpoint,
    RunConfig,
    RunLock,
    TimedCheckpoint,
    cannot_resume,
    derive_run_id,
    other_model,
    protect_standard_streams,
    resume_checkpoint,
    unreadable,
)
{%- if cookiecutter.task == 'language_model' %}
from .model import MambaLM
{%- endif %}
from .module import MambaModule
{%- if cookiecutter.task == 'language_model' %}
from .pretrained import read_checkpoint
{%- endif %}

DEFAULT_MODULE = "{{ 'LanguageModelling' if cookiecutter.task == 'language_model' else 'Classification' }}"
COMMAND_LIST = {  # `python -m <package> --help`: every command, one line each
    "fit": "train (again with the same run id: resume from its last.ckpt)",
    "validate": "a checkpoint's metrics on the validation split (writes nothing)",
    "test": "a checkpoint's metrics on the data's test split (one apart from validation)",
    "predict": "a checkpoint's predictions on the validation split, written to a file",
{%- if cookiecutter.task == 'language_model' %}
    "generate": "continue prompts with a trained or published language model",
    "export": "write a checkpoint in mamba-ssm's or HF transformers' format",
{%- endif %}
    "extrapolate": "a generated task's accuracy at other sequence lengths",
{%- if cookiecutter.task == 'language_model' %}
    "evaluate": "lm-evaluation-harness tasks (pip install -e '.[eval]')",
{%- endif %}
}
OVERVIEW = "\n".join(
    [
        "usage: python -m {package} <command> [options]",
        "",
        "Train and use a Mamba model. Commands:",
        *(f"  {name:12s} {what}" for name, what in COMMAND_LIST.items()),
        "",
        "`python -m {package} <command> --help` lists a command's options;",
        "`python -m {package} fit --config configs/default.yaml --print_config` the whole config.",
    ]
)
EVALUATING = ("validate", "test", "predict")  # the Lightning commands that read a checkpoint
NET = "model.init_args.net.init_args"  # the network's arguments in a parsed config
LOCKS: list[RunLock] = []  # the runs this process holds; main() releases them


def not_an_advert(record: logging.LogRecord) -> bool:
    """Lightning logs a tip for its cloud logger on every run; it says nothing about the run."""
    return not str(record.msg).startswith("💡 Tip")


def quiet_lightning() -> None:
    """Leave out what is not about this run: the tip above, torch's deprecation warning for
    Lightning's own use of LeafSpec (once per process, four times under DDP), and the advice
    to re-create the checkpoint callbacks when validate/test/predict read a checkpoint."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(not_an_advert)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # validate/test/predict restore only weights: the run's checkpoint callbacks do not apply
    warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`, callbacks")


class MambaCLI(LightningCLI):
    def add_arguments_to_parser(self, parser):
        parser.add_class_arguments(RunConfig, "run")
        # `--model.net.backbone.d_model=...` without a config: the task this project was made for
        parser.set_defaults({"model": {"class_path": f"{__package__}.module.{DEFAULT_MODULE}"}})
{%- if cookiecutter.task == 'language_model' %}
        # the network's size comes from the data: its vocabulary
        parser.link_arguments("data.vocab_size", f"{NET}.vocab_size", apply_on="instantiate")
{%- else %}
        # the network's sizes come from the data: its channels and classes
        for name in ("num_channels", "num_classes"):
            parser.link_arguments(f"data.{name}", f"{NET}.{name}", apply_on="instantiate")
{%- endif %}

    def run_paths(self) -> tuple[str, Path, Path]:
        config = self.config[self.subcommand] if self.subcommand else self.config
        run = config.run
        run_id = run.id or derive_run_id(config)
        run_dir = Path(run.root) / run_id
        log_dir = Path(run.log_root or run.root) / run_id
        return run_id, run_dir, log_dir

    def parse_arguments(self, parser, args) -> None:
        """Parse, then check --ckpt_path before anything reads it (LightningCLI loads it next)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        given = self.config[subcommand].get("ckpt_path") if subcommand else None
        self.given_checkpoint = None
{%- if cookiecutter.task == 'language_model' %}
        weights = self.config[subcommand].get(f"{NET}.init_from")
        if weights is not None:
            self.check_given_shape(parser, args, subcommand, weights)
{%- endif %}
        if subcommand in EVALUATING and given is None{% if cookiecutter.task == 'language_model' %} and weights is None{% endif %}:
            raise ValueError(
                f"{subcommand} needs trained weights: without --ckpt_path it would "
                f"{subcommand} a randomly initialised model. Give --ckpt_path=runs/<id>/"
                "checkpoints/best.ckpt{% if cookiecutter.task == 'language_model' %} (or published weights with --model.net.init_from){% endif %}"
            )
        if given is None or given in ("last", "best", "hpc", "registry") or "://" in str(given):
            return
        given = Path(given)
        if not given.is_file():
            raise FileNotFoundError(
                f"--ckpt_path={given}: no such file. Leave --ckpt_path out to resume this "
                "run's own last.ckpt, or give an existing .ckpt file."
            )
        if problem := unreadable(given):
            raise ValueError(
                f"--ckpt_path={given} is not a checkpoint written by fit ({problem}); give a "
                "last.ckpt or best.ckpt, or leave --ckpt_path out to resume this run's own."
            )
        self.given_checkpoint = given
{%- if cookiecutter.task == 'language_model' %}

    def check_given_shape(self, parser, args, subcommand: str, weights: str) -> None:
        """init_from's checkpoint fixes the network: each backbone field the config files or the
        command line give, a default's value included, must agree with it."""
        given = parser.parse_args(args, defaults=False)[subcommand].get(NET)
        backbone = given.get("backbone") if given is not None else None
        revision = self.config[subcommand].get(f"{NET}.init_revision")
        read_checkpoint(weights, revision).refuse_contradictions(
            backbone.as_dict() if backbone is not None else {},
            given.get("tie_embeddings") if given is not None else None,
        )

    def record_the_network(self) -> None:
        """The run's config.yaml describes the network it trains: with init_from, the shape the
        checkpoint gave, whatever the config left out."""
        config = self.config[self.subcommand]
        if config.get(f"{NET}.init_from") is None:
            return
        net = self.model.net
        for name, value in net.config["backbone"].items():
            if isinstance(value, dict):  # attn_cfg
                for key, entry in value.items():
                    config[f"{NET}.backbone.{name}.{key}"] = entry
            else:
                config[f"{NET}.backbone.{name}"] = value
        config[f"{NET}.tie_embeddings"] = net.tie_embeddings
{%- endif %}

    def instantiate_trainer(self, **kwargs):
        """The Trainer of the config, rooted in the run's folder, with the run's callbacks."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        run_id, run_dir, log_dir = self.run_paths()
        self.run_id, self.run_dir = run_id, run_dir
        self.undo = undo = UndoFailedStart(run_dir, log_dir)  # before anything can write there
        ckpt_dir = run_dir / CHECKPOINTS
        self.resume_from = None
        if self.subcommand != "fit":
            return self.instantiate_evaluation_trainer(trainer, kwargs)
        if config.get("ckpt_path") is None:
            self.resume_from = resume_checkpoint(ckpt_dir)
        kwargs.update(device_settings(trainer, self.model.net.backbone.config.mixer))
        if trainer.get("default_root_dir") is None:
            kwargs["default_root_dir"] = str(run_dir)
        if trainer.get("logger") in (None, True):
            # A fixed folder per run id (no version_N): a resumed run appends to the same run.
            kwargs["logger"] = FlushedTensorBoardLogger(save_dir=str(log_dir), name="", version="")
        plugins = trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
        # last.ckpt is written at least every `checkpoint_minutes` of training (Lightning's
        # time-based checkpoint), and by LastCheckpoint after each validation, at the end and
        # on SIGINT/SIGTERM. No -v1 copies: a restart overwrites the same files.
        callbacks += [
            BestCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=config.run.monitor,
                mode=config.run.mode,
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            TimedCheckpoint(
                dirpath=ckpt_dir,
                save_top_k=0,
                save_last=True,
                train_time_interval=timedelta(minutes=config.run.checkpoint_minutes),
                enable_version_counter=False,
            ),
            LastCheckpoint(ckpt_dir / LAST),
            ContinueTensorBoard(),
            LearningRateMonitor(logging_interval="step"),
            LoggedThroughput(),
            Announce(f"run {run_id}: writing to {run_dir}"),
            undo,
        ]
        bar = trainer.get("enable_progress_bar") in (None, True)
        if bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            # a terminal redraws tqdm's bar in place; a file or pipe gets whole lines. Either
            # reads the logged loss from the GPU only when it shows it, not on every step
            tty = sys.stdout.isatty()
            callbacks.append(Bar(refresh_rate=10) if tty else LineProgress())
        summary = trainer.get("enable_model_summary") in (None, True)
        if summary and not any(isinstance(c, ModelSummary) for c in callbacks):
            callbacks.append(ParameterSummary())
            kwargs["enable_model_summary"] = False  # Lightning's own stays out, and says nothing
        kwargs["callbacks"] = callbacks
        return self.new_trainer(kwargs)

    def new_trainer(self, kwargs):
        """LightningCLI's Trainer; a setting Lightning refuses (a device this machine lacks, a
        strategy it cannot run, a package it needs: torch_xla for a TPU) is a bad input: one
        line, not its traceback."""
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ModuleNotFoundError) as err:
            raise ValueError(f"trainer: {' '.join(str(err).split())}") from None

    def instantiate_evaluation_trainer(self, trainer, kwargs):
        """validate and test read a checkpoint and print; predict also writes its predictions
        beside the checkpoint's run (PredictionWriter). No config.yaml, no logs."""
        self.save_config_callback = None  # config.yaml belongs to the fit that made the run
        kwargs.update(device_settings(trainer, self.model.net.backbone.config.mixer))
        if trainer.get("logger") is None:
            kwargs["logger"] = False
        if self.subcommand == "predict":
            callbacks = trainer.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
            kwargs["callbacks"] = [*callbacks, PredictionWriter(self.predictions_path())]
        return self.new_trainer(kwargs)

    def predictions_path(self) -> Path:
        """runs/<id>/predictions/<checkpoint name>.jsonl for runs/<id>/checkpoints/<name>.ckpt;
{%- if cookiecutter.task == 'language_model' %}
        beside any other checkpoint; in this config's run folder for weights from init_from."""
        given = self.given_checkpoint
        if given is None:
            return self.run_dir / "predictions" / "init_from.jsonl"
{%- else %}
        beside any other checkpoint."""
        given = self.given_checkpoint
{%- endif %}
        return run_folder(given) / "predictions" / f"{given.stem}.jsonl"

    def check_checkpoint_fits(self) -> None:
        """validate, test and predict: a --ckpt_path of another model (another shape, another
        task) is refused in one line, by the same comparison that guards fit's resume."""
        if self.given_checkpoint is None:
            return
        path = self.given_checkpoint
        saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        if problem := other_model(saved["state_dict"], self.model.state_dict()):
            raise ValueError(
                f"--ckpt_path={path} holds another model than this config builds ({problem}); "
                f"{self.subcommand} it with the config it was trained with (the config.yaml "
                "fit wrote beside its TensorBoard logs)"
            )

    before_validate = before_predict = check_checkpoint_fits

    def before_test(self):
        if isinstance(self.datamodule, BaseDataModule):  # data without a test split: no test
            self.datamodule.check_test_split()
        self.check_checkpoint_fits()

    def before_fit(self):
        self.model.use_cuda_graphs(self.trainer, announce=False)  # refuse `on` before any file
{%- if cookiecutter.task == 'language_model' %}
        self.record_the_network()
{%- endif %}
        check_monitors(self.trainer, self.model, self.datamodule)
        resumed = self.resume_from or self.given_checkpoint
        world_size = self.trainer.world_size
        if resumed is not None and (problem := cannot_resume(resumed, self.model, world_size)):
            raise ValueError(problem)
        if all(os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK")):
            lock = RunLock(self.run_dir)  # the launching process; DDP's other ranks join it
            lock.acquire()  # refused while another process trains this run
            LOCKS.append(lock)
        if self.resume_from is not None:
            # the run's own checkpoint directory is meant to be reused: no warning about it
            warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
            rank_zero_info(f"run {self.run_id}: resuming from {self.resume_from}")
            self.config_init.fit["ckpt_path"] = str(self.resume_from)

    def after_fit(self):
        """One summary: where the run ended, its last validation, the best checkpoint, curves.

        A start that trained no step (max_steps=0, or a run already at its end) takes back the
        files it added, as a failed start does: a run folder without a trained step, or a
        summary naming a checkpoint that was never written, would only look like a run."""
        trainer = self.trainer
        if not self.undo.trained and trainer.is_global_zero:
            self.undo.undo()
        metrics = trainer.callback_metrics
        shown = ", ".join(
            f"{name} {float(metrics[name]):.4g}" for name in sorted(metrics) if "val/" in name
        )
        best = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
        lines = [
            f"run {self.run_id}: finished at step {trainer.global_step}"
            + (f"; last validation: {shown}" if shown else "")
        ]
        if best is not None and best.best_model_path:
            lines.append(
                f"best checkpoint ({best.monitor} {float(best.best_model_score):.4g}): "
                f"{best.best_model_path}"
            )
        if (last := self.run_dir / CHECKPOINTS / LAST).is_file():
            lines.append(f"last checkpoint: {last}")
        logs = trainer.logger.log_dir if trainer.logger is not None else None  # None: fast_dev_run
        if logs is not None and Path(logs).is_dir():
            lines.append(f"curves: tensorboard --logdir {logs}")
        rank_zero_info("\n".join(lines))


def check_monitors(trainer, model: MambaModule, data) -> None:
    """A callback that watches a validation metric this run does not log (run.monitor, an
    EarlyStopping, the curriculum) is refused before training, not at the first validation."""
    logged = model.validation_metric_names(data)
    for callback in trainer.callbacks:
        monitor = getattr(callback, "monitor", None)
        if isinstance(monitor, str) and monitor.startswith("val/") and monitor not in logged:
            owner = (
                "run.monitor" if isinstance(callback, BestCheckpoint) else type(callback).__name__
            )
            close = difflib.get_close_matches(monitor, logged, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(
                f"{owner}: monitor={monitor!r} is not a metric this run logs; {hint}"
                f"it logs {', '.join(logged)} (data.val_lengths adds val/...@<length>)"
            )


class PredictionWriter(BasePredictionWriter):
    """Writes what predict_step returns, one JSON line per sample (with its index in the
    predict split), to `path`, and says where. The file appears whole at the end (a stopped
    predict leaves none); under DDP each rank writes its own share (`<name>.rank<r>.jsonl`)."""

    def __init__(self, path: Path):
        super().__init__(write_interval="batch")
        self.path, self.partial, self.out, self.count = path, None, None, 0

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.world_size > 1:
            self.path = self.path.with_suffix(f".rank{trainer.global_rank}.jsonl")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        self.out, self.count = self.partial.open("w"), 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        indices = batch_indices or range(self.count, self.count + len(prediction))
        for index, row in zip(indices, prediction, strict=True):
            self.out.write(json.dumps({"index": int(index), **row}) + "\n")
        self.count += len(prediction)

    def on_predict_end(self, trainer, pl_module) -> None:
        self.out.close()
        os.replace(self.partial, self.path)
        rank_zero_info(f"predict: wrote {self.count} predictions to {self.path}")

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.out is not None:
            self.out.close()
            self.partial.unlink(missing_ok=True)


class UndoFailedStart(Callback):
    """A start that stops on a bad input leaves the run's folders as it found them.

    Lightning creates the TensorBoard event file and writes config.yaml while it sets up,
    before the data can be found bad (a text shorter than one window, say). If this start stops
    on a bad input before its first optimizer step, the files and folders it added are removed:
    a run folder without a trained step would only look like a run.
    """

    def __init__(self, *folders: Path):
        self.watched = []
        for folder in folders:
            while not folder.parent.exists():  # watch the highest folder this start may create
                folder = folder.parent
            self.watched.append(folder)
        self.before, self.trained = self.listing(), False

    def listing(self) -> set[Path]:
        return {p for f in self.watched if f.exists() for p in (f, *f.rglob("*"))}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.trained = True

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.trained or not trainer.is_global_zero or input_error(exception) is None:
            return
        self.undo()

    def undo(self) -> None:
        """Remove the files and folders this start added."""
        for path in sorted(self.listing() - self.before, key=lambda p: -len(p.parts)):
            if path.is_dir():
                path.rmdir()  # deepest first, so it is empty by now
            else:
                path.unlink(missing_ok=True)


def main(args: list[str] | None = None) -> MambaCLI | None:
    """Run the command line.

    Exit codes: 2 for a bad input (one line on stderr says which and what to do), 128 + the
    signal number for a run stopped by SIGINT/SIGTERM after saving last.ckpt.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(OVERVIEW.format(package=__package__), file=sys.stdout if argv else sys.stderr)
        raise SystemExit(0 if argv else 2)
    protect_standard_streams()  # a closed pipe (`| tee`) must not stop a run mid-save
    quiet_lightning()
    try:
        if not argv[0].startswith("-") and argv[0] not in COMMAND_LIST:
            close = difflib.get_close_matches(argv[0], COMMAND_LIST, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ValueError(
                f"{argv[0]!r} is not a command; {hint}the commands are "
                f"{', '.join(COMMAND_LIST)} (python -m {__package__} --help says what each does)"
            )
        if argv[0] in COMMANDS:  # {{ 'generate, export, ...' if cookiecutter.task == 'language_model' else 'extrapolate' }}: no Trainer involved
            run(argv[0], argv[1:])
            return None
        cli = MambaCLI(
            MambaModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={  # exit_on_error: a refused argument is one line, see below
                "exit_on_error": False,
                "prog": f"python -m {__package__}",
            },
            args=args,
            auto_configure_optimizers=False,
        )
    except Interrupted as stop:  # every rank stops after the same step
        leave_process_group()
        rank_zero_info(f"{stop}; start the same command again to resume")
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        message = input_error(err, argv, options_under)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        for lock in LOCKS:
            lock.release()
        LOCKS.clear()
    leave_process_group()
    return cli


def leave_process_group() -> None:
    """Under DDP: wait until every rank is done, then close the process group.

    Without this, a gloo rank that exits at the same moment as its peer can abort with SIGABRT
    (and fail a run that had finished), and NCCL warns about a process group left open.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":  # NCCL must be told the rank's own GPU
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
        dist.destroy_process_group()


def options_under(prefix: str) -> list[str]:
    """The names one level below a dotted prefix of the CLI's options (for "did you mean")."""

    def params(*objects) -> list[str]:
        found = []
        for obj in objects:
            found += [p for p in inspect.signature(obj).parameters if p not in ("self", "net")]
        return found

    tree = {
        "trainer": params(Trainer),
        "model": params(MambaModule) + ["net"],
        "model.net": params({{ 'MambaLM' if cookiecutter.task == 'language_model' else 'MambaClassifier' }}),
        "model.net.backbone": [f.name for f in fields(BackboneConfig)],
        "run": [f.name for f in fields(RunConfig)],
    }
    return tree.get(prefix.replace(".init_args", ""), [])
