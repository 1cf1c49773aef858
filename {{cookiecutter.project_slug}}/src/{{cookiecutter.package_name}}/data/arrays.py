"""Your own arrays to classify: .npz or .npy pairs of x (N, L, C) and labels (N,)."""

from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from .base import BaseDataModule


class ArrayClassification(BaseDataModule):
    """Classification of your own arrays: x of shape (N, L, C) (any real dtype) and labels (N,).

    `path` is either an .npz holding x under one of the keys x/X/inputs/data/features and the
    labels under one of y/Y/labels/targets, or an .npy of x with the labels in `labels_path`.
    Validation data comes from `val_path` (+ `val_labels_path`) in the same form, or else from
    a seeded random `val_fraction` of the samples. Test data, for `test`, comes only from
    `test_path` (+ `test_labels_path`): without it there is no test split. With `standardize`,
    every channel is shifted and scaled by the mean and std of the train split. Everything is
    checked and loaded here in __init__, because `num_channels` and `num_classes` must be known
    before the model is built.
    """

    task = "sequence_classification"
    no_test_split = "give your held-out samples as data.test_path (and data.test_labels_path)"
    X_KEYS = ("x", "X", "inputs", "data", "features")
    Y_KEYS = ("y", "Y", "labels", "targets")

    def __init__(
        self,
        path: str,
        labels_path: str | None = None,
        val_path: str | None = None,
        val_labels_path: str | None = None,
        val_fraction: float = 0.2,
        test_path: str | None = None,
        test_labels_path: str | None = None,
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
        if test_path is not None:
            test_x, test_y = self.load(test_path, test_labels_path)
            self.check(
                test_x.shape[2] == x.shape[2],
                f"{test_path} has C={test_x.shape[2]} "
                f"channels but {path} has C={x.shape[2]}; they must match",
            )
            self.arrays["test"] = (test_x, test_y)
        labels = torch.cat([split_y for _, split_y in self.arrays.values()])
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

    def has_test_split(self) -> bool:
        return "test" in self.arrays

    def dataset(self, split: str) -> Dataset:
        return TensorDataset(*self.arrays[split])
