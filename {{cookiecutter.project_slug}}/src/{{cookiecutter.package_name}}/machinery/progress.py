"""What a training run says while it runs: a progress line and its throughput.

    LineProgress      one line every `every` steps: step/max_steps, loss, steps/s, ETA; readable
                      in a terminal, a log file, `| tee` and Modal's logs alike
    LoggedThroughput  tokens, samples and FLOPs per second (and MFU on GPUs Lightning knows),
                      logged to TensorBoard without a GPU sync on every step
    Announce          where the run writes, once training begins
    ParameterSummary  Lightning's model summary without its FLOPs column, which stays 0 for
                      models without an example input (this one logs its FLOPs as it trains)
    NotLearning       one line when validation is still at chance long after runs that learn
                      have left it (a config adds it{% if cookiecutter.task == 'language_model' %}: configs/induction_heads_paper.yaml{% endif %})
    GradientNorms     each parameter's gradient norm before clipping, to TensorBoard: which
                      layers learn (`--trainer.callbacks+=<package>.progress.GradientNorms`)

All are Lightning callbacks on public hooks; cli.py adds the first four to every `fit`.
"""

import sys
import time

import torch
from lightning.fabric.utilities.throughput import Throughput, get_available_flops
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelSummary, ProgressBar, TQDMProgressBar
from lightning.pytorch.utilities import grad_norm, rank_zero_info
from lightning.pytorch.utilities.model_summary import get_human_readable_count


class NotLearning(Callback):
    """Says once, in one line, that a run has not started to learn: at a validation after
    `after_step` steps, val/loss is still within `margin` (relative) of the data module's
    `chance_loss`, the loss of a guess that ignores the context. The run goes on; the line
    tells its owner that it is likely to end where it is, and what to do instead."""

    def __init__(self, after_step: int, margin: float = 0.02):
        self.after_step, self.margin, self.said = after_step, margin, False

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.said or trainer.sanity_checking or trainer.global_step < self.after_step:
            return
        chance = getattr(trainer.datamodule, "chance_loss", None)
        loss = trainer.callback_metrics.get("val/loss")
        if chance is None or loss is None or float(loss) < chance * (1 - self.margin):
            return
        self.said = True
        rank_zero_info(
            f"not learning: at step {trainer.global_step} val/loss {float(loss):.4g} is still "
            f"the loss of a guess that ignores the context ({chance:.4g}); runs of this config "
            "that learn leave it long before, so this one will likely end here. Stop it and "
            "start another seed (seed_everything), or keep it running to see it through"
        )


class GradientNorms(Callback):
    """Logs the 2-norm of each parameter's gradient, before clipping, and their total, on the
    steps that log (`trainer.log_every_n_steps`): `grad_2.0_norm/<parameter>` and
    `grad_2.0_norm_total` in TensorBoard, through Lightning's `grad_norm`.

    It shows which layers still learn. In the induction-heads runs measured, a run that stays at
    chance is one whose first layer's `mixer.out_proj` gradient fell to about zero within its
    first ~150 steps, while runs that learned kept it (README, the Mamba paper's tables).
    """

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # the steps whose values Lightning writes: the (k * log_every_n_steps)-th, counting from 1
        if (trainer.global_step + 1) % trainer.log_every_n_steps == 0:
            pl_module.log_dict(grad_norm(pl_module, norm_type=2))


class Announce(Callback):
    """Says `message` once the data is set up and training begins, not before: a start that
    stops on bad data never claims to be writing a run."""

    def __init__(self, message: str):
        self.message = message

    def on_fit_start(self, trainer, pl_module) -> None:
        rank_zero_info(self.message)


