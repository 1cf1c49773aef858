"""The layers are ours on every device: one class per mixer, computing through `ops`.

test_layers_gpu.py runs the same edit on a GPU, with the fused kernels.
"""

import pytest
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }} import mixers, ops
from {{ cookiecutter.package_name }}.backbone import Backbone, BackboneConfig

SMALL = {"d_model": 16, "n_layer": 2, "d_state": 8, "headdim": 8, "chunk_size": 8}


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_an_edit_to_a_mixer_changes_the_models_output(mixer, monkeypatch):
    """What a user edits is what runs: a one-line change of a mixer's forward (its input
    halved) changes the backbone built from the config."""
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(mixer=mixer, **SMALL), vocab_size=32)
    ids = torch.randint(0, 32, (2, 20))
    with torch.no_grad():
        before = model(ids)
    cls = mixers.MIXERS[mixer]
    original = cls._forward
    monkeypatch.setattr(cls, "_forward", lambda self, u, *s: original(self, u * 0.5, *s))
    with torch.no_grad():
        after = model(ids)
    assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_the_model_is_built_from_our_classes_only(mixer):
    model = Backbone(BackboneConfig(mixer=mixer, **SMALL), vocab_size=32)
    foreign = {
        type(m).__module__
        for m in model.modules()
        if not type(m).__module__.startswith(("{{ cookiecutter.package_name }}.", "torch."))
    }
    assert not foreign
    assert all(isinstance(layer.mixer, mixers.MIXERS[mixer]) for layer in model.layers)


def test_the_plain_causal_conv_is_a_depthwise_conv1d_and_its_step_continues_it():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 9, 6)  # (B, L, C)
    want = F.silu(conv(x.transpose(1, 2))[..., :9]).transpose(1, 2)
    weight = conv.weight.squeeze(1)
    got = ops.causal_conv1d(x, weight, conv.bias, kernels=True)  # a CPU tensor: plain PyTorch
    torch.testing.assert_close(got, want)
    state = torch.zeros(2, 6, 4)
    steps = [
        ops.causal_conv1d_step(x[:, t], state, weight, conv.bias, kernels=False) for t in range(9)
    ]
    torch.testing.assert_close(torch.stack(steps, 1), want)


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_the_gated_norm_gates_before_or_after_the_norm(norm_before_gate):
    torch.manual_seed(0)
    y, z, weight = torch.randn(3, 8), torch.randn(3, 8), torch.rand(8) + 0.5
    rms = lambda t: t * torch.rsqrt(t.square().mean(-1, keepdim=True) + 1e-5)  # noqa: E731
    if norm_before_gate:
        want = rms(y) * weight * F.silu(z)
    else:
        want = rms(y * F.silu(z)) * weight
    got = ops.gated_rms_norm(y, z, weight, 1e-5, None, norm_before_gate, kernels=False)
    torch.testing.assert_close(got, want)
    groups = ops.gated_rms_norm(y, None, weight, 1e-5, 4, kernels=False)  # two groups of 4
    want_groups = torch.cat([rms(y[:, :4]), rms(y[:, 4:])], -1) * weight
    torch.testing.assert_close(groups, want_groups)
{%- if cookiecutter.task == 'language_model' %}


def test_decoding_reads_nothing_inside_a_mixer():
    """generation.py knows a mixer only by its contract: allocate_inference_cache and step
    (called through the backbone's forward), so a new or edited mixer decodes unchanged."""
    import ast
    import inspect

    from {{ cookiecutter.package_name }} import generation

    tree = ast.parse(inspect.getsource(generation))
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)} & {"mixer"}
    inside = {"mixer"}
    for name in ("Mamba1", "Mamba2", "Mamba3"):
        layer = Backbone(BackboneConfig(mixer=name, **SMALL), vocab_size=32).layers[0].mixer
        cls = type(layer)
        inside |= set(vars(layer)) | {name for name, _ in layer.named_parameters()}
        inside |= {name.split(".")[0] for name, _ in layer.named_modules() if name}
        inside |= {name for name in vars(cls) if not name.startswith("__")}
    allowed = {"allocate_inference_cache", "step", "training", "forward"}
    assert not (used & inside) - allowed
{%- endif %}
