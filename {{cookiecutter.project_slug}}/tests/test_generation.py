"""Generation on the CPU: decoding, sampling, batches of mixed lengths, and the generate command.

The reference twin decodes here; tests/test_generation_gpu.py holds the same promises for the
fused kernels and their CUDA graph, and against mamba-ssm's own generate.
"""

import re
import sys

import pytest
import torch

from {{ cookiecutter.package_name }}.backbone import BackboneConfig
from {{ cookiecutter.package_name }}.cli import main
from {{ cookiecutter.package_name }}.commands import Shown
from {{ cookiecutter.package_name }}.data.text import TextTokenizer
from {{ cookiecutter.package_name }}.generation import Sampling, decoder, sample_token
from {{ cookiecutter.package_name }}.model import MambaLM

MIXERS = ["Mamba1", "Mamba2", "Mamba3"]
GREEDY = Sampling()


def tiny_lm(mixer: str = "Mamba2", vocab_size: int = 256, seed: int = 0) -> MambaLM:
    torch.manual_seed(seed)
    config = BackboneConfig(
        impl="reference", mixer=mixer, d_model=32, n_layer=2, d_state=8, headdim=8, chunk_size=8
    )
    return MambaLM(config, vocab_size).eval()


# ------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("mixer", MIXERS)
def test_greedy_tokens_are_the_argmax_of_the_parallel_forward(mixer):
    model = tiny_lm(mixer)
    prompt = torch.randint(0, 256, (3, 11))  # longer than a chunk: the prefill crosses chunks
    out = model.generate(prompt, max_new_tokens=9)
    assert out.shape == (3, 20) and torch.equal(out[:, :11], prompt)
    with torch.no_grad():
        logits = model(out)
    assert torch.equal(out[:, 11:], logits[:, 10:-1].argmax(-1))


@pytest.mark.parametrize("mixer", MIXERS)
def test_prompts_of_different_lengths_each_get_the_tokens_they_get_alone(mixer):
    model = tiny_lm(mixer)
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 12, 1, 12, 7)]
    together = model.generate(prompts, max_new_tokens=6, temperature=0.0)
    alone = [model.generate(p[None], max_new_tokens=6)[0] for p in prompts]
    assert [len(t) for t in together] == [9, 18, 7, 18, 13]
    assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))


def test_stream_yields_the_new_tokens_of_generate_one_step_at_a_time():
    model = tiny_lm()
    prompt = torch.randint(0, 256, (2, 5))
    steps = list(model.stream(prompt, max_new_tokens=4))
    assert [s.shape for s in steps] == [(2, 1)] * 4
    assert torch.equal(torch.cat(steps, dim=1), model.generate(prompt, 4)[:, 5:])


def test_a_decoder_is_kept_per_batch_size_and_follows_the_weights():
    model = tiny_lm()
    prompt = torch.randint(0, 256, (2, 5))
    first = model.generate(prompt, 6)
    kept = decoder(model, 2, GREEDY, cuda_graph=True)
    assert torch.equal(model.generate(prompt, 6), first)
    assert decoder(model, 2, GREEDY, cuda_graph=True) is kept
    changed = tiny_lm()
    with torch.no_grad():  # both trained the same way, one of them between two calls
        for net in (model, changed):
            net.backbone.embedding.weight.mul_(-1.0)
    assert torch.equal(model.generate(prompt, 6), changed.generate(prompt, 6))
    model.double()  # new parameter tensors: a new decoder, with float64 states
    assert decoder(model, 2, GREEDY, cuda_graph=True) is not kept
    assert decoder(model, 2, GREEDY, cuda_graph=True).caches[0][1].dtype == torch.float64


def test_under_autocast_the_recurrent_states_follow_the_compute_dtype():
    model = tiny_lm()
    prompt = torch.randint(0, 256, (2, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(prompt, 4)
        conv, ssm, A = decoder(model, 2, GREEDY, cuda_graph=True).caches[0]
    assert out.shape == (2, 9) and {conv.dtype, ssm.dtype} == {torch.bfloat16}
    assert A.dtype == torch.float32  # -exp(A_log), kept as the float32 weights give it
    conv, ssm, _ = decoder(model, 2, GREEDY, cuda_graph=True).caches[0]
    assert {conv.dtype, ssm.dtype} == {torch.float32}


# ------------------------------------------------------------------------------- sampling

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])


