"""What the model sees: one LightningDataModule per data source.

A LightningDataModule bundles everything about the data in hooks that the Trainer calls in order:

    __init__(...)           every process, when LightningCLI builds the module: check the arguments
                            and set `vocab_size`, `num_channels`, `num_classes` and `task`, which
                            the CLI copies into the model before the model is built.
    prepare_data()          once per machine (local rank 0 only), before setup: slow one-off work
                            that writes to disk, such as encoding a text corpus into a byte cache.
                            Don't keep state here: other processes never run it.
    setup(stage)            every process, after prepare_data: load or map what prepare_data made.
    train_dataloader() ...  every process, when a loop starts (again every epoch with
                            `Trainer(reload_dataloaders_every_n_epochs=1)`).

Language-model batches are `(inputs, targets)`, both LongTensor (B, L); the loss at position t
compares the output at t with `targets[t]`, and -100 marks positions that are not scored.
Classification batches are `(x, y)`: FloatTensor (B, L, C) and LongTensor (B,).

The synthetic tasks draw item i of a split from a generator seeded by (seed, split, i), so every
epoch, worker, restart and DDP rank sees the same data, and train and val never share a seed.
`test` evaluates the val split: none of these sources has a third, held-out split.
"""

import codecs
import inspect
import json
import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from lightning import LightningDataModule
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, TensorDataset, default_collate
from torchdata.stateful_dataloader import StatefulDataLoader

IGNORE_INDEX = -100  # targets with this value are not scored (torch's cross-entropy default)
SPLITS = {"train": 0, "val": 1}  # the split's part of every synthetic sample's seed

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


class _DataModule(LightningDataModule):
    """Shared plumbing: argument checks, the attributes the model reads and the DataLoaders."""

    task: str

    def __init__(self, batch_size: int, num_workers: int, seed: int):
        super().__init__()
        self.save_hyperparameters()  # stored in checkpoints next to the model's
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.vocab_size: int | None = None
        self.num_channels: int | None = None
        self.num_classes: int | None = None
        self.check(
            batch_size >= 1, f"batch_size={batch_size} must be positive; use batch_size >= 1"
        )
        self.check(num_workers >= 0, f"num_workers={num_workers} is negative; use 0 or more")
        self.check(seed >= 0, f"seed={seed} is negative; use a seed >= 0")

    def check(self, ok: object, message: str, error: type[Exception] = ValueError) -> None:
        """Raise `error` with the message prefixed by the class name when `ok` is false."""
        if not ok:
            raise error(f"{type(self).__name__}: {message}")

    def dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def loader(self, split: str) -> StatefulDataLoader:
        # The sampler, not Lightning, splits the data across DDP ranks, in every run: the order
        # is a permutation drawn from (seed, epoch) and rank r takes every world_size-th index
        # of it, so N processes with batch B see the samples one process sees with batch N*B.
        # The StatefulDataLoader records how many batches of the epoch were used; Lightning
        # stores that in checkpoints, so a resumed run continues with the batch it would have
        # seen next instead of restarting the epoch.
        trainer = self.trainer
        dataset = self.dataset(split)
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

    def test_dataloader(self) -> StatefulDataLoader:
        return self.loader("val")


