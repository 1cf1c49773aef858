"""Where a training step's time goes, per CUDA kernel group, profiled inside the loop.

(a) and two variants of it (no clipping; (b)'s float32-logits loss) against (b), steps 5-10
of each run, so setup and Lightning's end-of-fit copy to the CPU are not counted. GPU busy
below wall time means the GPU waited for the CPU (launch gaps).
"""

import time

import lightning as L
import torch
import torch.nn.functional as F
from mamba_project.module import LanguageModelling
from throughput import SIZE, fit_setup, guarded, mamba_ssm_lm, random_batches, raw_step, table

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


class _PlainLossModule(LanguageModelling):
    """(a) with (b)'s loss: full float32 logits and F.cross_entropy, to isolate the loss."""

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        logits = self.net(inputs).float()
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        self.log("train/loss", loss, on_step=True)
        return loss


def profile_fit(mixer: str, module_cls=LanguageModelling, clip=1.0, steps: int = 6) -> dict:
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
