"""Mamba-3: the chunked scans equal the recurrence, and the mixer is mamba-ssm's Mamba3.

The recurrence (scan.py's docstring) was read from mamba-ssm 2.3.2.post1's kernels;
test_mamba3_gpu.py compares against those kernels themselves.
"""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }}.mixers.mamba3 import Mamba3
from {{ cookiecutter.package_name }}.scan import (
    mamba3_mimo_scan,
    mamba3_scan,
    mamba3_scan_sequential,
)

B, H, P, N = 2, 4, 3, 8  # batch, heads, headdim, d_state


def scan_inputs(length, groups=2, rank=None, angles=2, seed=0):
    """Float64 inputs in the kernels' layouts; rank None: SISO, else MIMO with that rank."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=g)

    qk = (B, length, groups, N) if rank is None else (B, length, rank, groups, N)
    bias = (H, N) if rank is None else (H, rank, N)
    return {
        "Q": randn(*qk),
        "K": randn(*qk),
        "V": randn(B, length, H, P),
        "ADT": -F.softplus(randn(B, H, length)),
        "DT": F.softplus(randn(B, H, length)),
        "Trap": randn(B, H, length),
        "Q_bias": randn(*bias),
        "K_bias": randn(*bias),
        "Angles": randn(B, length, H, angles),
        "D": randn(H),
        "Z": randn(B, length, H, P),
    }


def mimo_weights(rank, seed=1):
    g = torch.Generator().manual_seed(seed)
    names = ("MIMO_V", "MIMO_Z", "MIMO_Out")
    return {name: torch.randn(H, rank, P, dtype=torch.float64, generator=g) for name in names}


def initial_states(rank=None, angles=2, seed=2):
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": g}
    k_shape = (B, H, N) if rank is None else (B, rank, H, N)
    return (
        torch.rand(B, H, angles, **f64) * 2 * math.pi,
        torch.randn(B, H, P, N, **f64),
        torch.randn(*k_shape, **f64),
        torch.randn(B, H, P, **f64),
    )


def assert_all_close(got, want, names):
    for name, a, b in zip(names.split(), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m, n=name: f"{n}: {m}")


# ------------------------------------------------------------------------------ the scans


@pytest.mark.parametrize("length,chunk_size", [(37, 8), (16, 8), (1, 8), (37, 64)])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero_states", "given_states"])
@pytest.mark.parametrize("groups", [1, 2, 4], ids=["G1", "G2", "G4"])
def test_siso_scan_equals_the_token_by_token_recurrence(length, chunk_size, with_states, groups):
    x = scan_inputs(length, groups=groups)
    states = initial_states() if with_states else None
    got = mamba3_scan(**x, Input_States=states, chunk_size=chunk_size, return_final_states=True)
    want = mamba3_scan_sequential(**x, Input_States=states, return_final_states=True)
    assert got[0].shape == (B, length, H, P)
    assert [s.shape for s in got[1:]] == [(B, H, 2), (B, H, P, N), (B, H, N), (B, H, P)]
    assert_all_close(got, want, "out angle ssm k v")


@pytest.mark.parametrize("length,chunk_size", [(37, 8), (16, 16), (5, 8)])
@pytest.mark.parametrize("reduce_ranks", [True, False], ids=["mimo_out", "per_rank"])
@pytest.mark.parametrize("gate", [True, False], ids=["z", "no_z"])
@pytest.mark.parametrize("groups", [1, 2], ids=["G1", "G2"])
def test_mimo_scan_equals_the_token_by_token_recurrence(
    length, chunk_size, reduce_ranks, gate, groups
):
    rank, divisor = 3, 4
    x = scan_inputs(length, groups=groups, rank=rank, angles=N // divisor)
    x["Z"] = x["Z"] if gate else None
    mimo = mimo_weights(rank)
    mimo["MIMO_Out"] = mimo["MIMO_Out"] if reduce_ranks else None
    got = mamba3_mimo_scan(
        **x, **mimo, chunk_size=chunk_size, rotary_dim_divisor=divisor, dtype=torch.float64,
        return_state=True,
    )  # fmt: skip
    want = mamba3_scan_sequential(**x, **mimo, return_final_states=True)
    out_shape = (B, length, H, P) if reduce_ranks else (B, length, rank, H, P)
    assert got[0].shape == out_shape
    assert [s.shape for s in got[1:]] == [(B, H, 2), (B, H, P, N), (B, rank, H, N), (B, H, P)]
    assert_all_close(got, want, "out angle ssm k v")


def time_slice(x, start, stop):
    """The inputs of tokens start..stop-1 (ADT, DT, Trap keep time last; the rest second)."""
    return {
        key: value[..., start:stop] if key in ("ADT", "DT", "Trap")
        else value[:, start:stop] if key in ("Q", "K", "V", "Angles", "Z")
        else value
        for key, value in x.items()
    }  # fmt: skip


def test_mimo_recurrence_carries_its_states_across_a_split():
    # the MIMO kernel starts from zero states, so the oracle's state passing is checked here
    rank = 2
    x, mimo = scan_inputs(30, rank=rank), mimo_weights(rank)
    whole = mamba3_scan_sequential(**x, **mimo, return_final_states=True)
    y1, *states = mamba3_scan_sequential(**time_slice(x, 0, 12), **mimo, return_final_states=True)
    y2, *final = mamba3_scan_sequential(
        **time_slice(x, 12, 30), **mimo, Input_States=states, return_final_states=True
    )
    assert_all_close((torch.cat([y1, y2], dim=1), *final), whole, "out angle ssm k v")


def two_tokens(rank=None, pair_dim=1):
    """Two tokens, one head: k_0 = e_0, q_1 = e_{pair_dim}, everything else zero, x = 1."""
    qk = (1, 2, 1, N) if rank is None else (1, 2, 1, 1, N)
    Q, K = torch.zeros(qk, dtype=torch.float64), torch.zeros(qk, dtype=torch.float64)
    K[:, 0, ..., 0] = 1.0
    Q[:, 1, ..., pair_dim] = 1.0
    bias = torch.zeros((1, N) if rank is None else (1, 1, N), dtype=torch.float64)
    return {
        "Q": Q,
        "K": K,
        "V": torch.ones(1, 2, 1, 1, dtype=torch.float64),
        "ADT": torch.tensor([[[-0.3, -0.7]]], dtype=torch.float64),
        "DT": torch.tensor([[[0.5, 0.8]]], dtype=torch.float64),
        "Trap": torch.tensor([[[0.4, -1.1]]], dtype=torch.float64),
        "Q_bias": bias,
        "K_bias": bias.clone(),
        "Angles": torch.tensor([[0.3, 0.3], [0.9, 0.9]], dtype=torch.float64).reshape(1, 2, 1, 2),
    }


def expected_second_output(x):
    """y_1 = exp(ADT_1) * (lam_0 dt_0 + (1 - lam_1) dt_1) * <q_1, Rot(theta_0 - theta_1) k_0>:
    the first token enters the state with both trapezoid weights, decays once, and is read
    through the angle turned between the two tokens, pi * tanh(angles_1) * dt_1."""
    lam, dt = torch.sigmoid(x["Trap"][0, 0]), x["DT"][0, 0]
    weight = lam[0] * dt[0] + (1 - lam[1]) * dt[1]
    turned = math.pi * torch.tanh(x["Angles"][0, 1, 0, 0]) * dt[1]
    return -torch.exp(x["ADT"][0, 0, 1]) * weight * torch.sin(turned)


def test_siso_turns_adjacent_dims_with_the_trapezoid_weights():
    x = two_tokens(pair_dim=1)  # dims 0 and 1 form the first pair
    y = mamba3_scan(**x, chunk_size=64)[0, :, 0, 0]
    assert y[0] == 0  # q_0 = 0
    torch.testing.assert_close(y[1], expected_second_output(x), rtol=1e-12, atol=0)
    far = mamba3_scan(**two_tokens(pair_dim=N // 2), chunk_size=64)
    assert far.abs().max() == 0  # dim N/2 is not dim 0's partner in SISO


def test_mimo_turns_dims_half_a_state_apart():
    mimo = {name: torch.ones(1, 1, 1, dtype=torch.float64) for name in ("MIMO_V", "MIMO_Z")}
    args = {"D": None, "Z": None, "MIMO_Out": None, "chunk_size": 8, "dtype": torch.float64}
    x = two_tokens(rank=1, pair_dim=N // 2)
    y = mamba3_mimo_scan(**x, **mimo, **args, rotary_dim_divisor=4)[0, :, 0, 0, 0]
    torch.testing.assert_close(y[1], expected_second_output(x), rtol=1e-12, atol=0)
    near = mamba3_mimo_scan(**two_tokens(rank=1, pair_dim=1), **mimo, **args, rotary_dim_divisor=4)
    assert near.abs().max() == 0


def test_mimo_scan_rejects_angles_that_do_not_match_the_divisor():
    x = scan_inputs(4, rank=2, angles=3)
    with pytest.raises(ValueError, match="rotary_dim_divisor=4"):
        mamba3_mimo_scan(
            **x, **mimo_weights(2), chunk_size=8, rotary_dim_divisor=4, dtype=torch.float64
        )


def test_scans_reject_packed_sequences():
    x = scan_inputs(4)
    with pytest.raises(ValueError, match="cu_seqlens"):
        mamba3_scan(**x, cu_seqlens=torch.tensor([0, 2, 4], dtype=torch.int32))


# ------------------------------------------------------------------------------ the mixer

CONFIGS = {
    "siso": {},
    "siso_gqa_rope1": {"ngroups": 2, "rope_fraction": 1.0},
    "siso_outproj_norm": {"is_outproj_norm": True},
    "mimo": {"is_mimo": True, "mimo_rank": 2},
    "mimo_gqa_outproj_norm": {"is_mimo": True, "mimo_rank": 2, "ngroups": 2,
                              "is_outproj_norm": True},
}  # fmt: skip
TINY = {"d_model": 16, "d_state": 8, "headdim": 8, "chunk_size": 8}  # 4 heads


def mixer(name, **overrides):
    return Mamba3(**TINY, **CONFIGS[name], layer_idx=0, **overrides)


def expected_state_dict_shapes(d_model, d_state=128, expand=2, headdim=64, ngroups=1,
                               rope_fraction=0.5, is_outproj_norm=False, is_mimo=False,
                               mimo_rank=4, **_):  # fmt: skip
    """Names and shapes of mamba_ssm.modules.mamba3.Mamba3's state_dict (2.3.2.post1)."""
    d_inner, rank = expand * d_model, mimo_rank if is_mimo else 1
    nheads = d_inner // headdim
    angles = int(d_state * rope_fraction) // 2 * 2 // 2
    shapes = {
        "in_proj.weight": (2 * d_inner + 2 * d_state * ngroups * rank + 3 * nheads + angles,
                           d_model),
        "dt_bias": (nheads,),
        "B_bias": (nheads, rank, d_state),
        "C_bias": (nheads, rank, d_state),
        "B_norm.weight": (d_state,),
        "C_norm.weight": (d_state,),
        "D": (nheads,),
        "out_proj.weight": (d_model, d_inner),
    }  # fmt: skip
    if is_mimo:
        shapes |= {name: (nheads, rank, headdim) for name in ("mimo_x", "mimo_z", "mimo_o")}
    if is_outproj_norm:
        shapes["norm.weight"] = (d_inner,)
    return shapes


