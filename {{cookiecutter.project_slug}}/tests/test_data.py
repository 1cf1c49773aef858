{% if cookiecutter.task == 'language_model' -%}
"""Specification of the data modules: batch formats, seeding, the text cache, tokenizers and
bad-data errors."""

import os

import numpy as np
import pytest
import torch
from conftest import CORPUS, bpe_tokenizer

from {{ cookiecutter.package_name }}.data import InductionHeads, SelectiveCopying, TextFile
from {{ cookiecutter.package_name }}.data import text as text_data
{%- else -%}
"""Specification of the data modules: batch formats, seeding and bad-data errors."""

import numpy as np
import pytest
import torch

from {{ cookiecutter.package_name }}.data import ArrayClassification, SyntheticSeries
{%- endif %}

SMALL = {"num_train_samples": 64, "num_val_samples": 32, "batch_size": 8}


def first_batch(dm, split="train"):
    dm.setup("fit")
    return next(iter(dm.loader(split)))
{%- if cookiecutter.task == 'language_model' %}


# Synthetic language-model tasks


def test_selective_copying_batches_are_token_ids_with_scored_marker_positions():
    dm = SelectiveCopying(seq_len=32, num_tokens=4, num_symbols=6, **SMALL)
    inputs, targets = first_batch(dm)
    assert (dm.vocab_size, dm.blank_id, dm.marker_id) == (8, 6, 7)
    assert dm.task == "language_model"
    assert inputs.shape == targets.shape == (8, 36)
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.min() >= 0 and inputs.max() < dm.vocab_size
    assert (targets[:, :32] == -100).all()
    assert (targets[:, 32:] >= 0).all() and (targets[:, 32:] < 6).all()


def test_selective_copying_targets_are_the_data_tokens_in_order():
    dm = SelectiveCopying(seq_len=40, num_tokens=5, num_symbols=4, **SMALL)
    for inputs, targets in dm.dataset("train"):
        context = inputs[:40]
        data_tokens = context[context != dm.blank_id]
        assert len(data_tokens) == 5
        assert (inputs[40:] == dm.marker_id).all()
        assert torch.equal(targets[40:], data_tokens)


def test_induction_heads_scores_only_the_symbol_after_the_first_trigger():
    dm = InductionHeads(seq_len=24, num_symbols=5, **SMALL)
    assert (dm.vocab_size, dm.trigger_id) == (6, 5)
    for inputs, targets in dm.dataset("val"):
        (where,) = torch.nonzero(inputs == dm.trigger_id).flatten().tolist()[:-1]
        assert inputs[-1] == dm.trigger_id and where < 22
        assert targets[-1] == inputs[where + 1]
        assert (targets[:-1] == -100).all()
{%- else %}


# Generated series


def test_synthetic_series_batches_are_float_series_with_class_labels():
    dm = SyntheticSeries(num_channels=3, seq_len=96, num_classes=4, **SMALL)
    x, y = first_batch(dm)
    assert dm.task == "sequence_classification"
    assert (dm.num_channels, dm.num_classes) == (3, 4)
    assert x.shape == (8, 96, 3) and x.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.long
    labels = torch.stack([y for _, y in dm.dataset("train")])
    assert set(labels.tolist()) == {0, 1, 2, 3}


def test_synthetic_series_class_shows_in_frequency_not_in_channel_means():
    dm = SyntheticSeries(num_channels=2, seq_len=128, num_classes=4, num_train_samples=400)
    x, y = map(torch.stack, zip(*dm.dataset("train"), strict=True))  # (N, L, C), (N,)
    power = torch.fft.rfft(x, dim=1).abs().pow(2).sum(dim=2)  # (N, L // 2 + 1)
    dominant = power[:, 1:].argmax(dim=1) + 1  # cycles per window
    assert ((dominant - 1) // 3 == y).float().mean() > 0.95
    means = x.mean(dim=1)  # (N, C)
    centroids = torch.stack([means[y == k].mean(dim=0) for k in range(4)])  # (K, C)
    nearest = torch.cdist(means, centroids).argmin(dim=1)
    assert (nearest == y).float().mean() < 0.45  # chance is 0.25
{%- endif %}


@pytest.mark.parametrize("cls", [{{ 'SelectiveCopying, InductionHeads' if cookiecutter.task == 'language_model' else 'SyntheticSeries' }}])
def test_synthetic_items_depend_only_on_seed_split_and_index(cls):
    a, b = cls(seed=1, **SMALL).dataset("train"), cls(seed=1, **SMALL).dataset("train")
    for i in range(5):
        assert all(torch.equal(u, v) for u, v in zip(a[i], b[i], strict=True))
    assert not torch.equal(a[0][0], a[1][0])
    assert not torch.equal(a[0][0], cls(seed=1, **SMALL).dataset("val")[0][0])
    assert not torch.equal(a[0][0], cls(seed=2, **SMALL).dataset("train")[0][0])


def test_worker_processes_produce_the_same_batches():
    dm = {{ 'SelectiveCopying(seq_len=32, num_tokens=4' if cookiecutter.task == 'language_model' else 'SyntheticSeries(seq_len=48, num_classes=2' }}, **SMALL)
    serial = list(dm.val_dataloader())
    dm.num_workers = 2
    parallel = list(dm.val_dataloader())
    assert len(serial) == len(parallel) == 4
    for (x1, t1), (x2, t2) in zip(serial, parallel, strict=True):
        assert torch.equal(x1, x2) and torch.equal(t1, t2)


