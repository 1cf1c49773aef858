"""The reference backbone is mamba-ssm's twin: same tree, shapes, dtypes, init and outputs."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }}.backbone import Backbone, BackboneConfig, InferenceParams, resolve_impl

SMALL = {"d_model": 16, "n_layer": 2, "d_state": 8, "headdim": 8, "chunk_size": 8}


def backbone(mixer="Mamba2", vocab_size=10, seed=0, **overrides):
    torch.manual_seed(seed)
    config = BackboneConfig(impl="reference", mixer=mixer, **{**SMALL, **overrides})
    return Backbone(config, vocab_size=vocab_size)


# Written out from mamba-ssm 2.3.2.post1's constructors for d_model=16, d_state=8, expand=2:
# Mamba1: d_inner=32, dt_rank=ceil(16/16)=1; Mamba2: headdim=8 -> 4 heads, ngroups=1,
# in_proj = 2*32 + 2*8 + 4 = 84, conv channels = 32 + 2*8 = 48. Vocab 10 pads to 16.
GOLDEN = {
    "Mamba1": {
        "mixer.in_proj.weight": (64, 16),
        "mixer.conv1d.weight": (32, 1, 4),
        "mixer.conv1d.bias": (32,),
        "mixer.x_proj.weight": (17, 32),
        "mixer.dt_proj.weight": (32, 1),
        "mixer.dt_proj.bias": (32,),
        "mixer.A_log": (32, 8),
        "mixer.D": (32,),
        "mixer.out_proj.weight": (16, 32),
    },
    "Mamba2": {
        "mixer.dt_bias": (4,),
        "mixer.A_log": (4,),
        "mixer.D": (4,),
        "mixer.in_proj.weight": (84, 16),
        "mixer.conv1d.weight": (48, 1, 4),
        "mixer.conv1d.bias": (48,),
        "mixer.norm.weight": (32,),
        "mixer.out_proj.weight": (16, 32),
    },
}
MLP = {"norm2.weight": (16,), "mlp.fc1.weight": (256, 16), "mlp.fc2.weight": (16, 128)}


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
@pytest.mark.parametrize("with_mlp", [False, True])
def test_state_dict_has_mamba_ssm_keys_and_shapes(mixer, with_mlp):
    model = backbone(mixer, d_intermediate=24 if with_mlp else 0)
    layer = {"norm.weight": (16,), **GOLDEN[mixer], **(MLP if with_mlp else {})}
    expected = {"embedding.weight": (16, 16), "norm_f.weight": (16,)}
    for i in range(2):
        expected.update({f"layers.{i}.{k}": v for k, v in layer.items()})
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert list(got) == [k for k in got if k.startswith("embedding")] + [
        k for k in got if k.startswith("layers")
    ] + ["norm_f.weight"]


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_dtypes_and_no_weight_decay_marks_follow_mamba_ssm(mixer):
    torch.manual_seed(0)
    config = BackboneConfig(impl="reference", mixer=mixer, **SMALL)
    model = Backbone(config, vocab_size=10, dtype=torch.bfloat16)
    mixer_module = model.layers[0].mixer
    assert mixer_module.D.dtype == torch.float32  # always float32
    # Mamba1 keeps A_log in float32; Mamba2 stores it in the model dtype, as mamba-ssm does
    assert mixer_module.A_log.dtype == (torch.float32 if mixer == "Mamba1" else torch.bfloat16)
    assert mixer_module.in_proj.weight.dtype == torch.bfloat16
    marked = {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}
    names = {"A_log", "D"} | ({"dt_bias"} if mixer == "Mamba2" else set())
    assert marked == {f"layers.{i}.mixer.{n}" for i in range(2) for n in names}


def test_mamba1_initialisation():
    model = backbone("Mamba1", d_model=64, d_state=16, n_layer=3)
    mixer = model.layers[1].mixer
    # S4D-real: A = -(1..N) for every channel
    torch.testing.assert_close(mixer.A_log, torch.log(torch.arange(1, 17.0)).repeat(128, 1))
    torch.testing.assert_close(mixer.D, torch.ones(128))
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    bound = mixer.dt_rank**-0.5
    assert mixer.dt_proj.weight.abs().max() <= bound
    # out_proj: kaiming-uniform (bound 1/sqrt(fan_in)) scaled by 1/sqrt(n_layer)
    limit = 1 / math.sqrt(128) / math.sqrt(3)
    assert mixer.out_proj.weight.abs().max() <= limit
    assert mixer.out_proj.weight.abs().max() > 0.9 * limit
    assert model.embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_mamba2_initialisation():
    model = backbone("Mamba2", d_model=64, d_state=16, headdim=16, d_intermediate=64)
    assert model.config.n_layer == 2
    mixer = model.layers[0].mixer
    A = torch.exp(mixer.A_log)
    assert A.min() >= 1 and A.max() <= 16
    dt = F.softplus(mixer.dt_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    torch.testing.assert_close(mixer.norm.weight, torch.ones(128))
    # with an MLP each layer writes twice into the residual stream: 1/sqrt(2 * n_layer)
    limit = 1 / math.sqrt(128) / math.sqrt(2 * 2)  # n_layer = 2
    assert mixer.out_proj.weight.abs().max() <= limit
    fc2 = model.layers[0].mlp.fc2.weight
    assert fc2.abs().max() <= 1 / math.sqrt(fc2.shape[1]) / math.sqrt(4)


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_strict_state_dict_round_trip_gives_identical_outputs(mixer, tmp_path):
    a, b = backbone(mixer, seed=1), backbone(mixer, seed=2)
    ids = torch.randint(0, 10, (2, 21))
    assert not torch.allclose(a(ids), b(ids))
    torch.save(a.state_dict(), tmp_path / "weights.pt")
    b.load_state_dict(torch.load(tmp_path / "weights.pt"), strict=True)
    torch.testing.assert_close(a(ids), b(ids), rtol=0, atol=0)


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
def test_backbone_is_causal(mixer):
    model = backbone(mixer)
    ids = torch.randint(0, 10, (2, 30))
    changed = ids.clone()
    changed[:, 17:] = (changed[:, 17:] + 1) % 10
    torch.testing.assert_close(model(ids)[:, :17], model(changed)[:, :17], rtol=0, atol=0)


@pytest.mark.parametrize("mixer", ["Mamba1", "Mamba2"])
@pytest.mark.parametrize("with_mlp", [False, True])
def test_recurrent_steps_match_parallel_forward(mixer, with_mlp):
    model = backbone(mixer, d_intermediate=24 if with_mlp else 0)
    ids = torch.randint(0, 10, (3, 19))
    parallel = model(ids)  # (B, L, D)
    params = InferenceParams(max_seqlen=19, max_batch_size=3)
    prefix = model(ids[:, :5], inference_params=params)  # the prompt, in parallel
    steps = [prefix]
    for t in range(5, 19):
        params.seqlen_offset = t
        steps.append(model(ids[:, t : t + 1], inference_params=params))
    torch.testing.assert_close(torch.cat(steps, 1), parallel, rtol=1e-4, atol=1e-5)


def test_a_batch_over_one_kernel_call_runs_in_groups_with_the_same_result_and_gradients():
    # On a GPU the fused Mamba2 kernels take at most 65535 (sample, chunk) pairs per call; here
    # the twin pretends to take 5, so 21 tokens in chunks of 8 (3 chunks) go one sample a call.
    # float64, so that only a wrong split could make a difference, not the order of additions.
    whole, grouped = backbone("Mamba2", seed=3).double(), backbone("Mamba2", seed=3).double()
    assert whole.max_rows is None and whole.samples_per_call(21) is None  # no limit on a CPU
    grouped.max_rows = 5
    assert grouped.samples_per_call(21) == 1 and grouped.samples_per_call(16) == 2
    calls = []
    grouped.layers[0].register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    ids = torch.randint(0, 10, (4, 21))
    expected, got = whole(ids), grouped(ids)
    assert calls == [1, 1, 1, 1]
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(expected)
    (expected * weights).sum().backward()
    (got * weights).sum().backward()
    for (name, a), b in zip(whole.named_parameters(), grouped.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_a_sequence_longer_than_one_kernel_call_is_refused_with_the_limit():
    model = backbone("Mamba2")
    model.max_rows = 5  # chunks of 8: at most 40 tokens
    with pytest.raises(ValueError, match="41 tokens is more than the 5 chunks of 8.*at most 40"):
        model(torch.randint(0, 10, (1, 41)))


def test_embeddings_input_without_vocab():
    model = backbone("Mamba2", vocab_size=None)
    assert model.embedding is None
    out = model(torch.randn(2, 9, 16))
    assert out.shape == (2, 9, 16)


def test_auto_picks_reference_on_cpu_and_says_why(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO):
        assert resolve_impl("auto") == "reference"
    assert "backbone.impl=auto -> reference (no CUDA device)" in caplog.text


def test_fused_without_cuda_fails_with_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="impl=fused needs CUDA and mamba-ssm; found no CUDA"):
        Backbone(BackboneConfig(impl="fused", **SMALL), vocab_size=10)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"d_model": 20, "headdim": 16}, r"expand \* d_model = 40 is not divisible by headdim=16"),
        ({"d_state": 0}, r"backbone.d_state=0 must be a positive integer"),
        ({"chunk_size": -4}, r"backbone.chunk_size=-4 must be a positive integer"),
        ({"ngroups": 3}, r"4 heads are not divisible by ngroups=3"),
        ({"d_intermediate": -1}, r"backbone.d_intermediate=-1 must be >= 0"),
    ],
)
def test_bad_backbone_config_is_refused_with_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        BackboneConfig(**{**SMALL, **overrides})