@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_has_mamba_ssms_names_shapes_and_dtypes(name):
    layer = mixer(name, dtype=torch.bfloat16)
    shapes = expected_state_dict_shapes(**TINY, **CONFIGS[name])
    assert {k: tuple(v.shape) for k, v in layer.state_dict().items()} == shapes
    float32 = {"dt_bias", "B_bias", "C_bias", "D", "mimo_x", "mimo_z", "mimo_o"}
    for key, value in layer.state_dict().items():
        want = torch.float32 if key in float32 else torch.bfloat16
        assert value.dtype == want, f"{key} is {value.dtype}, mamba-ssm keeps {want}"
    checkpoint = {key: torch.randn(shape) for key, shape in shapes.items()}
    layer.load_state_dict(checkpoint, strict=True)
    assert torch.equal(layer.dt_bias, checkpoint["dt_bias"])


@pytest.mark.parametrize("name", ["siso_outproj_norm", "mimo_gqa_outproj_norm"])
def test_init_matches_mamba_ssm(name):
    dt_min, dt_max = 0.002, 0.05
    layer = mixer(name, dt_min=dt_min, dt_max=dt_max)
    dt = F.softplus(layer.dt_bias)
    assert ((dt >= dt_min * (1 - 1e-5)) & (dt <= dt_max * (1 + 1e-5))).all(), dt
    rank = layer.mimo_rank
    expected = {"B_bias": 1.0, "C_bias": 1.0, "D": 1.0, "B_norm.weight": 1.0,
                "C_norm.weight": 1.0, "norm.weight": 1.0, "mimo_x": 1 / rank, "mimo_z": 1.0,
                "mimo_o": 1 / rank}  # fmt: skip
    for key, value in layer.state_dict().items():
        if key in expected:
            assert torch.all(value == expected[key]), key
    no_decay = {n for n, p in layer.named_parameters() if getattr(p, "_no_weight_decay", False)}
    assert no_decay == {"dt_bias", "D"}