class _GeneratedDataModule(_DataModule):
    """A task generated on the fly: nothing to prepare, each loader builds a SeededDataset.

    Subclasses define the task as a static `sample(rng, **args)` and a `validate()`. Each time a
    loader is built, `validate` runs and the args are read from the attributes of the same names,
    so a callback may change them (for example raise `seq_len`, for a length curriculum)
    between epochs when the Trainer runs with `reload_dataloaders_every_n_epochs=1`.
    """

    sample: Callable[..., Sample]

    def __init__(
        self,
        num_train_samples: int,
        num_val_samples: int,
        batch_size: int,
        num_workers: int,
        seed: int,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.num_samples = {"train": num_train_samples, "val": num_val_samples}
        for split, n in self.num_samples.items():
            self.check(n >= 1, f"num_{split}_samples={n} must be positive; use 1 or more")

    def validate(self) -> None:
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        self.validate()
        names = list(inspect.signature(self.sample).parameters)[1:]  # all but rng
        make = partial(self.sample, **{name: getattr(self, name) for name in names})
        return SeededDataset(make, self.num_samples[split], self.seed, split)


class SelectiveCopying(_GeneratedDataModule):
    """The selective copying task of the Mamba paper: remember scattered tokens, then recite them.

    Vocabulary: ids 0..num_symbols-1 are data symbols, `blank_id = num_symbols` is the noise
    filler, `marker_id = num_symbols + 1` asks for the next remembered token.
    A sample has `seq_len` context positions in which `num_tokens` random symbols sit at random
    positions among blanks, followed by `num_tokens` markers:

        inputs   7 . . 3 . . . 7 . 1 . .  M M M M     (B, seq_len + num_tokens)
        targets  - - - - - - - - - - - -  7 3 7 1     -100 except at the markers

    so the accuracy over scored targets is the copy accuracy. Because the data tokens move from
    sample to sample, a fixed-delay convolution cannot solve it; the model must select by content.
    `seq_len` may be raised by a callback between epochs (see _GeneratedDataModule).
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
    ):
        super().__init__(num_train_samples, num_val_samples, batch_size, num_workers, seed)
        self.seq_len, self.num_tokens, self.num_symbols = seq_len, num_tokens, num_symbols
        self.blank_id, self.marker_id = num_symbols, num_symbols + 1
        self.vocab_size = num_symbols + 2
        self.validate()

    def validate(self) -> None:
        n, k, s = self.seq_len, self.num_tokens, self.num_symbols
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


class InductionHeads(_GeneratedDataModule):
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
    ):
        super().__init__(num_train_samples, num_val_samples, batch_size, num_workers, seed)
        self.seq_len, self.num_symbols = seq_len, num_symbols
        self.trigger_id = num_symbols
        self.vocab_size = num_symbols + 1
        self.validate()

    def validate(self) -> None:
        n, s = self.seq_len, self.num_symbols
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


class SyntheticSeries(_GeneratedDataModule):
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

    def validate(self) -> None:
        c, k, n = self.num_channels, self.num_classes, self.seq_len
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


class TextFile(_DataModule):
    """Byte-level language modelling on a UTF-8 text file or a folder of them (vocab_size 256).

    A folder is read recursively in sorted path order, keeping files whose suffix is in
    `suffixes` (all files when `suffixes` is empty) and skipping hidden files and folders.
    prepare_data checks the text is UTF-8 and concatenates it into `<parent>/.cache/<name>.bytes.u8`
    (or into `cache_dir`), which is memory-mapped afterwards and rebuilt only when a source's
    size or modification time changes. The last `val_fraction` of the bytes is the val split.
    Samples are consecutive windows of seq_len + 1 bytes: inputs = window[:-1], targets =
    window[1:], both (seq_len,).
    """

    task = "language_model"

    def __init__(
        self,
        path: str,
        seq_len: int = 256,
        val_fraction: float = 0.05,
        suffixes: tuple[str, ...] = (".txt", ".md"),
        cache_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.path, self.seq_len, self.val_fraction = Path(path).expanduser(), seq_len, val_fraction
        self.suffixes = tuple(suffixes)
        self.vocab_size = 256
        self.check(
            self.path.exists(),
            f"path={path!r} does not exist; point it at a UTF-8 text file or a folder of them",
            FileNotFoundError,
        )
        self.check(seq_len >= 1, f"seq_len={seq_len} must be positive; use seq_len >= 1")
        self.check(
            0 < val_fraction < 1, f"val_fraction={val_fraction} is outside (0, 1); use e.g. 0.05"
        )
        cache_folder = Path(cache_dir) if cache_dir else self.path.parent / ".cache"
        self.cache = cache_folder / f"{self.path.name}.bytes.u8"
        self.bounds: dict[str, tuple[int, int]] = {}

    def sources(self) -> list[Path]:
        if self.path.is_file():
            return [self.path]
        files = sorted(
            p
            for p in self.path.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.path).parts)
            and (not self.suffixes or p.suffix in self.suffixes)
        )
        kind = "files" if not self.suffixes else "files ending in " + "/".join(self.suffixes)
        self.check(
            files,
            f"folder {self.path} holds no {kind}; add some, or pass suffixes=[] to read every file",
        )
        return files

    def prepare_data(self) -> None:
        """Encode the sources into the byte cache, unless the cache is already up to date."""
        files = self.sources()
        stamp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        manifest = self.cache.with_suffix(".json")
        if self.cache.exists() and manifest.exists() and json.loads(manifest.read_text()) == stamp:
            return
        self.check(
            sum(size for _, size, _ in stamp) > 0, f"{self.path} is empty; give it some text"
        )
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        partial_cache = self.cache.parent / f"{self.cache.name}.{os.getpid()}.tmp"
        try:
            with partial_cache.open("wb") as out:
                for f in files:
                    _copy_utf8(f, out)
        except BaseException:
            partial_cache.unlink(missing_ok=True)
            raise
        os.replace(partial_cache, self.cache)  # atomic: readers never see half a cache
        manifest.write_text(json.dumps(stamp))

    def setup(self, stage: str | None = None) -> None:
        """Cut the train/val split. Calls prepare_data, a cheap no-op once the cache is current,
        so the module also works without a Trainer."""
        self.prepare_data()
        n = self.cache.stat().st_size
        n_val = int(n * self.val_fraction)
        self.bounds = {"train": (0, n - n_val), "val": (n - n_val, n)}
        for split, (start, end) in self.bounds.items():
            self.check(
                end - start > self.seq_len,
                f"the {split} split has {end - start} bytes "
                f"({self.path} has {n}, val_fraction={self.val_fraction}), fewer than one "
                f"window of seq_len + 1 = {self.seq_len + 1}; use more text, a smaller "
                "seq_len or another val_fraction",
            )

    def dataset(self, split: str) -> Dataset:
        if not self.bounds:
            self.setup()
        return ByteWindows(self.cache, *self.bounds[split], self.seq_len)


def _copy_utf8(source: Path, out, chunk_size: int = 1 << 22) -> None:
    """Append `source` to the open file `out`, checking on the way that it is UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of `source` read so far
    with source.open("rb") as f:
        while True:
            chunk = f.read(chunk_size)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"TextFile: {source} is not UTF-8 at byte offset {offset - pending + e.start}"
                    f" ({e.reason}); convert it (e.g. `iconv -f latin1 -t utf-8`) or remove it"
                ) from None
            if not chunk:
                return
            out.write(chunk)
            offset += len(chunk)


