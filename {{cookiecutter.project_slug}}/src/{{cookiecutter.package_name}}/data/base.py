"""The shared plumbing of every data module: argument checks, seeded samples, the loaders.

`BaseDataModule` splits the samples across DDP ranks with a seeded sampler and serves them through
StatefulDataLoaders (resumable mid-epoch); `GeneratedDataModule` adds tasks drawn on the fly from
a generator seeded by (seed, split, index).
"""

import inspect
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, default_collate
from torchdata.stateful_dataloader import StatefulDataLoader

IGNORE_INDEX = -100  # targets with this value are not scored (torch's cross-entropy default)
SPLITS = {"train": 0, "val": 1, "test": 2}  # the split's part of every synthetic sample's seed

Sample = tuple[Tensor, Tensor]

# torchdata 0.11 calls a torch function that newer torch marks deprecated, once per loader.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)


def _collate(samples: list[Sample]) -> Sample:
    return tuple(default_collate(samples))  # default_collate returns a list; batches are tuples


class SeededDataset(Dataset):
    """Map-style dataset whose item i is `make(rng)`, with rng seeded by (seed, split, i).

    `make` is a picklable function (a `partial` of a task's static `sample`), so worker
    processes rebuild exactly the same items without any shared state.
    """

    def __init__(
        self, make: Callable[[np.random.Generator], Sample], size: int, seed: int, split: str
    ):
        self.make, self.size, self.seed, self.split = make, size, seed, split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        return self.make(np.random.default_rng([self.seed, SPLITS[self.split], index]))


class BaseDataModule(LightningDataModule):
    """Shared plumbing: argument checks, the attributes the model reads and the DataLoaders."""

    task: str
    # one per validation loader: what its metric names end with (val/acc, val/acc@4096, ...)
    val_suffixes: tuple[str, ...] = ("",)

    def __init__(self, batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.save_hyperparameters()  # stored in checkpoints next to the model's
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
{%- if cookiecutter.task == 'language_model' %}
        self.vocab_size: int | None = None
{%- else %}
        self.num_channels: int | None = None
        self.num_classes: int | None = None
{%- endif %}
        self.check(
            batch_size >= 1, f"batch_size={batch_size} must be positive; use batch_size >= 1"
        )
        self.check(num_workers >= 0, f"num_workers={num_workers} is negative; use 0 or more")
        self.check(seed >= 0, f"seed={seed} is negative; use a seed >= 0")

    def check(self, ok: object, message: str, error: type[Exception] = ValueError) -> None:
        """Raise `error` with the message prefixed by the class name when `ok` is false."""
        if not ok:
            raise error(f"{type(self).__name__}: {message}")

    def dataset(self, split: str, **args) -> Dataset:
        raise NotImplementedError

    def loader(self, split: str, **args) -> StatefulDataLoader:
        # The sampler, not Lightning, splits the data across DDP ranks, in every run: the order
        # is a permutation drawn from (seed, epoch) and rank r takes every world_size-th index
        # of it, so N processes with batch B see the samples one process sees with batch N*B.
        # The StatefulDataLoader records how many batches of the epoch were used; Lightning
        # stores that in checkpoints, so a resumed run continues with the batch it would have
        # seen next instead of restarting the epoch.
        trainer = self.trainer
        dataset = self.dataset(split, **args)
        sampler = DistributedSampler(
            dataset,
            num_replicas=trainer.world_size if trainer is not None else 1,
            rank=trainer.global_rank if trainer is not None else 0,
            shuffle=split == "train",
            seed=self.seed,
        )
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)  # Lightning sets it again each epoch
        return StatefulDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            # workers outlive an epoch only if the loaders do (no per-epoch reload)
            persistent_workers=self.num_workers > 0
            and (trainer is None or trainer.reload_dataloaders_every_n_epochs == 0),
            pin_memory=torch.cuda.is_available(),
            collate_fn=_collate,
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self.loader("train")

    def val_dataloader(self) -> StatefulDataLoader:
        return self.loader("val")

    def has_test_split(self) -> bool:
        """Whether this data has a test split of its own, apart from train and val."""
        return True

    def check_test_split(self) -> None:
        """`test` on data without a test split is refused: it would only repeat validation."""
        self.check(self.has_test_split(), f"has no test split; {self.no_test_split}")

    no_test_split = "give it one (see its docstring), or use validate"  # what to do, per class

    def test_dataloader(self) -> StatefulDataLoader:
        self.check_test_split()
        return self.loader("test")

    def predict_dataloader(self) -> StatefulDataLoader:
        return self.loader("val")


class GeneratedDataModule(BaseDataModule):
    """A task generated on the fly: nothing to prepare, each loader builds a SeededDataset.

    Its test split is num_val_samples samples drawn from seeds of their own (seed, 2, i): the
    same task, samples that neither training nor validation saw.

    Subclasses define the task as a static `sample(rng, **args)` and a `validate()`. Each time a
    loader is built, `validate` runs and the args are read from the attributes of the same names,
    so a callback may change them (for example raise `seq_len`, for a length curriculum)
    between epochs when the Trainer runs with `reload_dataloaders_every_n_epochs=1`.

    `val_lengths` adds a validation loader at each of those lengths, after the one at `seq_len`:
    their metrics are named by length (val/acc@4096, val/loss@4096), so a checkpoint can be
    chosen by how far it extrapolates (`run.monitor` in the config).
    """

    sample: Callable[..., Sample]

    def __init__(
        self,
        num_train_samples: int,
        num_val_samples: int,
        batch_size: int,
        num_workers: int,
        seed: int,
        val_lengths: list[int] | None = None,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.num_samples = {"train": num_train_samples, "val": num_val_samples}
        for split, n in self.num_samples.items():
            self.check(n >= 1, f"num_{split}_samples={n} must be positive; use 1 or more")
        self.num_samples["test"] = num_val_samples  # as many as val, from other seeds
        self.val_lengths = list(val_lengths or [])
        self.check(
            all(n >= 1 for n in self.val_lengths)
            and len(set(self.val_lengths)) == len(self.val_lengths),
            f"val_lengths={self.val_lengths} must be distinct positive lengths, e.g. [4096]",
        )
        self.val_suffixes = ("", *(f"@{n}" for n in self.val_lengths))

    def check_val_lengths(self) -> None:
        """Each extra validation length must be one the task can have (run after __init__)."""
        for length in self.val_lengths:
            try:
                self.validate(seq_len=length)
            except ValueError as err:
                raise ValueError(f"{err} (in val_lengths={self.val_lengths})") from None

    def validate(self, **args) -> None:
        """Raise ValueError for settings the task cannot have; `args` as in `dataset`."""
        raise NotImplementedError

    def dataset(self, split: str, **args) -> Dataset:
        """The split's samples; `args` overrides attributes of the same names (seq_len=4096)."""
        self.validate(**args)
        names = list(inspect.signature(self.sample).parameters)[1:]  # all but rng
        make = partial(self.sample, **{name: args.get(name, getattr(self, name)) for name in names})
        return SeededDataset(make, self.num_samples[split], self.seed, split)

    def val_dataloader(self) -> StatefulDataLoader | list[StatefulDataLoader]:
        """The loader at seq_len, then one per val_lengths (the same seeds, longer samples)."""
        if not self.val_lengths:
            return self.loader("val")
        return [self.loader("val"), *(self.loader("val", seq_len=n) for n in self.val_lengths)]