def expected_probabilities(temperature: float, top_k: int | None, top_p: float | None):
    """The renormalised softmax, written out independently of sample_token."""
    probs = (LOGITS / temperature).softmax(-1).double()
    order = probs.argsort(descending=True)
    kept = torch.zeros_like(probs, dtype=torch.bool)
    mass = 0.0
    for rank, token in enumerate(order.tolist()):
        if (top_k is not None and rank >= top_k) or (top_p is not None and mass >= top_p):
            break
        kept[token] = True
        mass += probs[token].item()
    probs = probs * kept
    return probs / probs.sum()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    seen = expected > 0
    return (((counts[seen] - expected[seen]) ** 2) / expected[seen]).sum().item()


CASES = {
    "plain": (1.0, None, None),
    "cold": (0.5, None, None),
    "hot_top_k": (1.7, 3, None),
    "top_p": (1.0, None, 0.7),
    "top_k_and_top_p": (0.8, 5, 0.9),
}


@pytest.mark.parametrize("temperature, top_k, top_p", CASES.values(), ids=CASES.keys())
def test_sampling_draws_from_the_renormalised_softmax(temperature, top_k, top_p):
    """50,000 draws with a fixed seed: tokens outside the kept set never come, and the counts
    are within chi-square 30 of the expected (7 degrees of freedom at most: p < 1e-4 by chance).
    The same counts against the softmax without the temperature and filters are far off."""
    torch.manual_seed(0)
    draws = 50_000
    tokens = sample_token(LOGITS.expand(draws, -1), temperature, top_k, top_p)  # (N, 1)
    counts = torch.bincount(tokens[:, 0], minlength=len(LOGITS)).double()
    probs = expected_probabilities(temperature, top_k, top_p)
    assert counts[probs == 0].sum() == 0
    assert chi_square(counts, probs) < 30
    plain = LOGITS.softmax(-1).double()
    assert chi_square(counts, plain) > 300 or torch.allclose(probs, plain)


def test_temperature_zero_is_the_argmax_and_top_k_one_too():
    logits = torch.randn(64, 100)
    assert torch.equal(sample_token(logits, 0.0), logits.argmax(-1, keepdim=True))
    assert torch.equal(sample_token(logits, 0.9, top_k=1), logits.argmax(-1, keepdim=True))


# ---------------------------------------------------------------------- the generate command


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A byte-level tiny model as a mamba-ssm checkpoint folder."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_lm().save_pretrained(folder)
    return folder


def generate_command(folder, *args) -> list[str]:
    return ["generate", f"--pretrained={folder}", "--tokenizer=bytes", "--impl=reference", *args]


STDERR_LINE = re.compile(
    r"generated (\d+) tokens for (\d+) prompt\(s\) in [\d.]+ s: first token after \d+ ms, "
    r"\d+ tokens/s \(fp32, batches of up to (\d+)\)"
)


