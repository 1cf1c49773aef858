"""The Mamba paper's synthetic language-model tasks: selective copying and induction heads."""

import math

import numpy as np
import torch

from .base import IGNORE_INDEX, GeneratedDataModule, Sample


class SelectiveCopying(GeneratedDataModule):
    """The selective copying task of the Mamba paper: remember scattered tokens, then recite them.

    Vocabulary: ids 0..num_symbols-1 are data symbols, `blank_id = num_symbols` is the noise
    filler, `marker_id = num_symbols + 1` asks for the next remembered token.
    A sample has `seq_len` context positions in which `num_tokens` random symbols sit at random
    positions among blanks, followed by `num_tokens` markers:

        inputs   7 . . 3 . . . 7 . 1 . .  M M M M     (B, seq_len + num_tokens)
        targets  - - - - - - - - - - - -  7 3 7 1     -100 except at the markers

    so the accuracy over scored targets is the copy accuracy. Because the data tokens move from
    sample to sample, a fixed-delay convolution cannot solve it; the model must select by content.
    `seq_len` may be raised by a callback between epochs (see GeneratedDataModule).
    """

    task = "language_model"

    def __init__(
        self,
        seq_len: int = 128,
        num_tokens: int = 16,
        num_symbols: int = 8,
        num_train_samples: int = 20_000,
        num_val_samples: int = 1_000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_lengths: list[int] | None = None,
    ):
        super().__init__(
            num_train_samples, num_val_samples, batch_size, num_workers, seed, val_lengths
        )
        self.seq_len, self.num_tokens, self.num_symbols = seq_len, num_tokens, num_symbols
        self.blank_id, self.marker_id = num_symbols, num_symbols + 1
        self.vocab_size = num_symbols + 2
        self.validate()
        self.check_val_lengths()

    @property
    def chance_loss(self) -> float:
        """The loss of a guess that ignores the context: the copied symbols are uniform."""
        return math.log(self.num_symbols)

    def validate(self, **args) -> None:
        n, k, s = args.get("seq_len", self.seq_len), self.num_tokens, self.num_symbols
        self.check(s >= 2, f"num_symbols={s} leaves nothing to tell apart; use num_symbols >= 2")
        self.check(k >= 1, f"num_tokens={k} gives nothing to copy; use num_tokens >= 1")
        self.check(k < n, f"num_tokens={k} does not fit in seq_len={n}; use num_tokens < seq_len")

    @staticmethod
    def sample(rng: np.random.Generator, seq_len: int, num_tokens: int, num_symbols: int) -> Sample:
        blank, marker = num_symbols, num_symbols + 1
        tokens = rng.integers(0, num_symbols, num_tokens)  # (K,) what must be copied, in order
        where = np.sort(rng.choice(seq_len, num_tokens, replace=False))  # (K,) their positions
        inputs = np.full(seq_len + num_tokens, blank, dtype=np.int64)  # (seq_len + K,)
        inputs[where] = tokens
        inputs[seq_len:] = marker
        targets = np.full_like(inputs, IGNORE_INDEX)
        targets[seq_len:] = tokens
        return torch.from_numpy(inputs), torch.from_numpy(targets)


class InductionHeads(GeneratedDataModule):
    """Associative recall: after seeing `trigger, x` once, answer `x` when the trigger returns.

    Vocabulary: ids 0..num_symbols-1 are random symbols, `trigger_id = num_symbols`.
    The trigger appears once at a random position followed by a random symbol x, and again as
    the last input; only that last position is scored, with target x:

        inputs   4 0 6 T 5 2 0 3 1 T     (B, seq_len)
        targets  - - - - - - - - - 5     -100 except at the end
    """

    task = "language_model"

    def __init__(
        self,
        seq_len: int = 128,
        num_symbols: int = 16,
        num_train_samples: int = 20_000,
        num_val_samples: int = 1_000,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        val_lengths: list[int] | None = None,
    ):
        super().__init__(
            num_train_samples, num_val_samples, batch_size, num_workers, seed, val_lengths
        )
        self.seq_len, self.num_symbols = seq_len, num_symbols
        self.trigger_id = num_symbols
        self.vocab_size = num_symbols + 1
        self.validate()
        self.check_val_lengths()

    @property
    def chance_loss(self) -> float:
        """The loss of a guess that ignores the context: the recalled symbol is uniform."""
        return math.log(self.num_symbols)

    def validate(self, **args) -> None:
        n, s = args.get("seq_len", self.seq_len), self.num_symbols
        self.check(s >= 2, f"num_symbols={s} leaves nothing to recall; use num_symbols >= 2")
        self.check(n >= 3, f"seq_len={n} has no room for trigger, answer and query; use >= 3")

    @staticmethod
    def sample(rng: np.random.Generator, seq_len: int, num_symbols: int) -> Sample:
        trigger = num_symbols
        inputs = rng.integers(0, num_symbols, seq_len)  # (L,) int64
        where = rng.integers(0, seq_len - 2)  # the answer at where + 1 stays before the query
        inputs[where] = inputs[-1] = trigger
        targets = np.full_like(inputs, IGNORE_INDEX)
        targets[-1] = inputs[where + 1]
        return torch.from_numpy(inputs), torch.from_numpy(targets)
