"""The head and loss alone: ours against liger-kernel's fused linear cross-entropy and plain torch.

At the benchmark size (B*L = 16384 tokens, d_model 768, vocabulary 50280), bf16 autocast as in
`fit`, a float32 head weight (ours with its Triton kernel, as `fit` runs it, and with the
plain-PyTorch body of the same rule): forward and backward of `hidden @ weight.T` plus the mean
cross-entropy, timed with CUDA events, with the peak memory each adds and how far its loss and
gradients are from the plain float32-logits version. liger-kernel is not part of the GPU
stack; where it is not installed its row says so.
"""

from importlib.metadata import PackageNotFoundError, version

import torch
import torch.nn.functional as F
from mamba_project.loss import linear_cross_entropy
from throughput import SIZE, table

from .common import rel


def plain(hidden, weight, targets):
    logits = (hidden @ weight.T).float()  # (N, V) float32, as in the raw loop (b)
    return F.cross_entropy(logits, targets)


def ours(hidden, weight, targets):
    return linear_cross_entropy(hidden, weight, targets)[0]


def ours_plain(hidden, weight, targets):
    return linear_cross_entropy(hidden, weight, targets, kernels=False)[0]


def liger():
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    loss = LigerFusedLinearCrossEntropyLoss()
    return lambda hidden, weight, targets: loss(weight, hidden, targets)


def measure(fn, hidden, weight, targets, warmup: int = 3, steps: int = 10) -> dict:
    def once():
        h = hidden.detach().requires_grad_()
        w = weight.detach().requires_grad_()
        with torch.autocast("cuda", torch.bfloat16):
            loss = fn(h, w, targets)
        loss.backward()
        return loss.detach(), h.grad, w.grad

    for _ in range(warmup):
        once()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        result = once()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**30
    return {"ms": sorted(times)[len(times) // 2], "peak_gib": peak, "result": result}


def section_loss() -> dict:
    torch.manual_seed(0)
    n, d, v = SIZE["batch"] * SIZE["length"], SIZE["d_model"], SIZE["vocab"]
    hidden = torch.randn(n, d, device="cuda", dtype=torch.bfloat16)
    weight = torch.randn(v, d, device="cuda") * d**-0.5  # float32, as the model's parameter
    targets = torch.randint(0, v, (n,), device="cuda")
    impls = {
        "plain float32 logits": plain,
        "ours (loss.py, Triton kernel)": ours,
        "ours, plain-PyTorch body": ours_plain,
        "liger-kernel": liger(),
    }
    runs = {name: measure(fn, hidden, weight, targets) for name, fn in impls.items() if fn}
    loss0, gh0, gw0 = runs["plain float32 logits"]["result"]
    rows, report = [], {"tokens": n, "d_model": d, "vocab": v}
    try:
        report["liger_kernel_version"] = version("liger-kernel")
    except PackageNotFoundError:
        report["liger_kernel_version"] = None
    for name in impls:
        if name not in runs:
            report[name] = "not installed (pip install liger-kernel)"
            continue
        run = runs[name]
        loss, gh, gw = run.pop("result")
        run.update(
            loss_rel=rel(loss, loss0), grad_hidden_rel=rel(gh, gh0), grad_weight_rel=rel(gw, gw0)
        )
        report[name] = run
        rows.append({"impl": name, **run})
    table(rows, "head + loss, forward and backward (ms, GiB above the inputs)")
    return report
