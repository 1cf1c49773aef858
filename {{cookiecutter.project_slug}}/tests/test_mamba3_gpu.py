"""On a Hopper GPU with mamba-ssm: our Mamba3 computes what mamba-ssm's Mamba3 computes.

mamba-ssm's SISO kernel (Triton, sm_90 or newer) rounds Q, K, V, Trap, Angles and Z to
bfloat16 and stores the running rotation angles in bfloat16, so the comparisons are at
bfloat16 precision: relative errors ||a - b|| / ||b|| over whole tensors, every one of them
printed (`pytest -rP` shows them) and named in a failing assertion. The MIMO kernel needs
TileLang and mamba-ssm's own decoding step the CuTe DSL; their tests skip without them.
"""

import importlib
import importlib.util
from types import SimpleNamespace

import pytest
import torch

{% if cookiecutter.task == 'language_model' %}from {{ cookiecutter.package_name }}.backbone import BackboneConfig
{% endif %}from {{ cookiecutter.package_name }}.mixers.mamba3 import Mamba3
{% if cookiecutter.task == 'language_model' %}from {{ cookiecutter.package_name }}.model import MambaLM
{% endif %}from {{ cookiecutter.package_name }}.scan import mamba3_scan


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        importlib.util.find_spec("mamba_ssm") is None, reason="needs mamba-ssm (the GPU stack)"
    ),
    pytest.mark.skipif(not _hopper(), reason="mamba-ssm's Mamba-3 kernels need sm_90 or newer"),
]

# the kernel's preferred shapes: d_state 128, headdim 64 (8 heads of d_model 256), chunks of 64
CONFIG = {"d_model": 256, "d_state": 128, "headdim": 64, "chunk_size": 64, "layer_idx": 0}
OUT_TOLERANCE = 2e-2  # bfloat16 inputs inside the kernel (8 bits of mantissa)
GRAD_TOLERANCE = 5e-2  # the kernel's backward also keeps its per-chunk states in bfloat16


@pytest.fixture(autouse=True)
def exact_float32():
    """Our reference in true float32: no TF32 in its matmuls."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return ((got - want).norm() / want.norm().clamp(min=1e-30)).item()


def assert_close_all(errors: dict, tolerance: float, what: str):
    listing = ", ".join(f"{k}={v:.2e}" for k, v in errors.items())
    print(f"{what}: {listing}")
    over = [k for k, v in errors.items() if not v <= tolerance]  # NaN counts as over
    assert not over, f"{what}: relative error over {tolerance:g} for {over}; all: {listing}"


def perturb(layer):
    """Move the ones-initialised parameters, so that every one of them matters."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if not name.startswith(("in_proj", "out_proj", "dt_bias")):
                p.add_(0.2 * torch.randn_like(p))


def mamba_ssm_mamba3(dtype=None, **options):
    from mamba_ssm.modules.mamba3 import Mamba3 as Theirs

    torch.manual_seed(0)
    layer = Theirs(**{**CONFIG, **options}, device="cuda", dtype=dtype)
    perturb(layer)
    return layer


def ours_like(theirs, kernels: bool, **options) -> Mamba3:
    """Our float32 layer with `theirs`'s weights."""
    ours = Mamba3(**{**CONFIG, **options}, kernels=kernels, device="cuda")
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours


def forward_backward(layer, u: torch.Tensor, grad: torch.Tensor, bf16: bool = False):
    """Output, input gradient and every parameter's gradient of <layer(u), grad>; bf16: under
    bfloat16 autocast, where our layer runs the kernel (a float32 one takes the scan)."""
    u = u.detach().clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = layer(u)
    (out.float() * grad).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in layer.named_parameters()}
    layer.zero_grad(set_to_none=True)
    return out.detach(), u.grad.detach(), grads


def compare_layers(ours, theirs, u, grad, out_tolerance, grad_tolerance, what, bf16=False):
    """bf16: `theirs` runs under bfloat16 autocast."""
    out, du, grads = forward_backward(ours, u.float(), grad)
    want_out, want_du, want_grads = forward_backward(theirs, u, grad, bf16)
    assert_close_all({"out": relative_error(out, want_out)}, out_tolerance, f"{what} output")
    errors = {"u": relative_error(du, want_du)}
    errors |= {name: relative_error(grads[name], want_grads[name]) for name in want_grads}
    assert_close_all(errors, grad_tolerance, f"{what} gradients")


