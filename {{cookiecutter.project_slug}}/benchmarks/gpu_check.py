"""Proof on a real GPU: fused kernels active, the twin equals mamba-ssm, and how fast `fit` is.

    python benchmarks/gpu_check.py                       # everything, about 6 minutes on an H100
    python benchmarks/gpu_check.py --sections parity     # kernels|parity|throughput|profile
    modal run modal_app.py::gpu_check                    # the same on a Modal GPU

Sections:
  kernels     which fast paths are active; what happens when causal-conv1d is missing
  parity      fused vs reference (same weights, strict load): outputs and every gradient, in
              float32 (also against a float64 run of the twin) and under bf16 autocast; a
              checkpoint written by the fused model loads into the reference one on the CPU
  throughput  24 layers x d_model 768, vocab 50280, B=8, L=2048, bf16, fused AdamW:
              (a) our Lightning fit, (b) a raw loop over mamba-ssm's MambaLMHeadModel with
              cross-entropy on float32 logits, (c) HF transformers' MambaForCausalLM (Mamba1),
              (d) our reference twin; peak memory for each; L=8192
  profile     ms per step by kernel group for (a), (a) without clipping, (a) with (b)'s loss,
              and (b), profiled inside the training loop

Prints a table per section and writes everything to benchmarks/results/gpu_check.json.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }}.backbone import Backbone, BackboneConfig
from {{ cookiecutter.package_name }}.kernels import check_kernels
from {{ cookiecutter.package_name }}.module import MambaModule

PACKAGE = "{{ cookiecutter.package_name }}"
RESULTS = Path(__file__).resolve().parent / "results"
TOLERANCE = {"Mamba1": 1e-4, "Mamba2": 1e-3}  # float32 relative error, fused vs reference
BF16_TOLERANCE = 5e-2  # mamba-ssm's own tests allow ~3e-2..6e-2 relative error in bf16


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30)).item()


def table(rows: list[dict], title: str) -> None:
    print(f"\n== {title}")
    if not rows:
        return
    keys = list(rows[0])
    print(" | ".join(f"{k:>12s}" for k in keys))
    for row in rows:
        cells = [f"{v:12.3e}" if isinstance(v, float) else f"{v!s:>12s}" for v in row.values()]
        print(" | ".join(cells))


# ------------------------------------------------------------------------------- kernels


def section_kernels() -> dict:
    active = check_kernels("warn")
    probe = (
        "import sys, json\n"
        "sys.modules['causal_conv1d'] = sys.modules['causal_conv1d_cuda'] = None  # unimportable\n"
        f"from {PACKAGE}.kernels import check_kernels\n"
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


# -------------------------------------------------------------------------------- parity


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
    model = MambaModule(backbone=config, vocab_size=1000)
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
                {"ids": ids, "logits": model(ids.cuda()).float().cpu()}, Path(tmp) / "gpu.pt"
            )
        code = (
            "import torch, sys\n"
            f"from {PACKAGE}.module import MambaModule\n"
            "m = MambaModule.load_for_device(sys.argv[1], impl='reference', map_location='cpu')\n"
            "m.eval()\n"
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


# ---------------------------------------------------------------------------- throughput

SIZE = {"d_model": 768, "n_layer": 24, "vocab": 50280, "batch": 8, "length": 2048}
MIXER_STATE = {"Mamba1": {"d_state": 16}, "Mamba2": {"d_state": 128, "headdim": 64}}


def lm_config(mixer: str, impl: str) -> BackboneConfig:
    return BackboneConfig(
        impl=impl,
        mixer=mixer,
        d_model=SIZE["d_model"],
        n_layer=SIZE["n_layer"],
        chunk_size=256,
        **MIXER_STATE[mixer],
    )


def timed_loop(step, batches, warmup: int, steps: int) -> dict:
    for i in range(warmup):
        step(*batches[i % len(batches)])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = steps * batches[0][0].numel()
    return {
        "ktok_s": tokens / seconds / 1e3,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "step_ms": seconds / steps * 1e3,
    }


def random_batches(batch: int, length: int, n: int = 4, device="cuda"):
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, SIZE["vocab"], (batch, length), generator=g).to(device),
            torch.randint(0, SIZE["vocab"], (batch, length), generator=g).to(device),
        )
        for _ in range(n)
    ]


def profiled(run, steps: int) -> dict:
    """Top CUDA kernels by time, and GPU-busy time per step (vs wall time: launch gaps)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        result = run()
    averages = prof.key_averages()
    total = sum(e.self_device_time_total for e in averages)  # microseconds
    top = sorted(averages, key=lambda e: e.self_device_time_total, reverse=True)[:15]
    result["gpu_busy_ms_per_step"] = total / 1e3 / steps
    result["profile_top_kernels"] = [
        {"name": e.key[:90], "share": e.self_device_time_total / max(total, 1), "calls": e.count}
        for e in top
    ]
    return result


