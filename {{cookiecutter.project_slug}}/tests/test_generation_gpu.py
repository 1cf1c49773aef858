"""Generation on a CUDA GPU with the fused kernels: the replayed CUDA graph decodes what the eager
step decodes, under autocast too, prompts of mixed lengths decode as alone, and greedy tokens
equal mamba-ssm's own `generate(cg=True)` on the same weights.

Skipped cleanly without CUDA and mamba-ssm; benchmarks/generate_speed.py times it.
"""

import copy
import importlib.util
import re
import subprocess
import sys

import pytest
import torch

from {{ cookiecutter.package_name }}.backbone import BackboneConfig
from {{ cookiecutter.package_name }}.generation import Sampling, decoder
from {{ cookiecutter.package_name }}.model import MambaLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm (the GPU stack)"
    ),
]

MIXERS = ["Mamba1", "Mamba2"]
DTYPES = ["fp32", "bf16", "autocast"]
PACKAGE = "{{ cookiecutter.package_name }}"


def small_lm(mixer: str, vocab_size: int = 512, d_intermediate: int = 0) -> MambaLM:
    torch.manual_seed(0)
    config = BackboneConfig(
        impl="fused",
        mixer=mixer,
        d_model=256,
        n_layer=3,
        d_intermediate=d_intermediate,
        d_state=16 if mixer == "Mamba1" else 64,
        headdim=32,
        chunk_size=64,
    )
    return MambaLM(config, vocab_size).cuda().eval()


def prompts(batch: int = 3, length: int = 20) -> torch.Tensor:
    return torch.randint(0, 512, (batch, length), generator=torch.Generator().manual_seed(1)).cuda()


def run(model: MambaLM, dtype: str, *args, **kwargs):
    """model.generate with float32 weights, bfloat16 weights or under bfloat16 autocast."""
    if dtype == "bf16":
        model = model.to(torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "autocast"):
        return model.generate(*args, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mixer", MIXERS)
def test_the_replayed_graph_decodes_what_the_eager_step_decodes(mixer, dtype):
    model, ids = small_lm(mixer), prompts()
    replayed = run(model, dtype, ids, 48)
    eager = run(model, dtype, ids, 48, cuda_graph=False)
    assert torch.equal(replayed, eager)
    if dtype == "fp32":  # sampling inside the graph: top_k=1 leaves the argmax alone (in bf16,
        # logits that tie at the top leave several)
        assert torch.equal(run(model, dtype, ids, 48, temperature=0.9, top_k=1), eager)


@pytest.mark.parametrize("mixer", MIXERS)
def test_under_autocast_the_recurrent_states_are_bf16(mixer):
    """The crash this fixes: causal_conv1d_update refused a float32 state for bf16 inputs."""
    model, ids = small_lm(mixer), prompts()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.generate(ids, 32)
        conv_state, ssm_state, A = decoder(model, 3, Sampling(), cuda_graph=True).caches[0]
    assert conv_state.dtype == ssm_state.dtype == torch.bfloat16
    assert A.dtype == torch.float32  # -exp(A_log): a constant of the weights, not a state
    assert out.shape == (3, 52) and 0 <= out.min() and out.max() < 512


@pytest.mark.parametrize("mixer", MIXERS)
def test_prompts_of_different_lengths_each_get_the_tokens_they_get_alone(mixer):
    model = small_lm(mixer)
    ids = prompts(5, 70)
    ragged = [ids[0, :5], ids[1, :70], ids[2, :33], ids[3, :70], ids[4, :1]]
    together = model.generate(ragged, 40)
    alone = [model.generate(p[None], 40)[0] for p in ragged]
    assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))


@pytest.mark.parametrize("mixer", MIXERS)
def test_weights_changed_between_calls_are_decoded_with(mixer):
    """The graph reads the parameters in place; A and autocast's copies are refreshed per call."""
    model, ids = small_lm(mixer, d_intermediate=128), prompts()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model.generate(ids, 8)
    with torch.no_grad():  # an optimizer step, outside autocast (whose casts last its region)
        for layer in model.backbone.layers:
            layer.mixer.A_log.add_(0.5)
            layer.mixer.in_proj.weight.mul_(1.5)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        trained = model.generate(ids, 24)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        fresh = copy.deepcopy(model).generate(ids, 24, cuda_graph=False)
    assert torch.equal(trained, fresh)


@pytest.mark.parametrize("mixer", MIXERS)
def test_greedy_tokens_equal_mamba_ssm_generate_with_cuda_graphs(mixer, tmp_path):
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    model, ids = small_lm(mixer), prompts(2, 24)
    model.save_pretrained(tmp_path, format="mamba_ssm")
    theirs = MambaLMHeadModel.from_pretrained(str(tmp_path), device="cuda").eval()
    expected = theirs.generate(ids, max_length=24 + 64, cg=True)
    assert torch.equal(model.generate(ids, 64), expected)


def test_the_command_decodes_a_prompts_file_in_bf16_batches(tmp_path):
    model = small_lm("Mamba2", vocab_size=256)
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("the cat\na\nthe dog sat on the log\n")
    command = [sys.executable, "-m", PACKAGE, "generate", f"--pretrained={tmp_path / 'model'}"]
    command += ["--tokenizer=bytes", f"--prompts_file={tmp_path / 'prompts.txt'}"]
    done = subprocess.run([*command, "--batch_size=2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("the cat")
    assert re.fullmatch(
        r"generated 192 tokens for 3 prompt\(s\) in [\d.]+ s: first token after \d+ ms, "
        r"\d+ tokens/s \(bf16, batches of up to 2\)",
        done.stderr.strip(),
    ), done.stderr