# ------------------------------------------------------------------------------ SISO


def siso_inputs(length, heads=8, groups=2, nstate=128, headdim=64, angles=32, batch=2):
    def randn(*shape):
        return torch.randn(*shape, device="cuda")

    dt = torch.nn.functional.softplus(randn(batch, heads, length) - 3)  # about 0.05
    return {
        "Q": randn(batch, length, groups, nstate),
        "K": randn(batch, length, groups, nstate),
        "V": randn(batch, length, heads, headdim),
        "ADT": -torch.nn.functional.softplus(randn(batch, heads, length)) * dt,
        "DT": dt,
        "Trap": randn(batch, heads, length),
        "Q_bias": 1 + 0.2 * randn(heads, nstate),
        "K_bias": 1 + 0.2 * randn(heads, nstate),
        "Angles": randn(batch, length, heads, angles),
        "D": randn(heads),
        "Z": randn(batch, length, heads, headdim),
    }


def siso_states(heads=8, nstate=128, headdim=64, angles=32, batch=2):
    return (
        torch.rand(batch, heads, angles, device="cuda") * 6.28,
        0.1 * torch.randn(batch, heads, headdim, nstate, device="cuda"),
        torch.randn(batch, heads, nstate, device="cuda"),
        torch.randn(batch, heads, headdim, device="cuda"),
    )


def angle_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """Largest difference of two angles, modulo 2 pi."""
    d = torch.remainder(got.double() - want.double() + torch.pi, 2 * torch.pi) - torch.pi
    return d.abs().max().item()


@pytest.mark.parametrize("length", [100, 300])
@pytest.mark.parametrize("with_states", [False, True], ids=["zero_states", "given_states"])
def test_reference_scan_matches_the_siso_kernel(length, with_states):
    """Our scan on the kernel's bfloat16-rounded inputs against mamba3_siso_combined: output,
    final states, and the gradient of every input."""
    from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

    torch.manual_seed(0)
    x = {k: v.requires_grad_(True) for k, v in siso_inputs(length).items()}
    states = siso_states() if with_states else None
    rounded = {k: v.bfloat16().float() if k in ("Q", "K", "V", "Trap", "Angles", "Z") else v
               for k, v in x.items()}  # fmt: skip
    grad = torch.randn(2, length, 8, 64, device="cuda")
    results = {}
    for name, scan, inputs in (("kernel", mamba3_siso_combined, x), ("ours", mamba3_scan, rounded)):
        out, angle, ssm, k, v = scan(
            **inputs, Input_States=states, chunk_size=64, return_final_states=True
        )
        grads = torch.autograd.grad((out.float() * grad).sum(), list(x.values()))
        results[name] = (out, angle, ssm, k, v, dict(zip(x, grads, strict=True)))
    (out, angle, ssm, k, v, grads), want = results["ours"], results["kernel"]
    assert want[0].shape == out.shape == (2, length, 8, 64)
    assert angle.shape == want[1].shape and ssm.shape == want[2].shape == (2, 8, 64, 128)
    assert k.shape == want[3].shape == (2, 8, 128) and v.shape == want[4].shape == (2, 8, 64)
    errors = {
        "out": relative_error(out, want[0]),
        "final_ssm": relative_error(ssm, want[2]),
        "final_k": relative_error(k, want[3]),
        "final_v": relative_error(v, want[4]),
    }
    assert_close_all(errors, OUT_TOLERANCE, f"siso scan L={length}")
    # the kernel stores the final angles in bfloat16: 2^-6 apart just under 2 pi
    assert angle_error(angle, want[1]) < 2e-2, angle_error(angle, want[1])
    errors = {name: relative_error(grads[name], want[5][name]) for name in x}
    assert_close_all(errors, GRAD_TOLERANCE, f"siso scan L={length} input gradients")


