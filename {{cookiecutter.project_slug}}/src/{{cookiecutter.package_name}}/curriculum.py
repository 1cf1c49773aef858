"""Short sequences first: a length curriculum for the generated tasks.

Long-range tasks such as selective copying at length 4096 give almost no learning signal at
the start: the model must find 16 tokens among 4096 positions before it can learn to copy
them. Trained on short sequences first, it learns the rule cheaply; longer stages then only
stretch it. In a config:

    trainer:
      reload_dataloaders_every_n_epochs: 1     # each epoch builds its loaders at the new length
      callbacks:
        - class_path: <package>.curriculum.LengthCurriculum
          init_args: {lengths: [256, 1024, 4096], threshold: 0.99}
"""

from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info


class LengthCurriculum(Callback):
    """Raise `data.seq_len` through `lengths` each time validation accuracy reaches `threshold`.

    Args:
        lengths: increasing sequence lengths; the last one must equal the data's seq_len.
        threshold: the validation metric at which training moves to the next length.
        monitor: the metric to compare with `threshold`.
    """

    def __init__(self, lengths: list[int], threshold: float = 0.99, monitor: str = "val/acc"):
        if not lengths or any(b <= a for a, b in zip(lengths, lengths[1:], strict=False)):
            raise ValueError(
                f"LengthCurriculum: lengths={lengths} must be a non-empty increasing list, "
                "e.g. [256, 1024, 4096]"
            )
        if not 0 < threshold <= 1:
            raise ValueError(f"LengthCurriculum: threshold={threshold} must be in (0, 1]")
        self.lengths, self.threshold, self.monitor = list(lengths), threshold, monitor
        self.stage = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        data = trainer.datamodule
        if data is None or not hasattr(data, "seq_len"):
            raise ValueError(
                f"LengthCurriculum needs a data module with a seq_len; got {type(data).__name__}."
                " Use it with {% if cookiecutter.task == 'language_model' %}SelectiveCopying or InductionHeads{% else %}SyntheticSeries{% endif %}."
            )
        if data.seq_len != self.lengths[-1]:
            raise ValueError(
                f"LengthCurriculum: the last length {self.lengths[-1]} must equal "
                f"data.seq_len={data.seq_len}, the length the run is meant to reach."
            )
        if trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "LengthCurriculum changes the length between epochs; set "
                "trainer.reload_dataloaders_every_n_epochs=1 so each epoch uses it."
            )

    def on_fit_start(self, trainer, pl_module) -> None:
        trainer.datamodule.seq_len = self.lengths[self.stage]  # the stage a resumed run was at

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_length = trainer.datamodule.seq_len

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pl_module.log("curriculum/seq_len", float(self.epoch_length))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.stage == len(self.lengths) - 1:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and float(value) >= self.threshold:
            self.stage += 1
            trainer.datamodule.seq_len = self.lengths[self.stage]
            rank_zero_info(
                f"{self.monitor}={float(value):.4f} at step {trainer.global_step}: "
                f"next epoch trains at seq_len={self.lengths[self.stage]}"
            )

    def state_dict(self) -> dict:
        return {"stage": self.stage}

    def load_state_dict(self, state_dict: dict) -> None:
        self.stage = state_dict["stage"]
