"""How a run is started: LightningCLI plus stable run directories and automatic resume.

    python -m <package> fit --config configs/default.yaml [--trainer.max_steps=...]
    python -m <package> fit --config configs/default.yaml --print_config
    python -m <package> generate --ckpt_path <ckpt> --prompt "Once upon a time"
    python -m <package> export --ckpt_path <ckpt> --format mamba_ssm|hf --out <folder>

Every run has an id (`--run.id`, or one derived from the config) and lives in
`<run.root>/<id>/`: checkpoints in `checkpoints/` (last.ckpt, best.ckpt), TensorBoard events in
`<run.log_root>/<id>/`. Starting `fit` again with the same id resumes from last.ckpt, so a
restart never silently begins from scratch.
"""

import argparse
import sys
import traceback
import warnings
from datetime import timedelta
from pathlib import Path

import torch
from lightning.fabric.plugins.io import CheckpointIO
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from .backbone import BackboneConfig
from .module import MambaModule
from .runs import (
    LAST,
    AtomicCheckpointIO,
    ContinueTensorBoard,
    FlushedTensorBoardLogger,
    Interrupted,
    LastCheckpoint,
    RunConfig,
    TimedCheckpoint,
    derive_run_id,
    resume_checkpoint,
)


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
        ckpt_dir = run_dir / "checkpoints"
        self.resume_from = None
        if self.subcommand == "fit" and config.get("ckpt_path") is None:
            self.resume_from = resume_checkpoint(ckpt_dir)
        if trainer_config.get("precision") is None:
            trainer_config["precision"] = default_precision()
        trainer_config.setdefault("default_root_dir", str(run_dir))
        if trainer_config.get("logger") in (None, True):
            # A fixed folder per run id (no version_N): a resumed run appends to the same run.
            trainer_config["logger"] = FlushedTensorBoardLogger(
                save_dir=str(log_dir), name="", version=""
            )
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list | tuple) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        trainer_config["plugins"] = plugins
        minutes = config.run.checkpoint_minutes
        callbacks = [
            self._get(self.config_init, c) for c in self._parser(self.subcommand).callback_keys
        ]
        # last.ckpt is written at least every `checkpoint_minutes` of training (Lightning's
        # time-based checkpoint), and by LastCheckpoint after each validation, at the end and
        # on SIGINT/SIGTERM. No -v1 copies: a restart overwrites the same files.
        callbacks += [
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor="val/acc",
                mode="max",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            ),
            TimedCheckpoint(
                dirpath=ckpt_dir,
                save_top_k=0,
                save_last=True,
                train_time_interval=timedelta(minutes=minutes),
                enable_version_counter=False,
            ),
            LastCheckpoint(ckpt_dir / LAST),
            ContinueTensorBoard(),
            LearningRateMonitor(logging_interval="step"),
            ThroughputMonitor(batch_size_fn=lambda batch: batch[0].shape[0], length_fn=_tokens),
        ]
        return self._instantiate_trainer(trainer_config, callbacks)

    def before_fit(self):
        given = self.config_init.fit.get("ckpt_path")
        special = given in ("last", "best", "hpc", "registry") or "://" in str(given)
        if given is not None and not special and not Path(given).is_file():
            raise FileNotFoundError(
                f"--ckpt_path={given}: no such file. Leave --ckpt_path out to resume this "
                f"run's own last.ckpt (run id {self.run_id}), or give an existing .ckpt file."
            )
        if self.resume_from is not None:
            # the run's own checkpoint directory is meant to be reused: no warning about it
            warnings.filterwarnings("ignore", r"Checkpoint directory .* exists and is not empty")
            rank_zero_info(f"run {self.run_id}: resuming from {self.resume_from}")
            self.config_init.fit["ckpt_path"] = str(self.resume_from)
        else:
            rank_zero_info(f"run {self.run_id}: writing to {self.run_dir}")


def input_error(err: BaseException) -> str | None:
    """The message of a bad input, or None for anything else (which keeps its traceback).

    A bad input is a missing file, or an error raised by this package's own argument checks,
    which LightningCLI and jsonargparse wrap in a few layers of their own.
    """
    while (inner := err.__cause__ or err.__context__) is not None:
        err = inner
    if isinstance(err, FileNotFoundError):
        return str(err)
    frames = traceback.extract_tb(err.__traceback__)
    ours = frames and Path(__file__).parent in Path(frames[-1].filename).parents
    if ours and isinstance(err, ValueError | TypeError | RuntimeError):
        return str(err)
    return None


