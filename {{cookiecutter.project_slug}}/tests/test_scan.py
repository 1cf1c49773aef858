"""The chunked scans compute exactly what the token-by-token recurrences compute."""

import pytest
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }}.scan import (
    selective_scan,
    selective_scan_sequential,
    ssd_scan,
    ssd_scan_sequential,
)


def selective_inputs(batch=2, length=37, dim=6, nstate=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": g}
    return {
        "x": torch.randn(batch, length, dim, **f64),
        "dt": F.softplus(torch.randn(batch, length, dim, **f64) - 1),
        "A": -torch.rand(dim, nstate, **f64) * 8,
        "B": torch.randn(batch, length, nstate, **f64),
        "C": torch.randn(batch, length, nstate, **f64),
        "D": torch.randn(dim, **f64),
        "z": torch.randn(batch, length, dim, **f64),
        "initial_state": torch.randn(batch, dim, nstate, **f64),
    }


def ssd_inputs(batch=2, length=37, nheads=4, headdim=3, ngroups=2, nstate=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    f64 = {"dtype": torch.float64, "generator": g}
    return {
        "x": torch.randn(batch, length, nheads, headdim, **f64),
        "dt": F.softplus(torch.randn(batch, length, nheads, **f64)),
        "A": -torch.rand(nheads, **f64) * 4,
        "B": torch.randn(batch, length, ngroups, nstate, **f64),
        "C": torch.randn(batch, length, ngroups, nstate, **f64),
        "D": torch.randn(nheads, **f64),
        "initial_state": torch.randn(batch, nheads, headdim, nstate, **f64),
    }


SCANS = {
    "selective": (selective_scan, selective_scan_sequential, selective_inputs),
    "ssd": (ssd_scan, ssd_scan_sequential, ssd_inputs),
}


@pytest.mark.parametrize("kind", SCANS)
@pytest.mark.parametrize("length,chunk_size", [(37, 8), (37, 16), (16, 16), (5, 16), (1, 4)])
def test_chunked_scan_matches_sequential_oracle_forward_and_gradients(kind, length, chunk_size):
    chunked, sequential, make = SCANS[kind]
    inputs = make(length=length)
    leaves = {k: v.requires_grad_() for k, v in inputs.items()}
    y1, s1 = chunked(**leaves, return_final_state=True, chunk_size=chunk_size)
    y2, s2 = sequential(**leaves, return_final_state=True)
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s1, s2, rtol=1e-10, atol=1e-10)

    weights = torch.randn_like(y1), torch.randn_like(s1)
    g1 = torch.autograd.grad(
        (y1 * weights[0]).sum() + (s1 * weights[1]).sum(), list(leaves.values())
    )
    g2 = torch.autograd.grad(
        (y2 * weights[0]).sum() + (s2 * weights[1]).sum(), list(leaves.values())
    )
    for name, a, b in zip(leaves, g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")


@pytest.mark.parametrize("kind", SCANS)
def test_scan_is_causal(kind):
    chunked, _, make = SCANS[kind]
    inputs = make(length=40)
    y = chunked(**inputs, chunk_size=8)
    changed = {k: v.clone() for k, v in inputs.items()}
    for name in ("x", "B", "C"):
        changed[name][:, 25:] = torch.randn_like(changed[name][:, 25:])
    y_changed = chunked(**changed, chunk_size=8)
    torch.testing.assert_close(y[:, :25], y_changed[:, :25], rtol=0, atol=0)
    assert not torch.allclose(y[:, 25:], y_changed[:, 25:])


@pytest.mark.parametrize("kind", SCANS)
def test_splitting_a_sequence_and_carrying_the_state_changes_nothing(kind):
    chunked, _, make = SCANS[kind]
    inputs = make(length=30)
    inputs.pop("initial_state")
    whole = chunked(**inputs, chunk_size=8)
    per_step = [k for k in inputs if k not in ("A", "D")]  # the rest are parameters
    first = {**inputs, **{k: inputs[k][:, :13] for k in per_step}}
    rest = {**inputs, **{k: inputs[k][:, 13:] for k in per_step}}
    y1, state = chunked(**first, chunk_size=8, return_final_state=True)
    y2 = chunked(**rest, chunk_size=8, initial_state=state)
    torch.testing.assert_close(torch.cat([y1, y2], 1), whole, rtol=1e-10, atol=1e-10)


def test_selective_scan_stays_finite_with_strong_decay():
    inputs = selective_inputs(length=64)
    inputs["dt"] = inputs["dt"] * 0 + 50.0  # decay e^-400 per step: the state forgets at once
    y1 = selective_scan(**inputs)
    y2 = selective_scan_sequential(**inputs)
    assert torch.isfinite(y1).all()
    torch.testing.assert_close(y1, y2, rtol=1e-10, atol=1e-10)


def test_float32_inputs_return_float32():
    inputs = {k: v.float() for k, v in selective_inputs().items()}
    assert selective_scan(**inputs).dtype == torch.float32
    inputs = {k: v.float() for k, v in ssd_inputs().items()}
    assert ssd_scan(**inputs).dtype == torch.float32
