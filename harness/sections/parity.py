"""Kernels and parity: which fast paths are active, and the twin equals mamba-ssm.

kernels: what `check_kernels` finds, and what happens when causal-conv1d is missing.
parity:  fused vs reference with the same weights (strict load both ways), outputs and every
         gradient in float32 (also against a float64 run of the twin) and under bf16 autocast;
         same seed gives bit-identical parameters; a fused checkpoint loads on a CPU.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from mamba_project.backbone import Backbone, BackboneConfig
from mamba_project.machinery.kernels import check_kernels
from mamba_project.model import MambaLM
from mamba_project.module import LanguageModelling
from throughput import table

from .common import PACKAGE, rel

TOLERANCE = {"Mamba1": 1e-4, "Mamba2": 1e-3}  # float32 relative error, fused vs reference
BF16_TOLERANCE = 5e-2  # mamba-ssm's own tests allow ~3e-2..6e-2 relative error in bf16


def section_kernels() -> dict:
    active = check_kernels("warn")
    probe = (
        "import sys, json\n"
        "sys.modules['causal_conv1d'] = sys.modules['causal_conv1d_cuda'] = None  # unimportable\n"
        f"from {PACKAGE}.machinery.kernels import check_kernels\n"
        "print(json.dumps(check_kernels('warn')))\n"
        "try:\n    check_kernels('require'); print('no error')\n"
        "except RuntimeError as err:\n    print('require ->', err)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    lines = run.stdout.strip().splitlines()
    result = {
        "active": active,
        "without_causal_conv1d": json.loads(lines[0]) if lines else run.stderr[-2000:],
        "require_without_causal_conv1d": lines[1] if len(lines) > 1 else run.stderr[-2000:],
    }
    table([{"path": k, "active": v} for k, v in active.items()], "fast paths on this GPU")
    print("without causal-conv1d:", result["without_causal_conv1d"])
    print(result["require_without_causal_conv1d"])
    return result


def parity_config(mixer: str, d_intermediate: int, impl: str) -> BackboneConfig:
    d_state = 16 if mixer == "Mamba1" else 64
    return BackboneConfig(
        impl=impl,
        mixer=mixer,
        d_model=256,
        n_layer=2,
        d_state=d_state,
        headdim=64,
        chunk_size=256,
        d_intermediate=d_intermediate,
    )


def run_backbone(model, ids, weight, autocast: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model(ids)
    (out.double() * weight).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), grads


def section_parity() -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows, vocab = [], 1024
    for mixer in ("Mamba1", "Mamba2"):
        for d_intermediate in (0, 512):
            torch.manual_seed(0)
            fused = Backbone(parity_config(mixer, d_intermediate, "fused"), vocab).cuda()
            reference = Backbone(parity_config(mixer, d_intermediate, "reference"), vocab).cuda()
            reference.load_state_dict(fused.state_dict(), strict=True)
            fused.load_state_dict(reference.state_dict(), strict=True)
            reference64 = Backbone(parity_config(mixer, d_intermediate, "reference"), vocab)
            reference64.load_state_dict(fused.state_dict(), strict=True)
            reference64 = reference64.cuda().double()
            for length in (64, 257, 1024):
                ids = torch.randint(0, vocab, (2, length), device="cuda")
                weight = torch.randn(2, length, 256, device="cuda", dtype=torch.float64)
                f32, gf32 = run_backbone(fused, ids, weight, autocast=False)
                r32, gr32 = run_backbone(reference, ids, weight, autocast=False)
                r64, gr64 = run_backbone(reference64, ids, weight, autocast=False)
                fbf, gfbf = run_backbone(fused, ids, weight, autocast=True)
                rbf, grbf = run_backbone(reference, ids, weight, autocast=True)
                grad = lambda a, b: max(rel(a[n], b[n]) for n in b)  # noqa: E731
                worst = max(gr64, key=lambda n: rel(gf32[n], gr64[n]))
                row = {
                    "mixer": mixer,
                    "mlp": bool(d_intermediate),
                    "L": length,
                    "out_f_r": rel(f32, r32),
                    "out_f_r64": rel(f32, r64),
                    "out_r_r64": rel(r32, r64),
                    "grad_f_r": grad(gf32, gr32),
                    "grad_f_r64": grad(gf32, gr64),
                    "grad_r_r64": grad(gr32, gr64),
                    "bf16_out": rel(fbf, r64),
                    "bf16_grad": grad(gfbf, gr64),
                    "worst_grad": worst.split("layers.")[-1],
                    "ref_bf16_out": rel(rbf, r64),
                    "ref_bf16_grad": grad(grbf, gr64),
                }
                tol = TOLERANCE[mixer]
                row["pass"] = (
                    min(row["out_f_r"], row["out_f_r64"]) <= tol
                    and min(row["grad_f_r"], row["grad_f_r64"]) <= tol
                    and row["bf16_out"] <= BF16_TOLERANCE
                    and row["bf16_grad"] <= BF16_TOLERANCE
                )
                rows.append(row)
    table(rows, "parity: relative error, fused (f) vs reference (r), float32 unless bf16")
    return {"rows": rows, "init": init_identity(), "checkpoint": checkpoint_to_cpu()}


def init_identity() -> dict:
    """Same seed -> bit-identical parameters in mamba-ssm's MixerModel and in our twin."""
    from mamba_ssm.models.mixer_seq_simple import MixerModel

    result = {}
    for mixer in ("Mamba1", "Mamba2"):
        cfg = parity_config(mixer, 512, "reference")
        torch.manual_seed(0)
        theirs = MixerModel(
            cfg.d_model,
            cfg.n_layer,
            cfg.d_intermediate,
            1024,
            ssm_cfg=cfg.ssm_cfg(),
            rms_norm=True,
            residual_in_fp32=True,
            fused_add_norm=True,
        )
        torch.manual_seed(0)
        ours = Backbone(cfg, 1024)
        a, b = theirs.state_dict(), ours.state_dict()
        same_keys = list(a) == list(b)
        identical = same_keys and all(
            torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a
        )
        result[mixer] = {"same_keys_in_order": same_keys, "bit_identical": identical}
    print("\ninit, same seed, mamba-ssm MixerModel vs reference twin:", result)
    return result


