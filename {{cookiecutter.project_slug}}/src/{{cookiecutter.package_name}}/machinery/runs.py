"""How a run survives: stable run directories, atomic checkpoints, resume, a clean stop on signals.

A run lives in `<run.root>/<id>/` and its checkpoints in `checkpoints/` there:

    last.ckpt       the newest state, written at least every `run.checkpoint_minutes`
    previous.ckpt   the last.ckpt before it: the fallback if last.ckpt is ever unreadable
    best.ckpt       the best validation accuracy so far

Every file is written to `<name>.tmp`, flushed to disk, then renamed over `<name>`: a rename
is atomic, so a kill at any moment leaves either the old or the new file, never half of one,
and never none: previous.ckpt is made as a second name (a hard link) of the old last.ckpt
before the new one replaces it, so last.ckpt itself is never missing. A checkpoint taken at
the end of a training step is renamed into place only once that step's metrics (and its
validation's) are in the TensorBoard log, so a run resumed after a kill -9 continues its
curves without a gap.
A run is held by one process at a time: `fit` takes an advisory lock on `<run>/.lock`, which
the operating system releases when the process ends, however it ends (kill -9 included).
On SIGINT (Ctrl-C, Modal's preemption notice) or SIGTERM the run finishes its current
optimizer step, writes last.ckpt and exits with 128 + the signal number, so a platform that
retries non-zero exits (Modal does) starts it again, and the restart resumes.
"""

import errno
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.event_pb2 import Event, SessionLog

from .runid import RULE, is_run_id

LAST, PREVIOUS = "last.ckpt", "previous.ckpt"


@dataclass
class RunConfig:
    """Where a run lives, how often it checkpoints, and which checkpoint is the best.

    Args:
        id: stable name of the run; default: config file name + hash of model/data/seed.
        root: checkpoints go to <root>/<id>/checkpoints.
        log_root: TensorBoard logs go to <log_root>/<id>; default: root.
        checkpoint_minutes: write last.ckpt at least this often while training.
        monitor: the validation metric that picks best.ckpt, e.g. val/acc or val/loss@4096.
        mode: max or min: whether a higher or a lower `monitor` is better.
    """

    id: str | None = None
    root: str = "runs"
    log_root: str | None = None
    checkpoint_minutes: float = 10.0
    monitor: str = "val/acc"
    mode: Literal["max", "min"] = "max"

    def __post_init__(self):
        if self.id is not None and not is_run_id(self.id):
            raise ValueError(
                f"run.id={self.id!r}: use {RULE}; it names a directory. Pick such a name."
            )
        if not self.checkpoint_minutes > 0:
            raise ValueError(
                f"run.checkpoint_minutes={self.checkpoint_minutes} must be > 0, e.g. 10"
            )


# model settings that change how fast a run goes, not what it learns: not part of the run id
POLICIES = ("kernels", "cuda_graphs")