def test_changed_seq_len_applies_to_the_next_loader_and_is_checked():
{%- if cookiecutter.task == 'language_model' %}
    dm = SelectiveCopying(seq_len=32, num_tokens=4, **SMALL)
    dm.seq_len = 64
    inputs, _ = next(iter(dm.train_dataloader()))
    assert inputs.shape == (8, 68)
    dm.seq_len = 4
    with pytest.raises(ValueError, match="num_tokens=4 does not fit in seq_len=4"):
{%- else %}
    dm = SyntheticSeries(seq_len=48, num_classes=2, **SMALL)
    dm.seq_len = 96
    inputs, _ = next(iter(dm.train_dataloader()))
    assert inputs.shape == (8, 96, 4)
    dm.seq_len = 4
    with pytest.raises(ValueError, match="needs seq_len >= 48"):
{%- endif %}
        dm.train_dataloader()


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
{%- if cookiecutter.task == 'language_model' %}
        (
            SelectiveCopying,
            {"seq_len": 256, "num_tokens": 300},
            "num_tokens=300 does not fit in seq_len=256",
        ),
        (SelectiveCopying, {"num_symbols": 1}, "num_symbols=1"),
        (SelectiveCopying, {"batch_size": 0}, "batch_size=0"),
        (SelectiveCopying, {"seed": -1}, "seed=-1"),
        (InductionHeads, {"seq_len": 2}, "seq_len=2"),
        (InductionHeads, {"num_val_samples": 0}, "num_val_samples=0"),
        (InductionHeads, {"num_workers": -1}, "num_workers=-1"),
{%- else %}
        (SyntheticSeries, {"num_classes": 10, "seq_len": 128}, "needs seq_len >= 240"),
        (SyntheticSeries, {"num_classes": 1}, "num_classes=1"),
        (SyntheticSeries, {"noise": -0.5}, "noise=-0.5"),
        (SyntheticSeries, {"num_workers": -1}, "num_workers=-1"),
{%- endif %}
    ],
)
def test_rejects_bad_arguments_naming_the_class_and_value(cls, kwargs, message):
    with pytest.raises(ValueError, match=f"^{cls.__name__}: .*{message}"):
        cls(**kwargs)
{%- if cookiecutter.task == 'language_model' %}


# Text files


def text_module(path, **kwargs):
    return TextFile(str(path), **{"seq_len": 8, "val_fraction": 0.25, "batch_size": 2, **kwargs})


def test_text_samples_are_shifted_byte_windows(tmp_path):
    text = "héllo wörld, " * 10  # multi-byte characters become several byte tokens
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    raw = torch.tensor(list(text.encode()))
    dm = text_module(tmp_path / "a.txt")
    assert (dm.vocab_size, dm.task) == (256, "language_model")
    inputs, targets = first_batch(dm, "val")
    assert inputs.shape == targets.shape == (2, 8) and inputs.dtype == torch.long
    assert raw.max() > 127
    train = dm.dataset("train")
    for i in (0, 3):
        assert torch.equal(train[i][0], raw[8 * i : 8 * i + 8])
        assert torch.equal(train[i][1], raw[8 * i + 1 : 8 * i + 9])