def test_init_draws_random_numbers_in_mamba_ssms_order():
    config = CONFIGS["mimo_gqa_outproj_norm"]
    torch.manual_seed(7)
    layer = mixer("mimo_gqa_outproj_norm")
    shapes = expected_state_dict_shapes(**TINY, **config)
    torch.manual_seed(7)
    in_proj = torch.nn.Linear(16, shapes["in_proj.weight"][0], bias=False)
    u = torch.rand(4)  # mamba-ssm: dt = exp(u * (log dt_max - log dt_min) + log dt_min)
    out_proj = torch.nn.Linear(32, 16, bias=False)
    dt = torch.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
    assert torch.equal(layer.in_proj.weight, in_proj.weight)
    torch.testing.assert_close(layer.dt_bias, dt + torch.log(-torch.expm1(-dt)))
    assert torch.equal(layer.out_proj.weight, out_proj.weight)


@pytest.mark.parametrize("name", CONFIGS)
def test_prefill_then_step_equals_the_full_forward(name):
    torch.manual_seed(0)
    layer = mixer(name, dtype=torch.float64)
    with torch.no_grad():  # away from the init, where every rank and head starts alike
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    u = torch.randn(2, 21, 16, dtype=torch.float64)
    prompt = 11
    with torch.no_grad():
        want = layer(u)
        params = SimpleNamespace(seqlen_offset=0, key_value_memory_dict={})
        got = [layer(u[:, :prompt], inference_params=params)]
        states = params.key_value_memory_dict[0]
        for t in range(prompt, u.shape[1]):
            params.seqlen_offset = t
            got.append(layer(u[:, t : t + 1], inference_params=params))
    assert params.key_value_memory_dict[0] is states  # advanced in place
    torch.testing.assert_close(torch.cat(got, dim=1), want, rtol=1e-10, atol=1e-10)