def derive_run_id(config) -> str:
    """<config stem>-<8 hex>: the same experiment config gives the same id on every start."""
    configs = config.get("config") or []
    stem = Path(str(configs[-1])).stem if configs else "run"
    experiment = {}
    for key in ("model", "data", "seed_everything"):
        value = config.get(key)
        experiment[key] = value.as_dict() if hasattr(value, "as_dict") else value
    model = experiment["model"]
    if isinstance(model, dict) and isinstance(model.get("init_args"), dict):
        # the kernel policy and graph replay are not part of the experiment
        args = {k: v for k, v in model["init_args"].items() if k not in POLICIES}
        experiment["model"] = {**model, "init_args": args}
    digest = hashlib.sha256(json.dumps(experiment, sort_keys=True, default=str).encode())
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', stem)}-{digest.hexdigest()[:8]}"


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to `<name>.tmp`, fsync, rename over `<name>`; last.ckpt's old copy is kept.

    Between hold() and publish() the renames wait: what is saved is written and flushed, but
    the files it replaces stay in place until publish() (LastCheckpoint holds them while a
    training step's metrics are not yet logged).
    """

    def __init__(self):
        super().__init__()
        self.held = False
        self.pending: dict[Path, Path] = {}  # file -> its written .tmp, in the order saved

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if "://" in str(path):  # object stores have their own atomic uploads
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        if self.held:
            self.pending[path] = tmp  # a second save of the same file rewrote the same .tmp
        else:
            self.rename(tmp, path)

    def hold(self) -> None:
        self.held = True

    def publish(self) -> None:
        """Rename what was saved while held into place, and stop holding."""
        self.held = False
        pending, self.pending = self.pending, {}
        for path, tmp in pending.items():
            self.rename(tmp, path)

    def discard(self) -> None:
        """Stop holding and delete what was saved while held: the old files stay."""
        self.held = False
        pending, self.pending = self.pending, {}
        for tmp in pending.values():
            tmp.unlink(missing_ok=True)

    @staticmethod
    def rename(tmp: Path, path: Path) -> None:
        if path.name == LAST and path.exists():
            keep = path.with_name(PREVIOUS + ".tmp")
            keep.unlink(missing_ok=True)
            try:  # a second name for the current last.ckpt: no copy, and last.ckpt stays
                os.link(path, keep)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(path, keep)
            os.replace(keep, path.with_name(PREVIOUS))
        os.replace(tmp, path)  # last.ckpt is the old file up to this instant, the new one after
        directory = os.open(path.parent, os.O_RDONLY)
        try:  # make the renames themselves durable
            os.fsync(directory)
        finally:
            os.close(directory)


class RunLock:
    """`<run>/.lock`, held with flock by the one process that trains the run.

    The holder writes its pid, host and start time into the file, so a refused start can say
    who holds the run. The kernel drops the lock when the holder exits, even by kill -9, so a
    stale file never blocks the next start.
    """

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")  # noqa: SIM115 (held open for the whole run)
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            raise RuntimeError(
                f"run {self.path.parent.name} is being trained by {holder} "
                f"({self.path}); wait for it to end or stop it, or start under another --run.id"
            ) from None
        file.seek(0)
        file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        file.write(f"pid {os.getpid()} on {socket.gethostname()} since {started}\n")
        file.flush()
        self.file = file

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing drops the flock
            self.file = None


class PipeSafe:
    """A text stream whose writes never fail: once the reader is gone, they are dropped.

    `fit ... | tee log` and Ctrl-C: the shell's SIGINT stops `tee` too, and the next write to
    stdout (the progress bar, a print) would raise BrokenPipeError in the middle of the step
    that saves the checkpoint. With stdout and stderr wrapped, the run saves and exits as it
    would in a terminal.
    """

    def __init__(self, stream):
        self.stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self.stream.write(text)
            except (BrokenPipeError, ValueError, OSError):  # reader gone, or stream closed
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.broken = True

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self.stream, name)


def protect_standard_streams() -> None:
    """Wrap sys.stdout and sys.stderr in PipeSafe (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, PipeSafe):
            setattr(sys, name, PipeSafe(stream))


def unreadable(path: Path) -> str | None:
    """Why `path` is not a complete Lightning checkpoint, or None if it is one."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        return "not a file written by torch.save, or one cut short"
    try:  # mmap: the structure is read, the tensors' bytes are not (Lightning loads them next)
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # truncated zip, bad pickle, I/O error: all mean unusable
        return f"{type(err).__name__}: {err}"
    missing = {"state_dict", "global_step", "loops", "optimizer_states"} - set(state)
    return f"missing {sorted(missing)}" if missing else None


def cannot_resume(path: Path, model: torch.nn.Module, world_size: int) -> str | None:
    """Why the checkpoint at `path` cannot continue as this start (one read of its structure):
    its weights are another model's, or another number of processes trained it. Each process
    draws its own batch of data.batch_size from its share of the samples, so another number
    means another batch and another data order. None when it can."""
    saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if problem := other_model(saved["state_dict"], model.state_dict()):
        return (
            f"{path} holds another model than this config builds ({problem}); resume with the "
            "model config it was trained with, or start afresh under a new --run.id."
        )
    trained = saved.get("world_size")  # None in checkpoints that do not say
    if trained is not None and trained != world_size:
        return (
            f"{path} was trained by {trained} process(es) and this start has {world_size}: each "
            "process draws its own batch, so the batch size and the data order would change; "
            f"resume with --trainer.devices (x num_nodes) = {trained}, or start afresh under a "
            "new --run.id"
        )
    return None


def other_model(saved: dict, wanted: dict) -> str | None:
    """How the weights `saved` differ from the state dict `wanted`, or None if they fit."""
    for name, tensor in wanted.items():
        if name not in saved:
            return f"it has no {name}"
        if saved[name].shape != tensor.shape:
            shapes = f"{tuple(saved[name].shape)} there, {tuple(tensor.shape)} here"
            return f"{name} is {shapes}"
    extra = sorted(saved.keys() - wanted.keys())
    return f"it has {extra[0]}, which this model lacks" if extra else None


def resume_checkpoint(checkpoints: Path) -> Path | None:
    """The newest readable checkpoint of a run: last.ckpt, else previous.ckpt, else None.

    Raises RuntimeError when checkpoints exist but none can be read: starting over would
    silently throw the run away.
    """
    found = [checkpoints / name for name in (LAST, PREVIOUS) if (checkpoints / name).is_file()]
    problems = []
    for path in found:
        problem = unreadable(path)
        if problem is None:
            if problems:
                warnings.warn(f"{problems[0]}; resuming from {path} instead", stacklevel=2)
            return path
        problems.append(f"{path} is unreadable ({problem})")
    if problems:
        raise RuntimeError(
            "; ".join(problems) + ". Resume from another file with --ckpt_path=<file>, or "
            "start afresh under a new --run.id (or delete the folder)."
        )
    return None


class FlushedTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, writing each logging step to the file at once.

    The stock writer queues up to 10 events or 2 minutes before writing, so a kill -9 just
    after a checkpoint could lose steps that the resumed run will not log again (it starts
    after the checkpoint's step). One small write per logging step closes that gap.
    """

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        super().log_metrics(metrics, step)
        self.experiment.flush()


class ContinueTensorBoard(Callback):
    """A resumed run continues its TensorBoard curves instead of drawing over them.

    A killed attempt may have logged steps after its last checkpoint; the resumed run logs
    those steps again. TensorBoard drops earlier events from the step of a START marker on,
    so one marker at the first step the resumed run logs leaves a single, continuous curve.
    """

    def on_fit_start(self, trainer, pl_module) -> None:
        self.pending = trainer.ckpt_path is not None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.pending:
            return
        self.pending = False
        step = trainer.global_step  # the step Lightning logs at (one optimizer)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                marker = Event(step=step, session_log=SessionLog(status=SessionLog.START))
                logger.experiment.file_writer.add_event(marker)


class BestCheckpoint(ModelCheckpoint):
    """best.ckpt: the checkpoint with the best `monitor`, and of equal scores the latest.

    Lightning keeps the first of equal scores. A metric that saturates (accuracy 1.0, or a
    loss of exactly 0.0 in float32) would then keep the first checkpoint to reach it, although
    the training after it went on improving what the metric no longer shows: for induction
    heads, how far beyond its validation length the model still recalls (README.md).
    """

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        best = self.best_model_score
        if current is not None and best is not None and self.save_top_k == 1:
            tie = float(current) == float(best)
            if trainer.strategy.reduce_boolean_decision(tie):  # every rank decides alike
                return True
        return super().check_monitor_top_k(trainer, current)


class TimedCheckpoint(ModelCheckpoint):
    """Lightning's time-based last.ckpt, minus its end-of-training save.

    At on_train_end the epoch counter has moved on while the data loader is still mid-epoch,
    so a run resumed from that file would continue on the next epoch's batches. LastCheckpoint
    saves the final state at the last step instead.
    """

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if not at_epoch_end(trainer):  # see at_epoch_end: the interval's save comes a step later
            super().on_train_batch_end(trainer, *args, **kwargs)

    def on_train_end(self, trainer, pl_module) -> None:
        pass


def at_epoch_end(trainer) -> bool:
    """Whether the step just taken was the last batch of an epoch.

    A checkpoint written then resumes on the wrong batches: Lightning starts the next epoch but
    replays the finished epoch's loader position onto it. So no checkpoint is written at that
    step; the time-based save, a signal's save and a stop (max_time) wait for the next one.
    """
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


class Interrupted(Exception):
    """Training stopped on a signal after writing last.ckpt."""

    def __init__(self, signum: int, checkpoint: Path):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name}; saved {checkpoint}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention for "killed by this signal"