def raw_step(model_fn):
    """(b)/(c)'s training step: bf16 autocast, float32 logits, plain cross-entropy, fused AdamW."""
    model = model_fn().cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(ids, targets):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def raw_loop(model_fn, batch, length, warmup, steps, profile=False) -> dict:
    """(b)/(c): a plain PyTorch loop over a ready-made model."""
    step = raw_step(model_fn)

    def run() -> dict:
        return timed_loop(step, random_batches(batch, length), warmup, steps)

    return profiled(run, warmup + steps) if profile else run()


class _Timer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.warmup


def fit_setup(
    mixer, impl, batch, length, max_steps, clip, callback, module_cls=MambaModule, devices=1
):
    """The model, random-token batches and a Trainer as `python -m ... fit` would build them.

    With devices > 1 the Trainer runs DDP and each GPU gets its own `batch` per step.
    """
    torch.manual_seed(0)
    model = module_cls(backbone=lm_config(mixer, impl), vocab_size=SIZE["vocab"], warmup_steps=2)
    g = torch.Generator().manual_seed(0)
    n = batch * max_steps * devices
    data = torch.utils.data.TensorDataset(
        torch.randint(0, SIZE["vocab"], (n, length), generator=g),
        torch.randint(0, SIZE["vocab"], (n, length), generator=g),
    )
    loader = torch.utils.data.DataLoader(data, batch_size=batch, pin_memory=True, num_workers=2)
    trainer = L.Trainer(
        accelerator="gpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        precision="bf16-mixed",
        max_steps=max_steps,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        log_every_n_steps=50,
    )
    return model, loader, trainer


def lightning_fit(mixer, impl, batch, length, warmup, steps, clip=1.0, profile=False) -> dict:
    """(a)/(d): our MambaModule through Lightning's Trainer, as `python -m ... fit` runs it."""
    timer = _Timer(warmup)
    model, loader, trainer = fit_setup(mixer, impl, batch, length, warmup + steps, clip, timer)

    def run() -> dict:
        trainer.fit(model, loader)
        return {
            "ktok_s": timer.steps * batch * length / timer.seconds / 1e3,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "step_ms": timer.seconds / timer.steps * 1e3,
        }

    result = profiled(run, warmup + steps) if profile else run()
    torch.cuda.empty_cache()
    return result


def mamba_ssm_lm(mixer):
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    config = MambaConfig(
        d_model=SIZE["d_model"],
        n_layer=SIZE["n_layer"],
        vocab_size=SIZE["vocab"],
        ssm_cfg={"layer": mixer, **MIXER_STATE[mixer]},
        rms_norm=True,
        residual_in_fp32=True,
        fused_add_norm=True,
    )
    return lambda: MambaLMHeadModel(config)


def hf_mamba_lm():
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(
        vocab_size=SIZE["vocab"],
        hidden_size=SIZE["d_model"],
        num_hidden_layers=SIZE["n_layer"],
        state_size=16,
        expand=2,
        conv_kernel=4,
        use_mambapy=False,
    )
    return lambda: MambaForCausalLM(config)


def guarded(fn, *args, **kwargs) -> dict:
    try:
        return fn(*args, **kwargs)
    except torch.cuda.OutOfMemoryError as err:
        torch.cuda.empty_cache()
        return {"error": f"out of memory: {str(err).splitlines()[0]}"}
    except Exception as err:  # report and carry on with the other measurements
        torch.cuda.empty_cache()
        return {"error": f"{type(err).__name__}: {str(err)[:300]}"}