def checkpoint_to_cpu() -> dict:
    """A checkpoint the fused model writes on the GPU loads into the reference model on a CPU."""
    torch.manual_seed(0)
    config = parity_config("Mamba2", 0, "fused")
    model = LanguageModelling(MambaLM(config, vocab_size=1000))
    data = torch.utils.data.TensorDataset(
        torch.randint(0, 1000, (16, 128)), torch.randint(0, 1000, (16, 128))
    )
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        max_steps=4,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4))
    ids = torch.randint(0, 1000, (2, 300))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fused.ckpt"
        trainer.save_checkpoint(path)
        model.cuda().eval()  # Lightning hands the model back on the CPU after fit
        with torch.no_grad():
            torch.save(
                {"ids": ids, "logits": model.net(ids.cuda()).float().cpu()}, Path(tmp) / "gpu.pt"
            )
        code = (
            "import torch, sys\n"
            f"from {PACKAGE}.checkpoint import load_trained\n"
            "m = load_trained(sys.argv[1], impl='reference').net\n"
            "ref = torch.load(sys.argv[2])\n"
            "with torch.no_grad(): out = m(ref['ids'])\n"
            "err = ((out - ref['logits']).norm() / ref['logits'].norm()).item()\n"
            "print(m.backbone.impl, next(m.parameters()).device, err)\n"
        )
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        run = subprocess.run(
            [sys.executable, "-c", code, str(path), str(Path(tmp) / "gpu.pt")],
            capture_output=True,
            text=True,
            env=env,
        )
    words = run.stdout.split()
    result = {"stdout": run.stdout.strip(), "stderr": run.stderr[-1500:] if run.returncode else ""}
    if len(words) == 3:
        result.update(impl=words[0], device=words[1], rel_err_logits=float(words[2]))
    print("\nfused checkpoint -> reference on CPU:", result)
    return result