class LastCheckpoint(Checkpoint):
    """Keeps last.ckpt current: after each validation, at the last step, and on a signal.

    The last step is the one that reaches max_steps, or after which another callback stops
    the run (the Timer of max_time): Lightning runs Checkpoint callbacks after all others, so
    their decision is known here. A stop asked for at an epoch's last batch is carried to the
    next step (see at_epoch_end). Lightning's time-based checkpoint (`run.checkpoint_minutes`)
    covers the time in between.
    On SIGINT/SIGTERM the handler only records the signal; after the optimizer step the
    checkpoint is written and Interrupted is raised when the next batch starts, so the
    finished step's metrics are logged (and a validation due at that step has run) as in an
    uninterrupted run. Under DDP the ranks agree on the decision (one small all-reduce per
    step) because saving a checkpoint is collective. A second Ctrl-C stops at once.
    What is saved during a training step, here or by TimedCheckpoint, appears on disk only
    once Lightning has logged the step's metrics and run a validation due at it (at the next
    batch, the validation's end or the end of training): a kill -9 before would leave a
    checkpoint to resume after a step whose loss or validation the log never received.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, path: Path):
        self.path = path
        self.received = self.stop = 0
        self.saved_step = -1
        self.previous = {}
        self.stop_next = False
        self.io: AtomicCheckpointIO | None = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["world_size"] = trainer.world_size  # resuming under another is refused

    def save(self, trainer) -> None:
        if self.saved_step != trainer.global_step:
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_step = trainer.global_step

    def handle(self, signum, _frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.received = signum
        print(f"\n{signal.Signals(signum).name}: saving after this step (Ctrl-C again to quit)")

    def on_train_start(self, trainer, pl_module) -> None:
        # Registered here, after Lightning's own SIGTERM handler, which it replaces.
        self.received = self.stop = 0
        self.stepped = trainer.global_step
        try:
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: leave signals alone
            self.previous = {}
        io = trainer.strategy.checkpoint_io
        self.io = io if isinstance(io, AtomicCheckpointIO) else None

    def publish(self) -> None:
        if self.io is not None:
            self.io.publish()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.stepped:
            return  # a batch that only accumulated gradients: no optimizer step to save after
        self.stepped = trainer.global_step
        last_step = 0 < trainer.max_steps <= trainer.global_step
        if at_epoch_end(trainer) and not last_step:
            self.stop_next |= trainer.should_stop
            trainer.should_stop = False
            return
        trainer.should_stop |= self.stop_next
        self.stop_next = False
        if trainer.should_stop or last_step:
            # The last step: save now, while the loops' counters still match the data
            # loader's position (at on_train_end Lightning has already moved them on).
            self.save(trainer)
        if not self.previous or self.stop:
            return
        signum = self.received
        if trainer.world_size > 1:
            flag = torch.tensor(signum, device=trainer.strategy.root_device)
            signum = int(trainer.strategy.reduce(flag, reduce_op="max"))
        if signum:
            self.save(trainer)
            self.stop = signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Lightning logs a step's metrics after the callbacks' on_train_batch_end, so the
        # previous step's are in the log now, and what was saved at its end may appear.
        self.publish()
        if self.stop:
            raise Interrupted(self.stop, self.path)
        if self.io is not None:
            self.io.hold()

    def on_validation_end(self, trainer, pl_module) -> None:
        # A run resumed from a checkpoint taken before a validation at its step skips that
        # validation, so what was saved at the step's end waits for it: this save replaces it.
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.save(trainer)
        self.publish()

    def on_train_end(self, trainer, pl_module) -> None:
        self.restore()
        self.publish()
        self.save(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.restore()
        if self.io is not None:  # the step's metrics may not be in the log: keep the old files
            self.io.discard()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    # Random number generators travel in every checkpoint, so dropout or any other random op
    # draws the same numbers after a resume as in an uninterrupted run. (Data order does not
    # depend on them: the loaders keep their own state.) Plain types only: Lightning loads
    # checkpoints with torch.load(weights_only=True).
    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (name, keys.tolist(), pos, has_gauss, gauss)
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state}
        state["python"] = random.getstate()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return {"rng": state}

    def load_state_dict(self, state_dict: dict) -> None:
        rng = state_dict.get("rng")
        if not rng:
            return
        torch.set_rng_state(rng["torch"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