def section_throughput(steps: int) -> dict:
    b, length, warm = SIZE["batch"], SIZE["length"], 5
    results = {}
    for mixer in ("Mamba1", "Mamba2"):
        r = {
            "a_lightning_fit": guarded(lightning_fit, mixer, "fused", b, length, warm, steps),
            "a_lightning_fit_no_clip": guarded(
                lightning_fit, mixer, "fused", b, length, warm, steps, clip=None
            ),
            "b_raw_mamba_ssm": guarded(raw_loop, mamba_ssm_lm(mixer), b, length, warm, steps),
            "d_reference_twin": guarded(lightning_fit, mixer, "reference", 1, length, 2, 3),
            "a_L8192": guarded(lightning_fit, mixer, "fused", 2, 8192, 3, max(5, steps // 2)),
            "b_L8192": guarded(raw_loop, mamba_ssm_lm(mixer), 2, 8192, 3, max(5, steps // 2)),
        }
        if mixer == "Mamba1":
            r["c_hf_transformers"] = guarded(raw_loop, hf_mamba_lm(), b, length, warm, steps)
        r["a_profile"] = guarded(lightning_fit, mixer, "fused", b, length, 3, 5, profile=True)
        r["b_profile"] = guarded(raw_loop, mamba_ssm_lm(mixer), b, length, 3, 5, profile=True)
        a, base = r["a_lightning_fit"].get("ktok_s"), r["b_raw_mamba_ssm"].get("ktok_s")
        if a and base:
            r["ratio_a_over_b"] = a / base
        if a and r.get("c_hf_transformers", {}).get("ktok_s"):
            r["ratio_a_over_c"] = a / r["c_hf_transformers"]["ktok_s"]
        results[mixer] = r
        rows = [
            {
                "run": k,
                "ktok/s": v.get("ktok_s", float("nan")),
                "peak GiB": v.get("peak_gib", float("nan")),
                "note": v.get("error", "")[:40],
            }
            for k, v in r.items()
            if isinstance(v, dict) and "profile" not in k
        ]
        table(rows, f"throughput {mixer}: 24 x 768, vocab 50280, B=8, L=2048 (d: B=1), bf16")
        print({k: v for k, v in r.items() if k.startswith("ratio")})
        for name in ("a_profile", "b_profile"):
            prof = r[name]
            wall, busy = prof.get("step_ms", 0), prof.get("gpu_busy_ms_per_step", 0)
            print(f"{name}: {wall:.1f} ms/step wall, {busy:.1f} ms/step GPU busy (incl. warmup)")
            for kernel in prof.get("profile_top_kernels", [])[:8]:
                print(f"  {kernel['share']:6.1%}  {kernel['calls']:5d}  {kernel['name']}")
    return results


# ------------------------------------------------------------------------------- profile

KERNEL_GROUPS = [  # (group, substrings of CUDA kernel names), first match wins
    ("selective scan", ("selective_scan",)),
    ("causal conv1d", ("causal_conv1d",)),
    ("norms (Triton)", ("_layer_norm", "_rms_norm")),
    ("matmul", ("nvjet", "gemm", "cutlass", "xmma", "sm90_")),
    ("softmax / cross-entropy", ("SoftMax", "softmax", "logsumexp", "nll_loss", "cross_entropy")),
    ("optimizer", ("adam", "Adam", "multi_tensor")),
    ("reductions", ("reduce_kernel",)),
    ("memcpy / memset", ("Memcpy", "Memset")),
    ("elementwise / copies", ("elementwise", "copy", "fill", "index", "scatter", "gather")),
]


def kernel_groups(prof, steps: int) -> dict:
    """GPU time per step (ms) for each kernel group, and the sum."""
    groups: dict[str, float] = {}
    for event in prof.key_averages():
        if event.self_device_time_total <= 0:
            continue
        name = next((g for g, keys in KERNEL_GROUPS if any(k in event.key for k in keys)), "other")
        groups[name] = groups.get(name, 0.0) + event.self_device_time_total / 1e3 / steps
    groups["total GPU busy"] = sum(groups.values())
    return {k: round(v, 2) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


class _ProfileWindow(L.Callback):
    """Profiles training steps [start, start + steps) of a fit: wall time and kernel groups."""

    def __init__(self, start: int, steps: int):
        self.start, self.steps, self.prof = start, steps, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.start:
            torch.cuda.synchronize()
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx == self.start + self.steps - 1:
            torch.cuda.synchronize()
            self.wall_ms = (time.perf_counter() - self.t0) / self.steps * 1e3
            self.prof.__exit__(None, None, None)


class _PlainLossModule(MambaModule):
    """(a) with (b)'s loss: full float32 logits and F.cross_entropy, to isolate the loss."""

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        logits = self(inputs)[..., : self.hparams.vocab_size].float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.log("train/loss", loss, on_step=True)
        return loss


def profile_fit(mixer: str, module_cls=MambaModule, clip=1.0, steps: int = 6) -> dict:
    warm = 4
    window = _ProfileWindow(warm, steps)
    model, loader, trainer = fit_setup(
        mixer, "fused", SIZE["batch"], SIZE["length"], warm + steps, clip, window, module_cls
    )
    trainer.fit(model, loader)
    result = {"wall_ms_per_step": round(window.wall_ms, 2), **kernel_groups(window.prof, steps)}
    del model, trainer
    torch.cuda.empty_cache()
    return result


def profile_raw(mixer: str, steps: int = 6) -> dict:
    step = raw_step(mamba_ssm_lm(mixer))
    batches = random_batches(SIZE["batch"], SIZE["length"])
    for i in range(4):
        step(*batches[i % 4])
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for i in range(steps):
            step(*batches[i % 4])
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps * 1e3
    return {"wall_ms_per_step": round(wall, 2), **kernel_groups(prof, steps)}


def section_profile() -> dict:
    """Where a training step's time goes: (a) and two variants of it against (b), per kernel group.

    Profiled inside the fit (steps 5-10), so setup and Lightning's end-of-fit copy to the CPU
    are not counted. GPU busy below wall time means the GPU waited for the CPU (launch gaps).
    """
    results = {}
    for mixer in ("Mamba1", "Mamba2"):
        runs = {
            "a: fit, chunked loss, clip": guarded(profile_fit, mixer),
            "a: fit, chunked loss, no clip": guarded(profile_fit, mixer, clip=None),
            "a: fit, float32 logits + CE, clip": guarded(profile_fit, mixer, _PlainLossModule),
            "b: raw mamba-ssm loop": guarded(profile_raw, mixer),
        }
        results[mixer] = runs
        names = sorted({k for r in runs.values() for k in r}, key=lambda k: k != "wall_ms_per_step")
        rows = [{"ms / step": k, **{run: r.get(k, 0.0) for run, r in runs.items()}} for k in names]
        table(rows, f"profile {mixer}: ms per training step (24 x 768, B=8, L=2048, bf16)")
    return results


# ------------------------------------------------------------------------------- copying


class _Curve(L.Callback):
    def __init__(self):
        self.start, self.points = time.perf_counter(), []

    def on_validation_end(self, trainer, module):
        acc = trainer.callback_metrics.get("val/acc")
        if acc is not None:
            point = (round(time.perf_counter() - self.start, 1), trainer.global_step, float(acc))
            self.points.append(point)
            print(f"  copying: {point[0]:6.1f} s  step {point[1]:5d}  val acc {point[2]:.4f}")


def section_copying(seconds: float, seq_len: int) -> dict:
    """Selective copying at the Mamba paper's model size (2 layers, d_model 64, vocab 16)."""
    from {{ cookiecutter.package_name }}.data import SelectiveCopying

    torch.manual_seed(0)
    data = SelectiveCopying(
        seq_len=seq_len,
        num_tokens=16,
        num_symbols=14,
        batch_size=64,
        num_train_samples=10**7,
        num_val_samples=512,
        num_workers=4,
    )
    config = BackboneConfig(impl="fused", mixer="Mamba1", d_model=64, n_layer=2, d_state=16)
    model = MambaModule(backbone=config, vocab_size=data.vocab_size, lr=3e-3, warmup_steps=200)
    curve = _Curve()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_steps=10**6,
        max_time={"seconds": seconds},
        val_check_interval=250,
        check_val_every_n_epoch=None,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[curve],
    )
    trainer.fit(model, data)
    return {"seq_len": seq_len, "seconds": seconds, "curve": curve.points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="kernels,parity,throughput")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per throughput run")
    parser.add_argument("--out", default=str(RESULTS / "gpu_check.json"))
    parser.add_argument("--copying-seconds", type=float, default=120)
    parser.add_argument("--copying-length", type=int, default=4096)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU; run it on one (modal run modal_app.py::gpu_check).")
    import mamba_ssm
    import transformers

    report = {
        "date": datetime.date.today().isoformat(),
        "device": torch.cuda.get_device_name(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "mamba_ssm": mamba_ssm.__version__,
            "lightning": L.__version__,
            "transformers": transformers.__version__,
        },
    }
    sections = {
        "kernels": section_kernels,
        "parity": section_parity,
        "throughput": lambda: section_throughput(args.steps),
        "copying": lambda: section_copying(args.copying_seconds, args.copying_length),
        "profile": section_profile,
    }
    for name in args.sections.split(","):
        report[name] = sections[name]()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
