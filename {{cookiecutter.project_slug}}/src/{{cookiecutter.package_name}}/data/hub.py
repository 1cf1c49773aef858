"""A text column of a HF `datasets` dataset: a hub corpus, or local JSONL, parquet or CSV files.

    data:
      class_path: {{ cookiecutter.package_name }}.data.HubText
      init_args: {path: wikitext, name: wikitext-2-raw-v1, split: train, text_field: text}

`path`, `name`, `split`, `data_files` and `revision` go to `datasets.load_dataset` as they are:
`path: json` (or `parquet`, `csv`) with `data_files: my/rows.jsonl` reads local files. The rows'
`text_field` is tokenized once, with `Dataset.map(batched=True, num_proc=...)`, and written in
row order into one flat file of token ids, the same kind of cache TextFile writes, read through
the same TokenWindows: every process memory-maps it, and resume and epoch order stay exact.

How rows are joined: each row's text is followed by `separator` (a line break by default), so
the tokens are those of the text file with one row per line. Rows are tokenized one by one;
for tokenizers that split words at line breaks (bytes, GPT-NeoX's), that gives the ids of the
whole text, exactly as TextFile's line-break chunks do. wikitext's rows end with their own line
break: give it `separator: ""`.

The cache, `<cache_dir>/<path>[-<name>]-<split>.<dataset key>.<tokenizer fingerprint>.u16`, is
named by what went into it: the dataset's own arrow files (which `datasets` names by the
dataset's fingerprint: its files, revision and config) or, for a stream, the arguments that
name it, plus `text_field`, `separator`, `val_split` and `max_tokens`. Anything else gives
another file, never a stale one.

`streaming: true` reads a corpus larger than the disk row by row, writing tokens as they come
(bounded memory; `max_tokens` stops early), without `datasets`' own arrow copy. A stream is
named by its arguments, not its content: pin `revision` to make a hub stream's cache exact.
"""

import hashlib
import importlib.util
import json
import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from .text import BYTES, TextTokenizer, TokenText


