"""Generated multichannel series for sequence classification."""

import numpy as np
import torch

from .base import GeneratedDataModule, Sample


class SyntheticSeries(GeneratedDataModule):
    """Multichannel real-valued series (EEG-like) whose class is the rhythm they oscillate at.

    Class k oscillates at about 2 + 3k cycles per window (jittered by up to half a cycle); every
    channel gets its own random gain and phase, plus Gaussian noise of std `noise`. Random phases
    make the class-wise average waveform zero, so the channel means carry no class information:
    the model has to measure frequency. Samples are (x, y) = ((seq_len, num_channels), ()).
    """

    task = "sequence_classification"

    def __init__(
        self,
        num_channels: int = 4,
        seq_len: int = 128,
        num_classes: int = 4,
        noise: float = 1.0,
        num_train_samples: int = 4_000,
        num_val_samples: int = 500,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(num_train_samples, num_val_samples, batch_size, num_workers, seed)
        self.seq_len, self.noise = seq_len, noise
        self.num_channels, self.num_classes = num_channels, num_classes
        self.validate()

    def validate(self, **args) -> None:
        c, k, n = self.num_channels, self.num_classes, args.get("seq_len", self.seq_len)
        self.check(c >= 1, f"num_channels={c} must be positive; use num_channels >= 1")
        self.check(k >= 2, f"num_classes={k} is not a classification; use num_classes >= 2")
        self.check(self.noise >= 0, f"noise={self.noise} is negative; use noise >= 0")
        self.check(
            n >= 24 * k,
            f"num_classes={k} needs seq_len >= {24 * k} (8 samples per cycle "
            f"of the fastest class); got seq_len={n}. Raise seq_len or lower num_classes",
        )

    @staticmethod
    def sample(
        rng: np.random.Generator, num_channels: int, seq_len: int, num_classes: int, noise: float
    ) -> Sample:
        label = rng.integers(num_classes)
        cycles = 2 + 3 * label + rng.uniform(-0.5, 0.5)  # per window
        time = np.arange(seq_len)[:, None] / seq_len  # (L, 1), in windows
        gain = rng.uniform(0.5, 1.5, num_channels)  # (C,)
        phase = rng.uniform(0, 2 * np.pi, num_channels)  # (C,)
        x = gain * np.sin(2 * np.pi * cycles * time + phase)  # (L, C)
        x += noise * rng.standard_normal((seq_len, num_channels))
        return torch.from_numpy(x.astype(np.float32)), torch.tensor(label, dtype=torch.long)