def test_a_prompts_file_decoded_in_batches_prints_what_one_at_a_time_prints(
    pretrained, tmp_path, capsys
):
    prompts = ["the cat", "a", "the dog sat on the log", "mat", "x y z"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    args = ["--max_new_tokens=7", "--temperature=0"]
    main(generate_command(pretrained, f"--prompts_file={tmp_path / 'prompts.txt'}", *args))
    batched = capsys.readouterr()
    main(generate_command(pretrained, f"--prompts_file={tmp_path / 'prompts.txt'}", *args,
                          "--batch_size=2"))  # fmt: skip
    assert capsys.readouterr().out == batched.out
    alone = []
    for prompt in prompts:
        main(generate_command(pretrained, f"--prompt={prompt}", *args))
        alone.append(capsys.readouterr().out)
    assert batched.out == "\n".join(alone)
    texts = batched.out.split("\n\n")
    assert [t[: len(p)] for t, p in zip(texts, prompts, strict=True)] == prompts
    lines = batched.err.splitlines()
    assert len(lines) == 1 and STDERR_LINE.fullmatch(lines[0]), batched.err
    assert STDERR_LINE.fullmatch(lines[0]).groups() == ("35", "5", "16")


def test_a_config_file_gives_generate_the_same_options_as_the_command_line(
    pretrained, tmp_path, capsys
):
    """generate is built by jsonargparse from its signature, as fit is by LightningCLI: a YAML
    file holds any option (two prompts as a list), and the command line adds to it."""
    flags = ["--prompt=the cat", "--prompt=a", "--max_new_tokens=5", "--batch_size=1"]
    main(generate_command(pretrained, *flags))
    expected = capsys.readouterr().out
    config = tmp_path / "gen.yaml"
    config.write_text(
        f"pretrained: {pretrained}\ntokenizer: bytes\nimpl: reference\n"
        "prompt: [the cat, a]\nmax_new_tokens: 5\n"
    )
    main(["generate", f"--config={config}", "--batch_size=1"])
    assert capsys.readouterr().out == expected
    with pytest.raises(SystemExit) as done:
        main(["generate", "--help"])
    shown = capsys.readouterr().out
    assert done.value.code == 0 and "--config CONFIG" in shown
    assert "tokens generated after each prompt (type: int, default: 64)" in " ".join(shown.split())


class Writes:
    """A stdout that keeps every write apart."""

    def __init__(self):
        self.pieces = []

    def write(self, text):
        self.pieces.append(text)

    def flush(self):
        pass


def test_a_single_prompt_is_streamed_token_by_token(pretrained, monkeypatch, capsys):
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    main(generate_command(pretrained, "--prompt=the cat", "--max_new_tokens=12"))
    model = MambaLM.from_pretrained(str(pretrained), impl="reference")
    tokenizer = TextTokenizer("bytes")
    ids = model.generate(torch.tensor([tokenizer.encode("the cat")]), 12)[0].tolist()
    assert "".join(out.pieces) == tokenizer.decode(ids) + "\n"
    assert out.pieces[0] == "the cat"  # the prompt first, before any new token
    assert len([p for p in out.pieces if p]) > 5  # then piece by piece
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_streamed_text_never_shows_half_a_character(monkeypatch):
    """A byte tokenizer emits a multi-byte character over several tokens: it appears whole."""
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    new = list("ça coûte 5 €".encode())  # 16 bytes for 12 characters
    shown = Shown(TextTokenizer("bytes"), list(b"prix: "))
    for n in range(1, len(new) + 1):
        shown.update(new[:n])
    shown.close()
    pieces = [p for p in out.pieces if p]
    assert "".join(pieces) == "prix: ça coûte 5 €\n" and "\ufffd" not in "".join(pieces)
    assert pieces[:3] == ["prix: ", "ç", "a"] and pieces[-2:] == ["€", "\n"]
    assert len(pieces) == 1 + 12 + 1


BAD = {
    "top_p_zero": (["--prompt=a", "--top_p=0"], "--top_p=0.0 must be in (0, 1]"),
    "top_p_above_one": (["--prompt=a", "--top_p=1.5"], "--top_p=1.5 must be in (0, 1]"),
    "batch_size_zero": (["--prompt=a", "--batch_size=0"], "--batch_size=0 must be >= 1"),
    "negative_temperature": (["--prompt=a", "--temperature=-1"], "--temperature=-1.0 >= 0"),
    "unknown_dtype": (["--prompt=a", "--dtype=fp16"], "--dtype=fp16 is not one of auto"),
    "empty_prompt": (["--prompt="], "prompt 1 encodes to no tokens"),
    "second_prompt_empty": (["--prompt=a", "--prompt="], "prompt 2 encodes to no tokens"),
}


@pytest.mark.parametrize("args, message", BAD.values(), ids=BAD.keys())
def test_bad_generate_input_stops_with_one_line_and_prints_nothing(
    args, message, pretrained, capsys
):
    with pytest.raises(SystemExit) as stopped:
        main(generate_command(pretrained, *args))
    assert stopped.value.code == 2
    printed = capsys.readouterr()
    assert printed.out == "" and "Traceback" not in printed.err
    lines = printed.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], lines


def test_an_empty_or_missing_prompts_file_stops_with_one_line(pretrained, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    for path, message in [
        (tmp_path / "empty.txt", "holds no prompt; one per line"),
        (tmp_path / "missing.txt", "no such file"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            main(generate_command(pretrained, f"--prompts_file={path}"))
        printed = capsys.readouterr()
        assert stopped.value.code == 2 and printed.out == ""
        assert len(printed.err.splitlines()) == 1 and message in printed.err
