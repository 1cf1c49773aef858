"""Hybrids on a CUDA GPU: the attention's flash path trains, and a hybrid decodes from a replayed
CUDA graph exactly as it does eagerly and as its full forward reads.

The step's position lives in the cache (a counter it advances on the device), so a graph captured
once decodes every position; these tests are where that is proven. The Mamba layers use the fused
kernels where mamba-ssm is installed (impl=auto), the plain-PyTorch ones otherwise.
"""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from {{ cookiecutter.package_name }}.backbone import BackboneConfig, InferenceParams
from {{ cookiecutter.package_name }}.generation import Sampling, decoder
from {{ cookiecutter.package_name }}.mixers import MHA
from {{ cookiecutter.package_name }}.model import MambaLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ATTN = {"num_heads": 4, "num_heads_kv": 2, "rotary_emb_dim": 8, "d_conv": 4}


def hybrid_lm(mixer: str) -> MambaLM:
    torch.manual_seed(0)
    config = BackboneConfig(
        impl="auto", mixer=mixer, d_model=64, n_layer=3, d_state=16, headdim=16, chunk_size=16,
        attn_layer_idx=[1], attn_cfg=ATTN,
    )  # fmt: skip
    return MambaLM(config, 100).cuda().eval()


def test_flash_attention_trains_the_layer_as_the_math_backend_does():
    """Training's SDPA call (causal, grouped keys and values, bf16) runs on the flash kernel."""
    torch.manual_seed(0)
    layer = MHA(256, num_heads=8, num_heads_kv=2, rotary_emb_dim=32, causal=True, layer_idx=0)
    layer = layer.cuda().to(torch.bfloat16)
    u = torch.randn(2, 512, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    results = []
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
        with sdpa_kernel([backend]):
            out = layer(u)
            (grad,) = torch.autograd.grad(out.float().square().mean(), u)
        results.append((out.float(), grad.float()))
    (flash, flash_grad), (math, math_grad) = results
    torch.testing.assert_close(flash, math, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(flash_grad, math_grad, rtol=5e-2, atol=1e-4)


def test_prefill_then_steps_equal_the_full_forward_on_the_gpu():
    torch.manual_seed(0)
    layer = MHA(32, causal=True, layer_idx=0, mlp_dim=10, **ATTN).cuda()
    u = torch.randn(3, 12, 32, device="cuda")
    with torch.no_grad():
        full = layer(u)
        params = InferenceParams(max_seqlen=16, max_batch_size=3)
        outs = [layer(u[:, :7], inference_params=params)]
        for t in range(7, 12):
            params.seqlen_offset = t
            outs.append(layer(u[:, t : t + 1], inference_params=params))
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_graph_decoding_of_a_hybrid_equals_eager_decoding_and_the_full_forward(mixer):
    model = hybrid_lm(mixer)
    prompt = torch.randint(0, 100, (3, 20), device="cuda")
    graph = model.generate(prompt, max_new_tokens=30, cuda_graph=True)
    assert decoder(model, 3, Sampling(), cuda_graph=True).graph is not None
    assert torch.equal(graph, model.generate(prompt, max_new_tokens=30, cuda_graph=False))
    with torch.no_grad():
        assert torch.equal(graph[:, 20:], model(graph)[:, 19:-1].argmax(-1))


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_a_longer_call_recaptures_and_mixed_lengths_decode_as_alone(mixer):
    model = hybrid_lm(mixer)
    model.generate(torch.randint(0, 100, (3, 10), device="cuda"), max_new_tokens=10)
    first = decoder(model, 3, Sampling(), cuda_graph=True)
    longer = model.generate(torch.randint(0, 100, (3, 100), device="cuda"), max_new_tokens=60)
    second = decoder(model, 3, Sampling(), cuda_graph=True)
    assert second is not first and second.max_seqlen == 256 and second.graph is not None
    with torch.no_grad():
        assert torch.equal(longer[:, 100:], model(longer)[:, 99:-1].argmax(-1))
    prompts = [torch.randint(0, 100, (n,), device="cuda") for n in (5, 17, 9)]
    together = model.generate(prompts, max_new_tokens=12)
    alone = [model.generate(p[None], max_new_tokens=12)[0] for p in prompts]
    assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))
