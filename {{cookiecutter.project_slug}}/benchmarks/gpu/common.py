"""What every GPU measurement shares: the benchmark model's size, its Trainer, the raw loops.

The (a) rows build the model, data and Trainer the way `python -m <package> fit` does; the
(b) and (c) rows are plain PyTorch loops over mamba-ssm's and HF transformers' own language models.
"""

import time

import lightning as L
import torch
import torch.nn.functional as F

from {{ cookiecutter.package_name }}.backbone import BackboneConfig
from {{ cookiecutter.package_name }}.model import MambaLM
from {{ cookiecutter.package_name }}.module import LanguageModelling

PACKAGE = "{{ cookiecutter.package_name }}"


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


SIZE = {"d_model": 768, "n_layer": 24, "vocab": 50280, "batch": 8, "length": 2048}
MIXER_STATE = {
    "Mamba1": {"d_state": 16},
    "Mamba2": {"d_state": 128, "headdim": 64},
    "Mamba3": {"d_state": 128, "headdim": 64},
}
# "Hybrid": Mamba2 layers with attention at layers 6, 12 and 18, as mamba-ssm's mamba2attn
# lays it out. No rotary embedding: mamba-ssm's MHA takes RoPE from flash-attn, which the
# pinned image does not install, so its hybrid could not run with it.
HYBRID = {"attn_layer_idx": [6, 12, 18], "attn_cfg": {"num_heads": 12, "num_heads_kv": 12,
          "head_dim": 64, "d_conv": 4, "rotary_emb_dim": 0, "causal": True,
          "qkv_proj_bias": False, "out_proj_bias": False}}  # fmt: skip


def mixer_and_layout(mixer: str) -> tuple[str, dict]:
    """The Mamba mixer a benchmark row names, and the attention it adds ("Hybrid": HYBRID)."""
    return ("Mamba2", HYBRID) if mixer == "Hybrid" else (mixer, {})


def lm_config(mixer: str, impl: str) -> BackboneConfig:
    mixer, extra = mixer_and_layout(mixer)
    return BackboneConfig(
        impl=impl,
        mixer=mixer,
        d_model=SIZE["d_model"],
        n_layer=SIZE["n_layer"],
        **MIXER_STATE[mixer],  # chunk_size: the mixer's default, as mamba-ssm's (256, 64)
        **extra,
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
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "step_ms": seconds / steps * 1e3,
    }


def random_batches(batch: int, length: int, n: int = 4, device="cuda", vocab=SIZE["vocab"]):
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, vocab, (batch, length), generator=g).to(device),
            torch.randint(0, vocab, (batch, length), generator=g).to(device),
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


def raw_loop(model_fn, batch, length, warmup, steps, profile=False, vocab=SIZE["vocab"]) -> dict:
    """(b)/(c): a plain PyTorch loop over a ready-made model."""
    step = raw_step(model_fn)

    def run() -> dict:
        return timed_loop(step, random_batches(batch, length, vocab=vocab), warmup, steps)

    return profiled(run, warmup + steps) if profile else run()


class _Timer(L.Callback):
    """Times the steps after `warmup`; the peak memory counts from the first step, so a CUDA
    graph's capture (and the memory pool it keeps) is in it."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.steps = warmup, None, 0

    def on_train_start(self, trainer, module):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.steps = trainer.global_step - self.warmup


def fit_setup(
    mixer,
    impl,
    batch,
    length,
    max_steps,
    clip,
    callback,
    module_cls=LanguageModelling,
    devices=1,
    cuda_graphs="auto",
):
    """The model, random-token batches and a Trainer as `python -m ... fit` would build them.

    With devices > 1 the Trainer runs DDP and each GPU gets its own `batch` per step.
    """
    torch.manual_seed(0)
    net = MambaLM(lm_config(mixer, impl), vocab_size=SIZE["vocab"])
    model = module_cls(net, warmup_steps=2, cuda_graphs=cuda_graphs)
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


def lightning_fit(
    mixer, impl, batch, length, warmup, steps, clip=1.0, profile=False, cuda_graphs="auto"
) -> dict:
    """(a)/(d): our LanguageModelling in Lightning's Trainer, as `python -m ... fit` runs it."""
    timer = _Timer(warmup)
    model, loader, trainer = fit_setup(
        mixer, impl, batch, length, warmup + steps, clip, timer, cuda_graphs=cuda_graphs
    )

    def run() -> dict:
        trainer.fit(model, loader)
        return {
            "ktok_s": timer.steps * batch * length / timer.seconds / 1e3,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "step_ms": timer.seconds / timer.steps * 1e3,
        }

    result = profiled(run, warmup + steps) if profile else run()
    torch.cuda.empty_cache()
    return result


class _Mamba3LM(torch.nn.Module):
    """mamba-ssm's MixerModel and head with its Mamba3 in its Blocks: its create_block refuses
    layer="Mamba3", so the same composition is written out here (fused add-norm, as
    MambaLMHeadModel builds it for Mamba1/2, and its model-level init)."""

    def __init__(self, vocab: int):
        from functools import partial

        from mamba_ssm.models.mixer_seq_simple import _init_weights
        from mamba_ssm.modules.block import Block
        from mamba_ssm.modules.mamba3 import Mamba3
        from mamba_ssm.ops.triton.layer_norm import RMSNorm, rms_norm_fn

        super().__init__()
        d, n = SIZE["d_model"], SIZE["n_layer"]
        self.embedding = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(
            Block(
                d,
                partial(Mamba3, layer_idx=i, **MIXER_STATE["Mamba3"]),
                torch.nn.Identity,
                norm_cls=partial(RMSNorm, eps=1e-5),
                fused_add_norm=True,
                residual_in_fp32=True,
            )
            for i in range(n)
        )
        self.norm_f = RMSNorm(d, eps=1e-5)
        self.rms_norm_fn = rms_norm_fn
        self.apply(partial(_init_weights, n_layer=n))

    def forward(self, ids):
        from types import SimpleNamespace

        hidden, residual = self.embedding(ids), None
        for layer in self.layers:
            hidden, residual = layer(hidden, residual)
        hidden = self.rms_norm_fn(
            hidden, self.norm_f.weight, None, residual=residual, eps=1e-5, prenorm=False,
            residual_in_fp32=True,
        )  # fmt: skip
        return SimpleNamespace(logits=F.linear(hidden, self.embedding.weight))


def mamba_ssm_lm(mixer, vocab=SIZE["vocab"]):
    if mixer == "Mamba3":
        return lambda: _Mamba3LM(vocab)
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    mixer, extra = mixer_and_layout(mixer)
    config = MambaConfig(
        d_model=SIZE["d_model"],
        n_layer=SIZE["n_layer"],
        vocab_size=vocab,
        ssm_cfg={"layer": mixer, **MIXER_STATE[mixer]},
        **extra,
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
