"""layers: each of our mixers against mamba-ssm's own module, and our two paths against each other.

For every mixer, one layer (d_model 256) with random weights, moved by state_dict (strict) into
mamba-ssm's class, at lengths off the chunk grid (100 and 300; chunk 64):
  ours_vs_mamba_ssm   ours with the kernels against mamba-ssm's module: output, input gradient
                      and every parameter gradient, relative L2 error (float32 weights)
  fused_vs_composed   Mamba1/Mamba2: the whole-layer kernel against the kernels one by one
  reference_vs_fused  ours in plain PyTorch against ours with the kernels, float32, TF32 off
Mamba-3's kernel computes in bfloat16 inside (mamba3_siso_combined casts Q, K, V to it) and
serves bfloat16 inputs only (a float32 layer takes the plain-PyTorch scan), so its kernel side
runs under bfloat16 autocast and its reference_vs_fused row is at bfloat16's precision. MHA
(a hybrid's attention: grouped keys and values, the convolution over q, k, v and the MLP
inside) against mamba-ssm's MHA, without rotary embedding (mamba-ssm's needs flash-attn,
which the image does not install).
"""

import torch
from mamba_project import mixers
from throughput import table

from .common import rel

SHAPES = {
    "Mamba1": {"d_model": 256, "d_state": 16},
    "Mamba2": {"d_model": 256, "d_state": 64, "headdim": 64, "chunk_size": 64},
    "Mamba3": {"d_model": 256, "d_state": 64, "headdim": 64, "chunk_size": 64},
    "MHA": {"embed_dim": 256, "num_heads": 8, "num_heads_kv": 2, "d_conv": 4, "mlp_dim": 384,
            "causal": True},
}  # fmt: skip


def _theirs(mixer: str):
    if mixer == "MHA":
        from mamba_ssm.modules.mha import MHA

        return MHA
    if mixer == "Mamba1":
        from mamba_ssm.modules.mamba_simple import Mamba

        return Mamba
    if mixer == "Mamba2":
        from mamba_ssm.modules.mamba2 import Mamba2

        return Mamba2
    from mamba_ssm.modules.mamba3 import Mamba3

    return Mamba3


def _run(layer, u, weight, bf16=False):
    u = u.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = layer(u)
    (out.float() * weight).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in layer.named_parameters() if p.grad is not None}
    return out.detach().float(), u.grad.detach().float(), grads


def _compare(a, b) -> dict:
    out, du, grads = a
    want, want_du, want_grads = b
    errors = {name: rel(grads[name], g) for name, g in want_grads.items() if name in grads}
    worst = max(errors, key=errors.get)
    return {
        "out": rel(out, want),
        "input_grad": rel(du, want_du),
        "worst_param_grad": errors[worst],
        "worst_param": worst,
        "missing_grads": sorted(set(want_grads) - set(grads)),
    }


def section_layers(lengths=(100, 300)) -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = {}
    for mixer, shape in SHAPES.items():
        cls = mixers.MIXERS.get(mixer) or getattr(mixers, mixer)
        for length in lengths:
            torch.manual_seed(0)
            ours = cls(**shape, layer_idx=0).cuda()
            width = shape.get("d_model", shape.get("embed_dim"))
            u = torch.randn(2, length, width, device="cuda")
            weight = torch.randn(2, length, width, device="cuda")
            bf16 = mixer == "Mamba3"  # its kernel serves bfloat16 inputs only
            fused = _run(ours, u, weight, bf16)
            row = {}
            try:
                theirs = _theirs(mixer)(**shape, layer_idx=0).cuda()
                theirs.load_state_dict(ours.state_dict(), strict=True)
                row["ours_vs_mamba_ssm"] = _compare(fused, _run(theirs, u, weight, bf16))
            except Exception as err:  # report and go on with the other rows
                row["ours_vs_mamba_ssm"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            if mixer in ("Mamba1", "Mamba2"):
                composed = cls(**shape, layer_idx=0).cuda()
                composed.load_state_dict(ours.state_dict())
                composed.use_fast_path = composed.use_mem_eff_path = False
                row["fused_vs_composed"] = _compare(fused, _run(composed, u, weight))
            reference = cls(**shape, layer_idx=0, kernels=False).cuda()
            reference.load_state_dict(ours.state_dict())
            row["reference_vs_fused"] = _compare(_run(reference, u, weight), fused)
            results[f"{mixer} L={length}"] = row
    rows = [
        {
            "layer": name,
            "check": check,
            **{k: v for k, v in r.items() if k in ("out", "input_grad", "worst_param_grad")},
            "note": r.get("error", r.get("worst_param", ""))[:30],
        }
        for name, checks in results.items()
        for check, r in checks.items()
    ]
    table(rows, "layers: relative L2 errors, float32 weights, lengths off the chunk grid")
    return results