@pytest.mark.parametrize("length", [100, 300])
@pytest.mark.parametrize(
    "options",
    [{}, {"is_outproj_norm": True}, {"ngroups": 2, "rope_fraction": 1.0}],
    ids=["plain", "outproj_norm", "gqa_rope1"],
)
def test_reference_mixer_matches_mamba_ssms_mixer(length, options):
    theirs = mamba_ssm_mamba3(**options)
    ours = ours_like(theirs, kernels=False, **options)
    u = torch.randn(2, length, 256, device="cuda")
    grad = torch.randn(2, length, 256, device="cuda")
    compare_layers(
        ours, theirs, u, grad, OUT_TOLERANCE, GRAD_TOLERANCE, f"Mamba3 {options} L={length}"
    )


@pytest.mark.parametrize("length", [100, 300])
def test_our_kernel_path_matches_our_reference_path(length):
    """Under bf16 autocast our layer runs the kernel: the float32 reference agrees with it."""
    theirs = mamba_ssm_mamba3(is_outproj_norm=True)
    fused = ours_like(theirs, kernels=True, is_outproj_norm=True)
    reference = ours_like(theirs, kernels=False, is_outproj_norm=True)
    u = torch.randn(2, length, 256, device="cuda")
    grad = torch.randn(2, length, 256, device="cuda")
    compare_layers(
        reference, fused, u, grad, 5e-2, 1e-1, f"kernels=True bf16 L={length}", bf16=True
    )


def test_a_float32_layer_runs_the_scan_not_the_bfloat16_kernel(monkeypatch):
    """The kernel rounds its inputs to bfloat16: a float32 layer with kernels=True computes
    what the plain-PyTorch path computes, and the kernel is not called; under bf16 autocast
    it is."""
    module = importlib.import_module("mamba_ssm.ops.triton.mamba3.mamba3_siso_combined")
    calls = []
    kernel = module.mamba3_siso_combined
    monkeypatch.setattr(
        module, "mamba3_siso_combined", lambda *a, **k: calls.append(1) or kernel(*a, **k)
    )
    theirs = mamba_ssm_mamba3()
    fused, reference = ours_like(theirs, kernels=True), ours_like(theirs, kernels=False)
    u = torch.randn(2, 100, 256, device="cuda")
    grad = torch.randn(2, 100, 256, device="cuda")
    compare_layers(reference, fused, u, grad, 1e-5, 1e-5, "float32 kernels=True")
    assert not calls, "a float32 layer called mamba-ssm's bfloat16 kernel"
    forward_backward(fused, u, grad, bf16=True)
    assert calls, "under bf16 autocast the layer did not call mamba-ssm's kernel"


# ------------------------------------------------------------------------------ MIMO


def _tilelang_mimo() -> bool:
    try:
        from mamba_ssm.ops.tilelang.mamba3.mamba3_mimo import mamba3_mimo  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _tilelang_mimo(), reason="mamba-ssm's MIMO kernel needs TileLang")
