"""Your own text for language modelling: UTF-8 files read as bytes or as a tokenizer's tokens.

`tokenizer: bytes` (the default) makes every byte a token: vocabulary 256, nothing to download,
any language. A `tokenizer.json` file or a hub id (e.g. `EleutherAI/gpt-neox-20b`, the tokenizer
of the published Mamba checkpoints) goes through HF `tokenizers`; its vocabulary size becomes
the model's. Either way the text is encoded once, in prepare_data, into a flat file of token ids
that every process memory-maps afterwards.
"""

import codecs
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..hub import hub_file, looks_like_path
from .base import BaseDataModule, Sample

BYTES = "bytes"


class TextTokenizer:
    """Text <-> token ids, through the 256 byte values or a HF `tokenizers` tokenizer.json.

    `spec` is "bytes", a path to a tokenizer.json (or a folder holding one), or a hub id whose
    tokenizer.json is fetched into the Hugging Face cache by huggingface_hub.
    """

    def __init__(self, spec: str = BYTES):
        self.spec = spec
        if spec == BYTES:
            self.hf, self.vocab_size, self.fingerprint, self.path = None, 256, BYTES, None
            return
        from tokenizers import Tokenizer

        self.path = path = _tokenizer_json(spec)  # the tokenizer.json, local or in the HF cache
        self.hf = Tokenizer.from_file(str(path))
        # the largest id + 1, not get_vocab_size(): added tokens may leave gaps
        self.vocab_size = max(self.hf.get_vocab(with_added_tokens=True).values()) + 1
        self.fingerprint = hashlib.sha256(path.read_bytes()).hexdigest()[:12]

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The smallest unsigned type that holds every id: 1 byte per byte, 2 or 4 per token."""
        if self.hf is None:
            return np.uint8
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        if self.hf is None:
            return [np.frombuffer(t.encode(), dtype=np.uint8) for t in texts]
        encodings = self.hf.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=self.dtype) for e in encodings]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0].tolist()

    def decode(self, ids: list[int]) -> str:
        if self.hf is None:
            return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
        return self.hf.decode(ids, skip_special_tokens=False)


def _tokenizer_json(spec: str) -> Path:
    local = Path(spec).expanduser()
    if local.is_dir():
        local = local / "tokenizer.json"
    if local.is_file():
        return local
    if local.exists() or looks_like_path(spec):
        raise FileNotFoundError(
            f"tokenizer={spec!r}: no such tokenizer.json; give a tokenizer.json file, a folder "
            "holding one, a hub id such as EleutherAI/gpt-neox-20b, or bytes"
        )
    return hub_file(spec, "tokenizer.json", what="tokenizer")


class TokenText(BaseDataModule):
    """What TextFile and HubText share: a cache of token ids cut into [start, end) ranges, one
    per split (`bounds`), each read as windows of seq_len + 1 tokens (TokenWindows).
    A subclass sets `cache`, `tokenizer`, `seq_len` and `unit`, and fills `bounds` in setup()
    through `checked`."""

    def checked(self, bounds: dict[str, tuple[int, int]], whole: str, fix: str) -> dict:
        """`bounds`, once each split is seen to hold one window; `whole` names the text and
        its size, `fix` what else to change."""
        for split, (start, end) in bounds.items():
            self.check(
                end - start > self.seq_len,
                f"the {split} split has {end - start} {self.unit} ({whole}), fewer than one "
                f"window of seq_len + 1 = {self.seq_len + 1}; use more text, a smaller seq_len "
                f"or {fix}",
            )
        return bounds

    def dataset(self, split: str) -> Dataset:
        if not self.bounds:
            self.setup()
        return TokenWindows(self.cache, self.tokenizer.dtype, *self.bounds[split], self.seq_len)


class TextFile(TokenText):
    """Language modelling on a UTF-8 text file or a folder of them, as bytes or tokens.

    A folder is read recursively in sorted path order, keeping files whose suffix is in
    `suffixes` (all files when `suffixes` is empty) and skipping hidden files and folders.
    prepare_data checks the text is UTF-8 and encodes it into one cache file,
    `<parent>/.cache/<name>.bytes.u8` for bytes or `<name>.<tokenizer hash>.u16` (`.u32` for
    vocabularies above 65536) for a tokenizer, or into `cache_dir`; the cache is memory-mapped
    afterwards and rebuilt only when a source's size or modification time changes. The last
    `test_fraction` of the tokens is the test split (none by default: `test` is refused), the
    `val_fraction` before it the val split. Samples are consecutive windows of
    seq_len + 1 tokens: inputs = window[:-1], targets = window[1:], both (seq_len,).

    Args:
        tokenizer: bytes (vocab_size 256), a tokenizer.json path or a hub id (see TextTokenizer).
        test_fraction: the share of the tokens held out for `test` (fit with the same value:
            the split is cut from the end of the text, before training begins).
    """

    task = "language_model"
    no_test_split = "fit and test with data.test_fraction=0.05 (the last 5% of the text)"

    def __init__(
        self,
        path: str,
        seq_len: int = 256,
        val_fraction: float = 0.05,
        test_fraction: float = 0.0,
        suffixes: tuple[str, ...] = (".txt", ".md"),
        cache_dir: str | None = None,
        tokenizer: str = BYTES,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__(batch_size, num_workers, seed)
        self.path, self.seq_len, self.val_fraction = Path(path).expanduser(), seq_len, val_fraction
        self.test_fraction = test_fraction
        self.suffixes = tuple(suffixes)
        self.check(
            self.path.exists(),
            f"path={path!r} does not exist; point it at a UTF-8 text file or a folder of them",
            FileNotFoundError,
        )
        self.check(seq_len >= 1, f"seq_len={seq_len} must be positive; use seq_len >= 1")
        self.check(
            0 < val_fraction < 1, f"val_fraction={val_fraction} is outside (0, 1); use e.g. 0.05"
        )
        self.check(
            0 <= test_fraction < 1 - val_fraction,
            f"test_fraction={test_fraction} is outside [0, 1 - val_fraction); use e.g. 0.05, or "
            "0 for no test split",
        )
        self.tokenizer = TextTokenizer(tokenizer)
        self.vocab_size = self.tokenizer.vocab_size
        self.unit = "bytes" if tokenizer == BYTES else "tokens"
        cache_folder = Path(cache_dir) if cache_dir else self.path.parent / ".cache"
        suffix = f"u{8 * np.dtype(self.tokenizer.dtype).itemsize}"
        self.cache = cache_folder / f"{self.path.name}.{self.tokenizer.fingerprint}.{suffix}"
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
        """Encode the sources into the token cache, unless the cache is already up to date."""
        files = self.sources()
        stamp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
        manifest = self.cache.with_suffix(".json")
        if self.cache.exists() and manifest.exists() and json.loads(manifest.read_text()) == stamp:
            return
        size = sum(size for _, size, _ in stamp)
        self.check(size > 0, f"{self.path} is empty; give it some text")
        # Nothing stays behind for a rejected input (a file that is not UTF-8, or too few
        # tokens): the partial cache goes, and so do the folders made for it.
        made = [p for p in (self.cache.parent, *self.cache.parent.parents) if not p.exists()]
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        partial_cache = self.cache.parent / f"{self.cache.name}.{os.getpid()}.tmp"
        try:
            with partial_cache.open("wb") as out:
                for f in files:
                    self._encode(f, out)
            self.split(partial_cache.stat().st_size // np.dtype(self.tokenizer.dtype).itemsize)
        except BaseException:
            partial_cache.unlink(missing_ok=True)
            for folder in made:  # innermost first
                folder.rmdir()
            raise
        os.replace(partial_cache, self.cache)  # atomic: readers never see half a cache
        manifest.write_text(json.dumps(stamp))

    def _encode(self, source: Path, out, batch: int = 8) -> None:
        """Append the tokens of `source` to `out`, tokenizing whole lines a few MiB at a time.

        Pieces end at a line break, not at an arbitrary byte, so that a chunk boundary never
        cuts a word in two (a cut word would tokenize differently).
        """
        if self.tokenizer.hf is None:  # bytes are their own tokens: copy them through
            for chunk, _ in _read_utf8(source):
                out.write(chunk)
            return
        pieces, carry = [], ""
        for _, text in _read_utf8(source):
            text = carry + text
            cut = text.rfind("\n") + 1 or len(text)  # no line break at all: cut anyway
            pieces.append(text[:cut])
            carry = text[cut:]
            if len(pieces) == batch:
                for ids in self.tokenizer.encode_batch(pieces):
                    out.write(ids.tobytes())
                pieces = []
        for ids in self.tokenizer.encode_batch([*pieces, carry]):
            out.write(ids.tobytes())

    def setup(self, stage: str | None = None) -> None:
        """Cut the train/val split. Calls prepare_data, a cheap no-op once the cache is current,
        so the module also works without a Trainer."""
        self.prepare_data()
        tokens = self.cache.stat().st_size // np.dtype(self.tokenizer.dtype).itemsize
        self.bounds = self.split(tokens)

    def split(self, n: int) -> dict[str, tuple[int, int]]:
        """The [start, end) token range of each split of n tokens; each must hold a window."""
        n_val, n_test = int(n * self.val_fraction), int(n * self.test_fraction)
        held = n_val + n_test
        bounds = {"train": (0, n - held), "val": (n - held, n - n_test)}
        if self.test_fraction:
            bounds["test"] = (n - n_test, n)
        fractions = f"val_fraction={self.val_fraction}, test_fraction={self.test_fraction}"
        return self.checked(bounds, f"{self.path} has {n}, {fractions}", "other fractions")

    def has_test_split(self) -> bool:
        return self.test_fraction > 0


def _read_utf8(source: Path, chunk_size: int = 1 << 22) -> Iterator[tuple[bytes, str]]:
    """Yield `source` chunk by chunk as (raw bytes, the whole characters decoded so far),
    checking on the way that it is UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes of `source` read so far
    with source.open("rb") as f:
        while True:
            chunk = f.read(chunk_size)
            pending = len(decoder.getstate()[0])  # bytes of a character split across chunks
            try:
                text, error = decoder.decode(chunk, final=not chunk), None
            except UnicodeDecodeError as e:
                error = e
            if error is not None:  # raised outside the except: the message stands alone
                raise ValueError(
                    f"TextFile: {source} is not UTF-8 at byte offset "
                    f"{offset - pending + error.start} ({error.reason}); convert it "
                    "(e.g. `iconv -f latin1 -t utf-8`) or remove it"
                )
            if not chunk:
                return
            yield chunk, text
            offset += len(chunk)


class TokenWindows(Dataset):
    """Windows of seq_len + 1 tokens, stepping by seq_len, over tokens [start, end) of a cache."""

    def __init__(self, cache: Path, dtype, start: int, end: int, seq_len: int):
        self.cache, self.dtype, self.start, self.seq_len = cache, dtype, start, seq_len
        self.size = (end - start - 1) // seq_len
        self._tokens: np.ndarray | None = None  # mapped lazily: each worker maps its own

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}  # send the path to workers, not the tokens

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} windows")
        if self._tokens is None:
            self._tokens = np.memmap(self.cache, dtype=self.dtype, mode="r")
        low = self.start + index * self.seq_len
        window = torch.from_numpy(self._tokens[low : low + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]  # (seq_len,), (seq_len,)
