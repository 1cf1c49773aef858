"""Specification of HubText: a `datasets` text column in the same token windows as TextFile.

Everything runs offline on rows the tests write (JSONL and parquet through datasets' own json
and parquet builders), with the datasets cache in the test's folder.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import PACKAGE, PROJECT, TINY, bpe_tokenizer

from {{ cookiecutter.package_name }}.data import HubText, TextFile

# Rows start with a letter and the separator is a line break: the text file below has the
# same text, and the tokens are the same whether rows are tokenized one by one or as a whole.
ROWS = [f"row {i}: the cat sat on the mat, and the dog sat on log {i % 7}." for i in range(120)]


@pytest.fixture(autouse=True)
def offline_datasets(tmp_path, monkeypatch):
    """A datasets cache of the test's own, offline, in this process and its children."""
    import datasets

    cache = tmp_path / "hf" / "datasets"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)  # read at import time
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return cache


def write_rows(path, rows=ROWS, field="text"):
    if path.suffix == ".parquet":
        pq.write_table(pa.table({field: rows, "id": list(range(len(rows)))}), path)
    else:
        path.write_text("".join(json.dumps({field: r, "id": i}) + "\n" for i, r in enumerate(rows)))
    return str(path)


def hub(tmp_path, data_files, **kwargs):
    args = {"seq_len": 8, "batch_size": 4, "cache_dir": str(tmp_path / "tokens"), **kwargs}
    return HubText("json", data_files=data_files, **args)


def windows(dm, split):
    return [torch.cat(pair) for pair in dm.dataset(split)]


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_rows_give_the_windows_textfile_gives_for_one_row_per_line(tmp_path, tokenizer, suffix):
    spec = str(bpe_tokenizer(tmp_path / "tokenizer.json")) if tokenizer == "bpe" else "bytes"
    rows = write_rows(tmp_path / f"rows{suffix}")
    (tmp_path / "rows.txt").write_text("".join(row + "\n" for row in ROWS))
    text = TextFile(str(tmp_path / "rows.txt"), seq_len=8, tokenizer=spec)
    text.setup("fit")
    builder = suffix.removeprefix(".").replace("jsonl", "json")
    dm = HubText(builder, data_files=rows, tokenizer=spec, seq_len=8)
    dm.setup("fit")
    assert dm.cache.read_bytes() == text.cache.read_bytes()
    assert dm.cache.suffix == text.cache.suffix == (".u8" if tokenizer == "bytes" else ".u16")
    assert dm.bounds == text.bounds and dm.vocab_size == text.vocab_size
    for split in ("train", "val"):
        assert len(dm.dataset(split)) == len(text.dataset(split)) > 0
        for ours, theirs in zip(windows(dm, split), windows(text, split), strict=True):
            assert torch.equal(ours, theirs)
    assert dm.cache.is_relative_to(tmp_path / "hf" / "datasets" / "token_windows")


def test_num_proc_gives_the_same_cache_bytes(tmp_path, monkeypatch):
    import datasets

    rows = write_rows(tmp_path / "rows.jsonl")
    one = hub(tmp_path, rows, cache_dir=str(tmp_path / "one"))
    one.setup("fit")
    fresh = tmp_path / "fresh"  # else datasets would reuse the first run's tokens
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", fresh)
    two = hub(tmp_path, rows, cache_dir=str(tmp_path / "two"), num_proc=2)
    two.setup("fit")
    assert len(list(fresh.rglob("cache-*_of_00002.arrow"))) == 2  # two processes tokenized
    assert two.cache.name == one.cache.name
    text = "".join(row + "\n" for row in ROWS)
    assert two.cache.read_bytes() == one.cache.read_bytes() == text.encode()