class HubText(TokenText):
    """Language modelling on one text column of a `datasets` dataset, as bytes or tokens.

    The val split is `val_split` of the same dataset (e.g. `validation`) when given, else the
    last `val_fraction` of the tokens, as in TextFile. The test split, for `test`, is
    `test_split` (e.g. `test`) when given; without it there is none. Samples are windows of
    seq_len + 1 tokens: inputs = window[:-1], targets = window[1:], both (seq_len,).

    Args:
        path: a hub dataset (`wikitext`, `HuggingFaceFW/fineweb-edu`) or a builder for local
            files (`json`, `parquet`, `csv`) with `data_files`.
        name: the dataset's configuration (`wikitext-2-raw-v1`), if it has several.
        tokenizer: bytes (vocab_size 256), a tokenizer.json path or a hub id (see TextTokenizer).
        num_proc: processes that tokenize (Dataset.map's); the cache is the same for any number.
        cache_dir: where the token cache goes; default `<HF_DATASETS_CACHE>/token_windows`.
    """

    task = "language_model"
    no_test_split = "name the dataset's own with data.test_split (e.g. test)"

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        revision: str | None = None,
        text_field: str = "text",
        separator: str = "\n",
        tokenizer: str = BYTES,
        seq_len: int = 256,
        val_fraction: float = 0.05,
        val_split: str | None = None,
        test_split: str | None = None,
        streaming: bool = False,
        max_tokens: int | None = None,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.check(
            importlib.util.find_spec("datasets") is not None,
            "needs HF datasets, which is not installed; pip install -e '.[data]'",
            RuntimeError,  # cli.main prints it as one line
        )
        self.check(seq_len >= 1, f"seq_len={seq_len} must be positive; use seq_len >= 1")
        self.check(
            val_split is not None or 0 < val_fraction < 1,
            f"val_fraction={val_fraction} is outside (0, 1); use e.g. 0.05, or name a val_split",
        )
        self.check(
            val_split != split, f"val_split={val_split!r} is the train split; name another one"
        )
        self.check(
            test_split is None or test_split not in (split, val_split),
            f"test_split={test_split!r} is the train or val split; name another one",
        )
        self.check(
            max_tokens is None or max_tokens >= 1,
            f"max_tokens={max_tokens} must be positive; use max_tokens >= 1 or null for all",
        )
        self.check(
            num_proc is None or num_proc >= 1,
            f"num_proc={num_proc} must be positive; use 1 or more, or null for one process",
        )
        self.check(
            not (streaming and (num_proc or 1) > 1),
            f"num_proc={num_proc} with streaming: a stream is read in order by one process; "
            "drop num_proc, or streaming to tokenize a downloaded copy in parallel",
        )
        self.path, self.config_name, self.split, self.revision = path, name, split, revision
        self.data_files, self.text_field, self.separator = data_files, text_field, separator
        self.seq_len, self.val_fraction, self.val_split = seq_len, val_fraction, val_split
        self.test_split = test_split
        self.streaming, self.max_tokens, self.num_proc = streaming, max_tokens, num_proc
        self.tokenizer = TextTokenizer(tokenizer)
        self.vocab_size = self.tokenizer.vocab_size
        self.unit = "bytes" if tokenizer == BYTES else "tokens"
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.cache: Path | None = None  # named in prepare_data, once the dataset is found
        self.bounds: dict[str, tuple[int, int]] = {}

    def describe(self) -> str:
        """The dataset as the user named it, for messages."""
        named = f"{self.path} ({self.config_name})" if self.config_name else self.path
        return named + (f" with data_files={self.data_files}" if self.data_files else "")

    def load(self, split: str):
        """`datasets.load_dataset` for one split; a dataset it cannot find is one line."""
        import datasets

        try:
            return datasets.load_dataset(
                self.path,
                self.config_name,
                split=split,
                data_files=self.data_files,
                revision=self.revision,
                streaming=self.streaming,
            )
        except ConnectionError:  # offline, or the hub is unreachable, and nothing cached
            why = (
                "HF_DATASETS_OFFLINE=1 forbids downloading it"
                if datasets.config.HF_HUB_OFFLINE
                else "the hub cannot be reached"
            )
            message = (
                f"dataset {self.describe()} is not in the datasets cache "
                f"({datasets.config.HF_DATASETS_CACHE}) and {why}; download it there once online "
                f'(python -c "import datasets; datasets.load_dataset({self.path!r}, '
                f'{self.config_name!r})" with the same HF_HOME), or give local data_files'
            )
            error: type[Exception] = FileNotFoundError
        except FileNotFoundError as err:  # a local data file or a hub dataset that is not there
            message = f"dataset {self.describe()}: {err}; check path and data_files"
            error = FileNotFoundError
        except ValueError as err:  # e.g. a split the dataset does not have
            message, error = f"dataset {self.describe()}, split {split!r}: {err}", ValueError
        self.check(False, " ".join(message.split()), error)  # one line, raised from our code

    def key(self, splits: dict[str, object]) -> str:
        """What the cache holds, hashed: the dataset's identity and how its rows are read."""
        if self.streaming:  # no arrow files to name it: its arguments, local files' stamps
            files = [str(f) for f in _local_files(self.data_files)]
            source = [self.path, self.config_name, self.revision, self.data_files, files]
            source += [[f, os.stat(f).st_size, os.stat(f).st_mtime_ns] for f in files]
        else:  # datasets names its arrow files by the dataset's fingerprint (under its cache)
            import datasets

            root = datasets.config.HF_DATASETS_CACHE
            source = [
                [os.path.relpath(c["filename"], root) for c in ds.cache_files]
                for ds in splits.values()
            ]
        reading = [list(splits), self.text_field, self.separator, self.max_tokens]
        text = json.dumps([source, reading], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def prepare_data(self) -> None:
        """Tokenize the split(s) into the cache, unless a cache of the same key is there."""
        import datasets

        names = [self.split] + [name for name in (self.val_split, self.test_split) if name]
        splits = {name: self.load(name) for name in names}
        for name, ds in splits.items():
            columns = ds.column_names
            self.check(
                columns is None or self.text_field in columns,
                f"text_field={self.text_field!r} is not a column of {self.describe()} split "
                f"{name!r}; its columns are {columns}: set text_field to the one with the text",
            )
            feature = (ds.features or {}).get(self.text_field)
            self.check(
                feature is None or getattr(feature, "dtype", None) in ("string", "large_string"),
                f"text_field={self.text_field!r} of {self.describe()} holds {feature}, not text; "
                "set text_field to a column of strings",
            )
        default = Path(datasets.config.HF_DATASETS_CACHE) / "token_windows"
        folder = self.cache_dir or default
        stem = re.sub(r"[^\w.-]+", "_", "-".join(filter(None, [self.path, self.config_name])))
        suffix = f"u{8 * np.dtype(self.tokenizer.dtype).itemsize}"
        key = self.key(splits)
        self.cache = folder / f"{stem}-{self.split}.{key}.{self.tokenizer.fingerprint}.{suffix}"
        manifest = self.cache.with_suffix(".json")
        if self.cache.exists() and manifest.exists():
            return
        sizes = {}
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        partial_cache = self.cache.parent / f"{self.cache.name}.{os.getpid()}.tmp"
        try:
            with partial_cache.open("wb") as out:
                for name, ds in splits.items():
                    sizes[name] = self.write_tokens(ds, out, f"{key}-{name}")
        except BaseException:
            partial_cache.unlink(missing_ok=True)
            raise
        os.replace(partial_cache, self.cache)  # atomic: readers never see half a cache
        manifest.write_text(json.dumps({"dataset": self.describe(), "tokens": sizes}) + "\n")

    def write_tokens(self, ds, out, fingerprint: str) -> int:
        """Append the tokens of one split's rows to `out`, in row order; return how many."""
        tokenize = partial(_tokenize, self.tokenizer, self.text_field, self.separator)
        if self.streaming:  # lazily, as rows arrive
            ids = ds.map(tokenize, batched=True, remove_columns=ds.column_names)
        else:  # datasets caches the result under `fingerprint`, which names all of its inputs
            ids = ds.map(
                tokenize,
                batched=True,
                remove_columns=ds.column_names,
                num_proc=self.num_proc,
                new_fingerprint=fingerprint,
                desc=f"tokenizing {self.describe()}",
            )
        written, limit = 0, self.max_tokens
        for tokens in _flat_batches(ids):
            if limit is not None:
                tokens = tokens[: limit - written]
            out.write(tokens.astype(self.tokenizer.dtype, copy=False).tobytes())
            written += len(tokens)
            if limit is not None and written >= limit:
                break
        return written

    def setup(self, stage: str | None = None) -> None:
        """Cut the train/val(/test) split. Calls prepare_data, a cheap no-op once the cache is
        written, so the module also works without a Trainer."""
        self.prepare_data()
        sizes = json.loads(self.cache.with_suffix(".json").read_text())["tokens"]
        n_test = sizes[self.test_split] if self.test_split else 0  # the cache's last tokens
        n = sum(sizes.values()) - n_test
        n_val = sizes[self.val_split] if self.val_split else int(n * self.val_fraction)
        bounds = {"train": (0, n - n_val), "val": (n - n_val, n)}
        if self.test_split:
            bounds["test"] = (n, n + n_test)
        self.bounds = self.checked(bounds, f"{self.describe()} has {n}", "another val_fraction")

    def has_test_split(self) -> bool:
        return self.test_split is not None


def _tokenize(tokenizer: TextTokenizer, field: str, separator: str, rows: dict) -> dict:
    """Dataset.map's batched function: rows' text (+ separator) -> {"ids": token id arrays}.

    Rows whose text is null are left out."""
    texts = [text + separator for text in rows[field] if text is not None]
    return {"ids": tokenizer.encode_batch(texts)}


def _flat_batches(ids, rows: int = 1024) -> Iterator[np.ndarray]:
    """The token ids of `rows` rows at a time, concatenated: (n,) arrays."""
    import pyarrow.compute as pc

    for table in ids.with_format("arrow").iter(batch_size=rows):
        yield pc.list_flatten(table["ids"]).to_numpy()


def _local_files(data_files) -> list[Path]:
    """The local files named in `data_files` (a path, a list, or a dict of split -> either)."""
    if data_files is None:
        return []
    if isinstance(data_files, dict):
        return [f for v in data_files.values() for f in _local_files(v)]
    names = [data_files] if isinstance(data_files, str) else data_files
    return sorted(Path(n).resolve() for n in names if Path(n).is_file())