def test_text_val_split_is_the_contiguous_tail(tmp_path):
    raw = bytes(range(48, 48 + 70)) * 2  # 140 bytes
    (tmp_path / "a.txt").write_bytes(raw)
    dm = text_module(tmp_path / "a.txt", val_fraction=0.25)
    dm.setup("fit")
    assert dm.bounds == {"train": (0, 105), "val": (105, 140)}
    train, val = dm.dataset("train"), dm.dataset("val")
    assert (len(train), len(val)) == ((105 - 1) // 8, (35 - 1) // 8)
    assert torch.equal(val[0][0], torch.tensor(list(raw[105:113])))
    last = train[len(train) - 1][1]
    assert last[-1] == raw[8 * len(train)] and 8 * len(train) < 105


def test_text_cache_is_built_once_and_reused(tmp_path, monkeypatch):
    source = tmp_path / "a.txt"
    source.write_text("abcdefgh" * 20)
    text_module(source).setup("fit")
    cache = tmp_path / ".cache" / "a.txt.bytes.u8"
    assert cache.read_bytes() == source.read_bytes()

    def no_rebuild(*args):
        raise AssertionError("the cache was rebuilt although the source did not change")

    monkeypatch.setattr(text_data, "_read_utf8", no_rebuild)
    dm = text_module(source)
    dm.setup("fit")
    assert len(dm.dataset("train")) > 0


def test_text_cache_is_rebuilt_when_a_source_changes(tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("abcdefgh" * 20)
    text_module(source).setup("fit")
    cache = tmp_path / ".cache" / "a.txt.bytes.u8"
    source.write_text("ABCDEFGH" * 30)  # new size
    text_module(source).setup("fit")
    assert cache.read_bytes() == source.read_bytes()
    source.write_text("zyxwvuts" * 30)  # same size, only the modification time tells
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    text_module(source).setup("fit")
    assert cache.read_bytes() == source.read_bytes()


def test_text_folder_reads_matching_files_recursively_in_sorted_order(tmp_path):
    corpus = tmp_path / "corpus"
    for name, text in {
        "b/2.txt": "second ",
        "a.md": "first ",
        "c.txt": "third " * 20,
        "notes.bin": "binary ",
        ".hidden/x.txt": "hidden ",
        "b/.draft.txt": "draft ",
    }.items():
        (corpus / name).parent.mkdir(parents=True, exist_ok=True)
        (corpus / name).write_text(text)
    text_module(corpus).setup("fit")
    cache = tmp_path / ".cache" / "corpus.bytes.u8"
    assert cache.read_text() == "first second " + "third " * 20
    text_module(corpus, suffixes=(), cache_dir=str(tmp_path / "all")).setup("fit")
    everything = (tmp_path / "all" / "corpus.bytes.u8").read_text()
    assert everything == "first second " + "third " * 20 + "binary "


def test_utf8_check_spans_chunk_boundaries_and_reports_the_offset(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("aé€𝄞" * 5)  # 1-, 2-, 3- and 4-byte characters cut by 3-byte chunks
    bad.write_bytes("aé€𝄞".encode() + b"xy\xe2\x82z")
    chunks = list(text_data._read_utf8(good, chunk_size=3))
    assert b"".join(raw for raw, _ in chunks) == good.read_bytes()
    assert "".join(decoded for _, decoded in chunks) == good.read_text()  # whole characters
    with pytest.raises(ValueError, match=r"bad.txt is not UTF-8 at byte offset 12 "):
        list(text_data._read_utf8(bad, chunk_size=3))


def test_text_rejects_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"path=.*nothing.txt' does not exist"):
        text_module(tmp_path / "nothing.txt")


@pytest.mark.parametrize(
    ("files", "kwargs", "message"),
    [
        ({"a.txt": b""}, {}, r"a.txt is empty"),
        ({"only.csv": b"1,2"}, {}, r"holds no files ending in .txt/.md"),
        (
            {"a.txt": b"fine", "b.txt": b"caf\xe9 latin-1"},
            {},
            r"b.txt is not UTF-8 at byte offset 3",
        ),
        ({"a.txt": b"x" * 100}, {"val_fraction": 0.05}, r"val split has 5 bytes.*seq_len \+ 1 = 9"),
        ({"a.txt": b"x" * 100}, {"seq_len": 80}, r"train split has 75 bytes.*seq_len \+ 1 = 81"),
        ({"a.txt": b"x" * 100}, {"val_fraction": 1.5}, r"val_fraction=1.5 is outside \(0, 1\)"),
    ],
)
def test_text_rejects_bad_data_naming_the_problem(tmp_path, files, kwargs, message):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, content in files.items():
        (corpus / name).write_bytes(content)
    path = corpus / "a.txt" if list(files) == ["a.txt"] else corpus
    with pytest.raises(ValueError, match=message):
        text_module(path, **kwargs).setup("fit")


# Tokenized text


def test_tokenized_text_windows_are_the_tokenizer_ids_in_a_uint16_cache(tmp_path):
    from tokenizers import Tokenizer

    (tmp_path / "a.txt").write_text(CORPUS)
    spec = bpe_tokenizer(tmp_path / "tokenizer.json")
    ids = Tokenizer.from_file(str(spec)).encode(CORPUS).ids
    dm = text_module(tmp_path / "a.txt", tokenizer=str(spec))
    dm.setup("fit")
    assert dm.vocab_size == Tokenizer.from_file(str(spec)).get_vocab_size() <= 300
    assert dm.cache.suffix == ".u16" and dm.cache.stat().st_size == 2 * len(ids)
    assert dm.bounds["val"][1] == len(ids) < len(CORPUS)
    train = dm.dataset("train")
    for i in (0, 2):
        assert torch.equal(train[i][0], torch.tensor(ids[8 * i : 8 * i + 8]))
        assert torch.equal(train[i][1], torch.tensor(ids[8 * i + 1 : 8 * i + 9]))


def test_token_cache_is_separate_per_tokenizer_and_chunks_end_at_line_breaks(tmp_path, monkeypatch):
    from tokenizers import Tokenizer

    corpus = "".join(f"line {i}: the cat sat on the mat\n" for i in range(200))
    (tmp_path / "a.txt").write_text(corpus)
    spec = str(bpe_tokenizer(tmp_path / "tokenizer.json"))
    text_module(tmp_path / "a.txt").setup("fit")  # the bytes cache
    read = text_data._read_utf8
    monkeypatch.setattr(text_data, "_read_utf8", lambda source: read(source, chunk_size=100))
    dm = text_module(tmp_path / "a.txt", tokenizer=spec)
    dm.setup("fit")  # 60 chunks, each tokenized up to its last line break
    tokens = np.fromfile(dm.cache, dtype=np.uint16)
    assert tokens.tolist() == Tokenizer.from_file(spec).encode(corpus).ids
    assert (tmp_path / ".cache" / "a.txt.bytes.u8").read_text() == corpus  # still there


def test_vocabularies_above_65536_get_a_uint32_cache(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {f"w{i}": i for i in range(70_000)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "big.json"))
    (tmp_path / "a.txt").write_text(" ".join(f"w{i}" for i in range(69_950, 70_000)) * 2)
    dm = text_module(tmp_path / "a.txt", tokenizer=str(tmp_path / "big.json"))
    dm.setup("fit")
    assert dm.vocab_size == 70_000 and dm.cache.suffix == ".u32"
    assert int(dm.dataset("train")[0][0].max()) >= 65_536


def test_text_rejects_a_tokenizer_that_is_not_there(tmp_path):
    (tmp_path / "a.txt").write_text(CORPUS)
    with pytest.raises(FileNotFoundError, match=r"tokenizer='./nope.json': no such tokenizer"):
        text_module(tmp_path / "a.txt", tokenizer="./nope.json")


def test_val_lengths_add_a_validation_loader_per_length_named_by_it():
    dm = InductionHeads(
        seq_len=16, num_symbols=4, batch_size=4, num_val_samples=8, val_lengths=[64]
    )
    short, long = dm.val_dataloader()
    assert next(iter(short))[0].shape == (4, 16) and next(iter(long))[0].shape == (4, 64)
    assert dm.val_suffixes == ("", "@64")
    assert InductionHeads(seq_len=16).val_dataloader().dataset.size == 1000  # one loader
{%- else %}


# Array classification


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def labelled_series(n=40, length=16, channels=3, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (n, length, channels)).astype(np.float32)
    x[:, 0, 0] = np.arange(n)  # a per-sample id, to follow samples through the split
    return x, np.arange(n) % classes


def test_array_npz_gives_float_series_and_labels(tmp_path):
    x, y = labelled_series()
    dm = ArrayClassification(write_npz(tmp_path / "d.npz", x=x, y=y), batch_size=4)
    assert dm.task == "sequence_classification"
    assert (dm.num_channels, dm.num_classes) == (3, 5)
    xb, yb = first_batch(dm)
    assert xb.shape == (4, 16, 3) and xb.dtype == torch.float32
    assert yb.shape == (4,) and yb.dtype == torch.long
    assert ArrayClassification(str(tmp_path / "d.npz"), num_classes=7).num_classes == 7


def test_array_val_fraction_split_is_seeded_and_disjoint(tmp_path):
    x, y = labelled_series(n=40)
    path = write_npz(tmp_path / "d.npz", x=x, y=y)

    def ids(seed):
        dm = ArrayClassification(path, val_fraction=0.25, standardize=False, seed=seed)
        return [set(dm.arrays[s][0][:, 0, 0].long().tolist()) for s in ("train", "val")]

    train, val = ids(seed=0)
    assert (len(train), len(val)) == (30, 10)
    assert train | val == set(range(40)) and not train & val
    assert ids(seed=0) == [train, val]
    assert ids(seed=1)[1] != val


def test_array_standardizes_channels_with_train_statistics(tmp_path):
    x, y = labelled_series(n=40)
    path = write_npz(tmp_path / "d.npz", x=x, y=y)
    raw = ArrayClassification(path, standardize=False).arrays
    scaled = ArrayClassification(path).arrays
    mean, std = raw["train"][0].mean(dim=(0, 1)), raw["train"][0].std(dim=(0, 1))
    assert torch.allclose(scaled["train"][0].mean(dim=(0, 1)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(scaled["train"][0].std(dim=(0, 1)), torch.ones(3), atol=1e-5)
    assert torch.allclose(scaled["val"][0], (raw["val"][0] - mean) / std, atol=1e-5)


def test_array_accepts_npy_pairs_a_val_file_and_other_key_names(tmp_path):
    x, y = labelled_series(n=20, classes=3)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    val = write_npz(tmp_path / "val.npz", inputs=x[:6], labels=y[:6])
    dm = ArrayClassification(
        str(tmp_path / "x.npy"), labels_path=str(tmp_path / "y.npy"), val_path=val
    )
    assert len(dm.dataset("train")) == 20 and len(dm.dataset("val")) == 6
    assert dm.num_classes == 3


def _bad_arrays(tmp_path, case):
    x, y = labelled_series(n=10, classes=3)
    if case == "ndim":
        x = x[..., 0]
    elif case == "empty":
        x, y = x[:0], y[:0]
    elif case == "mismatch":
        y = y[:7]
    elif case == "float labels":
        y = y + 0.5
    elif case == "nan":
        x[4, 2, 1] = np.nan
    return write_npz(tmp_path / "d.npz", x=x, y=y)


@pytest.mark.parametrize(
    ("case", "kwargs", "message"),
    [
        ("ndim", {}, r"shape \(10, 16\); expected \(N, L, C\)"),
        ("empty", {}, r"x in d.npz is empty \(shape \(0, 16, 3\)\)"),
        ("mismatch", {}, r"shape \(7,\) but x in d.npz has N=10 samples"),
        ("float labels", {}, r"dtype float64; expected integer class ids"),
        ("nan", {}, r"1 NaN/inf values, the first at \(n, l, c\) = \(4, 2, 1\)"),
        ("fine", {"num_classes": 2}, r"labels \[2\] are outside \[0, num_classes=2\)"),
        ("fine", {"val_fraction": 0.01}, r"val_fraction=0.01 of N=10 samples"),
    ],
)
def test_array_rejects_bad_data_naming_the_value(tmp_path, case, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArrayClassification(_bad_arrays(tmp_path, case), **kwargs)


def test_array_rejects_missing_files_and_unclear_layouts(tmp_path):
    x, y = labelled_series(n=10)
    with pytest.raises(FileNotFoundError, match=r"path=.*missing.npz' does not exist"):
        ArrayClassification(str(tmp_path / "missing.npz"))
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError, match=r"x.npy holds only x; pass its labels as labels_path"):
        ArrayClassification(str(tmp_path / "x.npy"))
    both = write_npz(tmp_path / "both.npz", x=x, X=x, y=y)
    with pytest.raises(ValueError, match=r"holds arrays \['X', 'x', 'y'\]; expected exactly one"):
        ArrayClassification(both)
    narrow = write_npz(tmp_path / "narrow.npz", x=x[..., :1], y=y)
    with pytest.raises(ValueError, match=r"narrow.npz has C=1 channels but .* has C=3"):
        ArrayClassification(write_npz(tmp_path / "d.npz", x=x, y=y), val_path=narrow)
{%- endif %}