def test_cache_key_names_the_tokenizer_and_the_data(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl")
    names = set()
    for kwargs in [
        {},
        {"tokenizer": str(bpe_tokenizer(tmp_path / "tokenizer.json"))},
        {"separator": "\n\n"},
        {"max_tokens": 1000},
    ]:
        dm = hub(tmp_path, rows, **kwargs)
        dm.setup("fit")
        names.add(dm.cache.name)
    write_rows(tmp_path / "rows.jsonl", ROWS[:60])  # the file changes: datasets' fingerprint too
    dm = hub(tmp_path, rows)
    dm.setup("fit")
    assert len(names | {dm.cache.name}) == 5
    assert dm.cache.read_bytes() == "".join(row + "\n" for row in ROWS[:60]).encode()


def test_val_split_is_a_second_split_after_the_train_tokens(tmp_path):
    files = {
        "train": write_rows(tmp_path / "train.jsonl", ROWS[:100]),
        "validation": write_rows(tmp_path / "val.jsonl", ROWS[100:]),
    }
    dm = hub(tmp_path, files, val_split="validation")
    dm.setup("fit")
    tokens = np.fromfile(dm.cache, dtype=np.uint8).tobytes()
    n_train = len("".join(row + "\n" for row in ROWS[:100]))
    assert tokens == "".join(row + "\n" for row in ROWS).encode()
    assert dm.bounds == {"train": (0, n_train), "val": (n_train, len(tokens))}


def test_streaming_writes_the_same_cache_and_max_tokens_stops_it(tmp_path):
    rows = write_rows(tmp_path / "rows.jsonl")
    stored = hub(tmp_path, rows)
    stored.setup("fit")
    streamed = hub(tmp_path, rows, streaming=True)
    streamed.setup("fit")
    assert streamed.cache != stored.cache
    assert streamed.cache.read_bytes() == stored.cache.read_bytes()
    first = hub(tmp_path, rows, streaming=True, max_tokens=1000)
    first.setup("fit")
    assert first.cache.read_bytes() == stored.cache.read_bytes()[:1000]


def test_resumed_loader_continues_mid_epoch_on_a_rebuilt_cache(tmp_path):
    """The state Lightning saves in a checkpoint, restored in a fresh module whose cache was
    deleted and written again: the batches go on exactly where they stopped."""
    rows = write_rows(tmp_path / "rows.jsonl")
    spec = str(bpe_tokenizer(tmp_path / "tokenizer.json"))
    dm = hub(tmp_path, rows, tokenizer=spec, num_proc=2, seed=3)
    dm.setup("fit")
    uninterrupted = [inputs for inputs, _ in dm.loader("train")]
    assert len(uninterrupted) > 6
    loader = dm.loader("train")
    batches = iter(loader)
    for _ in range(4):
        next(batches)
    state = loader.state_dict()
    dm.cache.unlink()
    again = hub(tmp_path, rows, tokenizer=spec, seed=3)
    again.setup("fit")
    resumed = again.loader("train")
    resumed.load_state_dict(state)
    rest = [inputs for inputs, _ in resumed]
    assert len(rest) == len(uninterrupted) - 4
    for got, want in zip(rest, uninterrupted[4:], strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"text_field": "body"}, ValueError, r"text_field='body' is not a column .*'text', 'id'"),
        ({"text_field": "id"}, ValueError, r"text_field='id' .* holds Value\('int64'\), not text"),
        ({"data_files": "missing.jsonl"}, FileNotFoundError, r"missing.jsonl.*check path and"),
        ({"seq_len": 5000}, ValueError, r"split has \d+ bytes .* seq_len \+ 1 = 5001"),
        ({"val_split": "test"}, ValueError, r"split 'test'"),
        ({"streaming": True, "num_proc": 2}, ValueError, r"num_proc=2 with streaming"),
        ({"max_tokens": 0}, ValueError, r"max_tokens=0 must be positive"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_value(tmp_path, kwargs, error, message):
    rows = write_rows(tmp_path / "rows.jsonl")
    with pytest.raises(error, match=message) as raised:
        hub(tmp_path, kwargs.pop("data_files", rows), **kwargs).setup("fit")
    assert "\n" not in str(raised.value) and str(raised.value).startswith("HubText: ")
    if "seq_len" not in kwargs:  # found before any token is written
        assert not (tmp_path / "tokens").exists()


def test_a_hub_dataset_not_cached_offline_stops_fit_with_one_line_and_writes_nothing(tmp_path):
    command = [
        sys.executable, "-m", PACKAGE, "fit", *TINY,
        f"--data={PACKAGE}.data.HubText", "--data.path=wikitext",
        "--data.name=wikitext-2-raw-v1", "--trainer.accelerator=cpu", "--trainer.max_steps=1",
        f"--run.root={tmp_path / 'runs'}",
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=PROJECT, env=os.environ, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [done.stderr.strip().splitlines()[-1]], done.stderr
    assert errors[0].startswith(
        "error: HubText: dataset wikitext (wikitext-2-raw-v1) is not in the datasets cache ("
    )
    assert "HF_DATASETS_OFFLINE=1 forbids downloading it; download it there once" in errors[0]
    assert not (tmp_path / "runs").exists()
    assert not [p for p in (tmp_path / "hf").rglob("*") if p.is_file()]