class ParameterSummary(ModelSummary):
    """The layers and parameter counts of Lightning's summary; no FLOPs (LoggedThroughput has
    them, per step)."""

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, *_, **__):
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        widths = [max(len(name), *map(len, values)) for name, values in columns]
        rows = [
            [name for name, _ in columns],
            *zip(*(values for _, values in columns), strict=True),
        ]
        table = [
            " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        table.insert(1, "-" * len(table[0]))
        table += [
            f"{get_human_readable_count(trainable_parameters)} trainable parameters of "
            f"{get_human_readable_count(total_parameters)}, {model_size:.3f} MB",
        ]
        rank_zero_info("\n".join(table))


def with_training_loss(trainer, metrics: dict) -> dict:
    """A progress bar's metrics with the latest training loss, read from the device here, when
    a bar draws, rather than by Lightning after every step (module.log_loss says why)."""
    loss = trainer.callback_metrics.get("train/loss")
    return metrics if loss is None else {"train/loss": float(loss), **metrics}


class Bar(TQDMProgressBar):
    """Lightning's tqdm bar, showing the training loss as of its last redraw."""

    def get_metrics(self, trainer, pl_module) -> dict:
        return with_training_loss(trainer, super().get_metrics(trainer, pl_module))


class LineProgress(ProgressBar):
    """A progress bar of whole lines: `step 310/4000 | train/loss 1.234 | 25.1 steps/s | ...`.

    tqdm's bar redraws one line with carriage returns: written to a file it becomes a single
    line of hundreds of kilobytes, and after a resume it shows `310/?`. This prints a line
    every `every` optimizer steps (and after each validation, with its metrics), counting
    from the run's real step, so a resumed run continues its count.
    """

    def __init__(self, every: int = 50):
        super().__init__()
        self.every, self.enabled = every, True
        self.started, self.start_step = 0.0, 0

    def disable(self) -> None:
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self.started, self.start_step = time.monotonic(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.enabled and step % self.every == 0 and step != self.start_step:
            self.say(trainer, pl_module, "train/")

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.enabled and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.say(trainer, pl_module, "val/")

    def say(self, trainer, pl_module, prefix: str) -> None:
        step, total = trainer.global_step, trainer.max_steps
        parts = [f"step {step}/{total}" if total > 0 else f"step {step}"]
        metrics = with_training_loss(trainer, self.get_metrics(trainer, pl_module))
        parts += [f"{k} {float(v):.4g}" for k, v in metrics.items() if k.startswith(prefix)]
        elapsed = time.monotonic() - self.started
        rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{rate:.1f} steps/s")
            if total > step:
                parts.append(f"{(total - step) / rate / 60:.1f} min left")
        print(" | ".join(parts), file=sys.stdout, flush=True)


class LoggedThroughput(Callback):
    """Tokens, samples and FLOPs per second of training, on the steps Lightning logs.

    Lightning's ThroughputMonitor calls torch.cuda.synchronize() after every batch to time it,
    which stops the CPU from queueing the next step (and defeats CUDA-graph replay). This one
    counts every batch but waits for the GPU and reads the clock only on the steps that are
    logged (every trainer.log_every_n_steps): each rate is over the interval since the last.
    The metric names are ThroughputMonitor's: train/device/items_per_sec (tokens) and so on.
    """

    def on_train_start(self, trainer, pl_module) -> None:
        device = trainer.strategy.root_device
        precision = str(trainer.precision)
        dtype = torch.bfloat16 if "bf16" in precision else torch.float32
        dtype = torch.float16 if precision.startswith("16") else dtype
        available = get_available_flops(device, dtype) if device.type == "cuda" else None
        self.throughput = Throughput(available_flops=available, window_size=2, separator="/")
        self.batches, self.samples, self.tokens, self.flops = 0, 0, 0, 0
        self.measured_step = trainer.global_step
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        inputs = batch[0]
        self.batches += 1
        self.samples += inputs.shape[0]
        self.tokens += inputs.shape[0] * inputs.shape[1]
        self.flops += getattr(pl_module, "flops_per_batch", 0)
        step, every = trainer.global_step, trainer.log_every_n_steps
        if step == self.measured_step or not every or step % every:
            return  # Lightning logs at the steps that are multiples of log_every_n_steps
        self.measured_step = step
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # once per logged step: the interval's work is done
        self.throughput.update(
            time=time.perf_counter() - self.start,
            batches=self.batches,
            samples=self.samples,
            lengths=self.tokens,
            flops=self.flops or None,
        )
        self.flops = 0
        metrics = {f"train/{k}": v for k, v in self.throughput.compute().items()}
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