class ByteWindows(Dataset):
    """Windows of seq_len + 1 bytes, stepping by seq_len, over bytes [start, end) of a cache."""

    def __init__(self, cache: Path, start: int, end: int, seq_len: int):
        self.cache, self.start, self.seq_len = cache, start, seq_len
        self.size = (end - start - 1) // seq_len
        self._bytes: np.ndarray | None = None  # mapped lazily: each worker maps its own

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_bytes": None}  # send the path to workers, not the bytes

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} windows")
        if self._bytes is None:
            self._bytes = np.memmap(self.cache, dtype=np.uint8, mode="r")
        low = self.start + index * self.seq_len
        window = torch.from_numpy(self._bytes[low : low + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]  # (seq_len,), (seq_len,)


class ArrayClassification(_DataModule):
    """Classification of your own arrays: x of shape (N, L, C) (any real dtype) and labels (N,).

    `path` is either an .npz holding x under one of the keys x/X/inputs/data/features and the
    labels under one of y/Y/labels/targets, or an .npy of x with the labels in `labels_path`.
    Validation data comes from `val_path` (+ `val_labels_path`) in the same form, or else from
    a seeded random `val_fraction` of the samples. With `standardize`, every channel is shifted
    and scaled by the mean and std of the train split. Everything is checked and loaded here in
    __init__, because `num_channels` and `num_classes` must be known before the model is built.
    """

    task = "sequence_classification"
    X_KEYS = ("x", "X", "inputs", "data", "features")
    Y_KEYS = ("y", "Y", "labels", "targets")

    def __init__(
        self,
        path: str,
        labels_path: str | None = None,
        val_path: str | None = None,
        val_labels_path: str | None = None,
        val_fraction: float = 0.2,
        num_classes: int | None = None,
        standardize: bool = True,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        x, y = self.load(path, labels_path)
        if val_path is None:
            n = len(x)
            n_val = round(n * val_fraction)
            self.check(
                0 < n_val < n,
                f"val_fraction={val_fraction} of N={n} samples leaves the "
                "train or val split empty; use another val_fraction or pass val_path",
            )
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            self.arrays = {
                "train": (x[order[n_val:]], y[order[n_val:]]),
                "val": (x[order[:n_val]], y[order[:n_val]]),
            }
        else:
            val_x, val_y = self.load(val_path, val_labels_path)
            self.check(
                val_x.shape[2] == x.shape[2],
                f"{val_path} has C={val_x.shape[2]} "
                f"channels but {path} has C={x.shape[2]}; they must match",
            )
            self.arrays = {"train": (x, y), "val": (val_x, val_y)}
        labels = torch.cat([self.arrays["train"][1], self.arrays["val"][1]])
        self.num_channels = x.shape[2]
        self.num_classes = num_classes if num_classes is not None else int(labels.max()) + 1
        self.check(
            self.num_classes >= 2,
            f"num_classes={self.num_classes} (given, or largest "
            "label + 1) is not a classification; check the labels or pass num_classes",
        )
        outside = labels[(labels < 0) | (labels >= self.num_classes)].unique().tolist()
        self.check(
            not outside,
            f"labels {outside} are outside [0, num_classes={self.num_classes}); "
            "relabel to 0..num_classes-1 or raise num_classes",
        )
        if standardize:
            train_x = self.arrays["train"][0]
            mean, std = train_x.mean(dim=(0, 1)), train_x.std(dim=(0, 1)).clamp_min(1e-6)  # (C,)
            self.arrays = {s: ((a - mean) / std, b) for s, (a, b) in self.arrays.items()}

    def load(self, path: str, labels_path: str | None) -> tuple[Tensor, Tensor]:
        """Read and check one (x, y) pair; returns float32 (N, L, C) and int64 (N,) tensors."""
        source = Path(path).expanduser()
        self.check(source.exists(), f"path={path!r} does not exist", FileNotFoundError)
        if source.suffix == ".npz":
            with np.load(source) as arrays:
                x, y = (
                    arrays[self.pick(arrays.files, keys, source)]
                    for keys in (self.X_KEYS, self.Y_KEYS)
                )
            x_name = y_name = source.name
        else:
            self.check(
                source.suffix == ".npy",
                f"{path} is neither .npz nor .npy; save the arrays with np.savez(path, x=x, y=y)",
            )
            self.check(
                labels_path is not None,
                f"{path} holds only x; pass its labels as "
                "labels_path=<y.npy> or save both with np.savez(path, x=x, y=y)",
            )
            labels = Path(labels_path).expanduser()
            self.check(
                labels.exists(), f"labels_path={labels_path!r} does not exist", FileNotFoundError
            )
            x, y, x_name, y_name = np.load(source), np.load(labels), source.name, labels.name
        self.check(
            x.ndim == 3,
            f"x in {x_name} has shape {x.shape}; expected (N, L, C) = "
            "(samples, length, channels); for one channel use x[..., None]",
        )
        self.check(x.size > 0, f"x in {x_name} is empty (shape {x.shape}); it needs N, L, C >= 1")
        self.check(x.dtype.kind in "fiu", f"x in {x_name} has dtype {x.dtype}; expected numbers")
        self.check(
            y.shape == (len(x),),
            f"labels in {y_name} have shape {y.shape} but x in "
            f"{x_name} has N={len(x)} samples; expected labels of shape ({len(x)},)",
        )
        self.check(
            y.dtype.kind in "iu",
            f"labels in {y_name} have dtype {y.dtype}; expected "
            "integer class ids; save them with y.astype(np.int64)",
        )
        x = torch.from_numpy(np.asarray(x, dtype=np.float32))
        nonfinite = torch.nonzero(~torch.isfinite(x))  # (M, 3) indices of NaN/inf values
        self.check(
            len(nonfinite) == 0,
            f"x in {x_name} has {len(nonfinite)} NaN/inf values, the first at (n, l, c) = "
            f"{tuple(nonfinite[:1].flatten().tolist())}; drop or impute them",
        )
        return x, torch.from_numpy(y.astype(np.int64))

    def pick(self, names: list[str], options: tuple[str, ...], source: Path) -> str:
        found = [name for name in options if name in names]
        self.check(
            len(found) == 1,
            f"{source} holds arrays {sorted(names)}; expected exactly "
            f"one named one of {options}; save with np.savez(path, x=x, y=y)",
        )
        return found[0]

    def dataset(self, split: str) -> Dataset:
        return TensorDataset(*self.arrays[split])