@pytest.mark.parametrize("length", [100, 300])
@pytest.mark.parametrize("is_outproj_norm", [False, True], ids=["gated", "outproj_norm"])
def test_reference_mixer_matches_mamba_ssms_mimo_mixer(length, is_outproj_norm):
    """The MIMO kernel computes in the layer's dtype: theirs in bfloat16, ours in float32 on
    the same weights and input."""
    # chunk_size 64 / mimo_rank, as mamba-ssm recommends
    options = {"is_mimo": True, "mimo_rank": 4, "chunk_size": 16}
    options["is_outproj_norm"] = is_outproj_norm
    theirs = mamba_ssm_mamba3(dtype=torch.bfloat16, **options)
    ours = ours_like(theirs, kernels=False, **options)
    u = torch.randn(2, length, 256, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(2, length, 256, device="cuda")
    compare_layers(ours, theirs, u, grad, 3e-2, 1e-1, f"Mamba3 MIMO {options} L={length}")


# ------------------------------------------------------------------------------ decoding


def decode(layer, u: torch.Tensor, prompt: int) -> torch.Tensor:
    """The prompt through forward (filling the cache), then one token at a time."""
    params = SimpleNamespace(seqlen_offset=0, key_value_memory_dict={})
    outs = [layer(u[:, :prompt], inference_params=params)]
    for t in range(prompt, u.shape[1]):
        params.seqlen_offset = t
        outs.append(layer(u[:, t : t + 1], inference_params=params))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("kernels", [True, False], ids=["kernel_prefill", "reference"])
@pytest.mark.parametrize(
    "options",
    [{}, {"ngroups": 2, "is_outproj_norm": True}, {"is_mimo": True, "mimo_rank": 4}],
    ids=["siso", "siso_gqa_outproj_norm", "mimo"],
)
@torch.no_grad()
def test_step_after_prefill_matches_the_full_forward(kernels, options):
    """With kernels (under bf16 autocast, where the kernel runs) the prompt's final states come
    from mamba-ssm's kernel and our step runs on them: a k state in another layout
    (unrotated, scaled) would not continue the output."""
    torch.manual_seed(0)
    layer = Mamba3(**CONFIG, **options, kernels=kernels, device="cuda")
    perturb(layer)
    u = torch.randn(2, 90, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=kernels):
        want = layer(u).float()
        got = decode(layer, u, prompt=70).float()
    tolerance = OUT_TOLERANCE if kernels else 1e-4  # bf16 autocast with kernels
    errors = {"prompt": relative_error(got[:, :70], want[:, :70])}
    errors["steps"] = relative_error(got[:, 70:], want[:, 70:])
    assert_close_all(errors, tolerance, f"decode {options} kernels={kernels}")
{%- if cookiecutter.task == 'language_model' %}


@pytest.mark.parametrize("batch", [1, 3])
@torch.no_grad()
def test_float32_greedy_tokens_are_the_argmax_of_the_models_own_full_forward(batch):
    """A float32 Mamba3 LM on the GPU decodes (graph replay) the tokens its own full forward
    picks at each position: prefill, steps and forward are all float32."""
    torch.manual_seed(0)
    config = BackboneConfig(impl="fused", mixer="Mamba3", d_model=256, n_layer=3, d_state=128,
                            headdim=64, chunk_size=64)  # fmt: skip
    model = MambaLM(config, vocab_size=512).cuda().eval()
    ids = torch.randint(0, 512, (batch, 70), generator=torch.Generator().manual_seed(1)).cuda()
    out = model.generate(ids, 60)
    want = model(out[:, :-1]).argmax(-1)[:, 69:]  # teacher-forced, at each decoded position
    agree = (want == out[:, 70:]).float().mean().item()
    assert agree == 1.0, f"greedy tokens equal the full forward's argmax at {agree:.1%}"
{%- endif %}


def _cute_step() -> bool:
    try:
        from mamba_ssm.modules.mamba3 import mamba3_step_fn
    except Exception:
        return False
    return mamba3_step_fn is not None


@pytest.mark.skipif(not _cute_step(), reason="mamba-ssm's Mamba-3 step needs the CuTe DSL")
@pytest.mark.parametrize("is_outproj_norm", [False, True], ids=["gated", "outproj_norm"])
@torch.no_grad()
def test_our_step_matches_mamba_ssms_step(is_outproj_norm):
    """Both prefill the same prompt with their kernels, then step; mamba-ssm's step takes
    (B, d_model) and needs ngroups 1 (it expands B/C over the heads)."""
    from mamba_ssm.utils.generation import InferenceParams

    theirs = mamba_ssm_mamba3(is_outproj_norm=is_outproj_norm)
    ours = ours_like(theirs, kernels=True, is_outproj_norm=is_outproj_norm)
    u = torch.randn(2, 80, 256, device="cuda")
    their_params = InferenceParams(max_seqlen=80, max_batch_size=2)
    theirs(u[:, :64], inference_params=their_params)
    their_states = their_params.key_value_memory_dict[0]
    our_params = SimpleNamespace(seqlen_offset=0, key_value_memory_dict={})
    ours(u[:, :64], inference_params=our_params)
    our_states = our_params.key_value_memory_dict[0]
    errors = {}
    for t in range(64, 80):
        want = theirs.step(u[:, t], *their_states)[0]
        got = ours.step(u[:, t : t + 1], *our_states)[0][:, 0]
        errors[f"token {t}"] = relative_error(got, want)
    assert_close_all(errors, OUT_TOLERANCE, f"step outproj_norm={is_outproj_norm}")