def test_inference_cache_has_mamba_ssms_layout():
    layer = mixer("mimo", dtype=torch.bfloat16)
    angle, ssm, k, v = layer.allocate_inference_cache(3, 100)
    assert (angle.shape, angle.dtype) == ((3, 4, 2), torch.float32)
    assert (ssm.shape, ssm.dtype) == ((3, 4, 8, 8), torch.float32)
    assert (k.shape, k.dtype) == ((3, 2, 4, 8), torch.bfloat16)
    assert (v.shape, v.dtype) == ((3, 4, 8), torch.bfloat16)
    assert mixer("siso").allocate_inference_cache(3, 100)[2].shape == (3, 1, 4, 8)


@pytest.mark.parametrize("name", ["siso_gqa_rope1", "siso_outproj_norm", "mimo",
                                  "mimo_gqa_outproj_norm"])  # fmt: skip
def test_a_gradient_reaches_every_parameter(name):
    torch.manual_seed(0)
    layer = mixer(name)
    layer(torch.randn(2, 13, 16)).square().sum().backward()
    for key, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().max() > 0, f"{key} gets a zero gradient"


@pytest.mark.parametrize("name", ["siso", "mimo_gqa_outproj_norm"])
def test_bfloat16_in_bfloat16_out(name):
    layer = mixer(name, dtype=torch.bfloat16)
    out = layer(torch.randn(2, 10, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_rejects_a_rope_fraction_the_kernels_do_not_have():
    with pytest.raises(ValueError, match="rope_fraction=0.25"):
        Mamba3(16, d_state=8, headdim=8, rope_fraction=0.25)
