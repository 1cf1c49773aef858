"""On a CUDA GPU with mamba-ssm: our mixers with the fused kernels are mamba-ssm's modules.

The same state_dict in our `Mamba`/`Mamba2` and in mamba-ssm's gives the same outputs and
gradients; a mixer's fully fused path equals its composed one (so an edit made to one and not
the other fails here); an edit to a mixer's class changes what the GPU runs.
Skipped cleanly elsewhere (test_layers.py holds the CPU side).
"""

import importlib.util

import pytest
import torch

from {{ cookiecutter.package_name }} import mixers
from {{ cookiecutter.package_name }}.backbone import Backbone, BackboneConfig

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm (the GPU stack)"
    ),
]

SHAPES = {
    "Mamba1": {"d_model": 128, "d_state": 16},
    "Mamba2": {"d_model": 128, "d_state": 64, "headdim": 32, "chunk_size": 64},
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def theirs(mixer: str, **kwargs):
    if mixer == "Mamba1":
        from mamba_ssm.modules.mamba_simple import Mamba

        return Mamba(**kwargs)
    from mamba_ssm.modules.mamba2 import Mamba2

    return Mamba2(**kwargs)


def outputs_and_grads(layer, u, weight):
    u = u.clone().requires_grad_(True)
    out = layer(u)
    (out.float() * weight).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters()}
    return out.detach().float(), u.grad.float(), grads


@pytest.mark.parametrize("length", [100, 300])  # off the chunk grid of 64
@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_our_layer_is_mamba_ssms_layer_on_the_same_weights(mixer, length):
    torch.manual_seed(0)
    ours = mixers.MIXERS[mixer](**SHAPES[mixer], layer_idx=0).cuda()
    ref = theirs(mixer, **SHAPES[mixer], layer_idx=0).cuda()
    ref.load_state_dict(ours.state_dict(), strict=True)
    u = torch.randn(2, length, 128, device="cuda")
    weight = torch.randn(2, length, 128, device="cuda")
    out, du, grads = outputs_and_grads(ours, u, weight)
    want, want_du, want_grads = outputs_and_grads(ref, u, weight)
    # the same kernels on the same inputs: equal up to the order of atomic adds
    assert rel(out, want) < 1e-5
    assert rel(du, want_du) < 1e-4
    for name, grad in want_grads.items():
        assert rel(grads[name], grad) < 1e-4, name


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_the_fully_fused_layer_equals_its_composed_kernels(mixer):
    """use_fast_path / use_mem_eff_path run one fused kernel for the whole layer; the composed
    path (conv, scan, norm one by one) is what decoding and the CPU run. They must agree."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    fused = mixers.MIXERS[mixer](**SHAPES[mixer], layer_idx=0).cuda()
    composed = mixers.MIXERS[mixer](**SHAPES[mixer], layer_idx=0).cuda()
    composed.load_state_dict(fused.state_dict())
    for flag in ("use_fast_path", "use_mem_eff_path"):
        if hasattr(composed, flag):
            setattr(composed, flag, False)
    u = torch.randn(2, 300, 128, device="cuda")
    weight = torch.randn(2, 300, 128, device="cuda")
    out, du, grads = outputs_and_grads(fused, u, weight)
    want, want_du, want_grads = outputs_and_grads(composed, u, weight)
    tolerance = 1e-4 if mixer == "Mamba1" else 3e-3  # the SSD kernels' dot products are TF32
    assert rel(out, want) < tolerance
    assert rel(du, want_du) < tolerance
    for name, grad in want_grads.items():
        assert rel(grads[name], grad) < tolerance, name


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_an_edit_to_a_mixer_changes_what_the_gpu_runs(mixer, impl, monkeypatch):
    """The model on a GPU is built from our classes: a one-line edit of a mixer's forward
    (here: its input halved) changes the output with the fused kernels too."""
    torch.manual_seed(0)
    config = BackboneConfig(impl=impl, mixer=mixer, n_layer=2, **SHAPES[mixer])
    model = Backbone(config, vocab_size=64).cuda()
    ours = ("{{ cookiecutter.package_name }}.", "torch.")
    foreign = [type(m) for m in model.modules() if not type(m).__module__.startswith(ours)]
    assert not foreign, "a module of another library is in the model"
    ids = torch.randint(0, 64, (2, 100), device="cuda")
    with torch.no_grad():
        before = model(ids)
    cls = mixers.MIXERS[mixer]
    original = cls._forward
    monkeypatch.setattr(cls, "_forward", lambda self, u, *s: original(self, u * 0.5, *s))
    with torch.no_grad():
        after = model(ids)
    assert rel(after, before) > 1e-2