def main(args: list[str] | None = None) -> MambaCLI | None:
    """Run the command line.

    Exit codes: 2 for a bad input (one line on stderr says which and what to do), 128 + the
    signal number for a run stopped by SIGINT/SIGTERM after saving last.ckpt.
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in COMMANDS:  # ours, not Lightning's: no Trainer involved
        return run_command(COMMANDS[argv[0]], argv[1:])
    try:
        cli = MambaCLI(
            MambaModule,
            LightningDataModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            auto_configure_optimizers=False,
        )
    except Interrupted as stop:  # every rank stops after the same step
        leave_process_group()
        rank_zero_info(f"{stop}; start the same command again to resume")
        raise SystemExit(stop.exit_code) from None
    except Exception as err:
        message = input_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
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


# ------------------------------------------------------------------ generate and export
class CommandParser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, exit 2, like every other bad input (argparse would add its usage)."""
        print(f"error: {self.prog.split()[-1]}: {message}; see --help", file=sys.stderr)
        raise SystemExit(2)


def export(argv: list[str]) -> None:
    """Write a trained checkpoint as a folder in mamba-ssm's or HF transformers' format."""
    from .pretrained import FORMATS

    parser = CommandParser(prog=f"python -m {__package__} export")
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt written by fit")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="a new (or empty) folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out={out} exists and is not an empty folder; give a new one")
    model = _load_checkpoint(args.ckpt_path, "reference")
    model.save_pretrained(out, format=args.format)
    print(f"wrote {out} ({args.format} format)")


def generate(argv: list[str]) -> None:
    """Continue prompts with a trained or pretrained language model, through its recurrent state."""
    from .data.text import TextTokenizer
    from .pretrained import hub_file, looks_like_path

    parser = CommandParser(prog=f"python -m {__package__} generate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="a .ckpt written by fit")
    source.add_argument("--pretrained", help="a checkpoint folder or hub id")
    parser.add_argument("--revision", help="hub branch, tag or commit of --pretrained")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    prompts.add_argument("--prompts_file", help="a UTF-8 file with one prompt per line")
    parser.add_argument(
        "--tokenizer",
        help="bytes, a tokenizer.json or a hub id; default: the one the checkpoint was trained "
        "with, or the tokenizer.json in the --pretrained folder",
    )
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    parser.add_argument("--top_k", type=int, default=None, help="sample from the k likeliest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--impl", choices=("auto", "fused", "reference"), default="auto")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.temperature < 0 or (args.top_k or 1) < 1:
        raise ValueError(
            f"--max_new_tokens={args.max_new_tokens}, --temperature={args.temperature} and "
            f"--top_k={args.top_k} must be >= 1, >= 0 and >= 1"
        )
    if args.prompts_file is not None:
        if not Path(args.prompts_file).is_file():
            raise FileNotFoundError(f"--prompts_file={args.prompts_file}: no such file")
        texts = [line for line in Path(args.prompts_file).read_text().splitlines() if line]
    else:
        texts = args.prompt
    spec = args.tokenizer
    if args.ckpt_path is not None:
        model = _load_checkpoint(args.ckpt_path, args.impl)
        saved = torch.load(args.ckpt_path, map_location="cpu", mmap=True, weights_only=False)
        trained_on = saved.get("datamodule_hyper_parameters", {})
        if spec is None and "suffixes" in trained_on:  # trained on TextFile
            spec = trained_on.get("tokenizer", "bytes")
    else:
        model = MambaModule.from_pretrained(
            args.pretrained, args.revision, backbone=BackboneConfig(impl=args.impl)
        )
        if spec is None:  # the checkpoint's own tokenizer.json, where it ships one
            folder = Path(args.pretrained).expanduser()
            found = folder / "tokenizer.json" if folder.is_dir() else None
            if found is None and not looks_like_path(args.pretrained):
                found = hub_file(args.pretrained, "tokenizer.json", args.revision, required=False)
            spec = str(found) if found is not None and found.is_file() else None
    if spec is None:
        raise ValueError(
            "--tokenizer is needed: the model was not trained on text with a known tokenizer; "
            "give bytes, a tokenizer.json or a hub id (e.g. EleutherAI/gpt-neox-20b)"
        )
    tokenizer = TextTokenizer(spec)
    if tokenizer.vocab_size > model.hparams.vocab_size:
        raise ValueError(
            f"--tokenizer={spec} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocabulary of {model.hparams.vocab_size}; use the tokenizer it was trained with"
        )
    if model.backbone.impl == "fused":
        model.cuda()
    model.eval()
    torch.manual_seed(args.seed)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if not ids:
            raise ValueError(f"prompt {i + 1} encodes to no tokens; give it some text")
        prompt = torch.tensor([ids], device=model.device)  # (1, L)
        out = model.generate(prompt, args.max_new_tokens, args.temperature, args.top_k)
        print(("\n" if i else "") + tokenizer.decode(out[0].tolist()), flush=True)


def _load_checkpoint(path: str, impl: str) -> MambaModule:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--ckpt_path={path}: no such file; give a .ckpt written by fit")
    return MambaModule.load_for_device(path, impl=impl, map_location="cpu")


COMMANDS = {"export": export, "generate": generate}


def run_command(command, argv: list[str]) -> None:
    """Run one of our own subcommands; a bad input exits 2 with one line, like fit."""
    try:
        command(argv)
    except Exception as err:
        message = input_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
