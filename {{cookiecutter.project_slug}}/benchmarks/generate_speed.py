"""Decoding speed on a GPU: MambaLM.generate against mamba-ssm's own generate(cg=True).

    python benchmarks/generate_speed.py                     # every mixer, over 5 minutes
    python benchmarks/generate_speed.py --mixers Mamba2 --profile

mamba-130m's shape (24 layers x d_model 768, vocab 50280) with random weights, a prompt of 64
tokens and 256 new ones, greedy, B = 1 and 16, for each mixer with float32 weights, bfloat16
weights, and float32 weights under torch.autocast(bfloat16). mamba-ssm's model holds the same
weights: ours exported with save_pretrained(format="mamba_ssm") and loaded by its
MambaLMHeadModel.from_pretrained, in this process. Both time the whole call (prefill included)
after a first call that captures the graphs; the median of --repeats calls, taken in turns.

mamba-ssm cannot decode under autocast (its float32 state meets bf16 inputs in
causal_conv1d_update): the autocast rows compare with its bfloat16-weights run, the fastest it
has. --profile adds, per row, each side's kernels and GPU-busy time per token (torch.profiler
over graph replays and over the eager step). Mamba3 and the hybrid, which mamba-ssm cannot
decode, get rows of their own beside Mamba2's at prompts of 64 and 1024 tokens (own_rows). A
last section times the reference twin on the CPU against a plain loop that calls the model's
forward on each new token (plain_loop).

Writes benchmarks/results/generate_gpu.json and prints a table.
"""

import argparse
import copy
import datetime
import json
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from {{ cookiecutter.package_name }}.backbone import BackboneConfig, InferenceParams
from {{ cookiecutter.package_name }}.generation import sample_token
from {{ cookiecutter.package_name }}.model import MambaLM

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = {"d_model": 768, "n_layer": 24, "vocab": 50280, "prompt": 64, "new_tokens": 256}
MIXER_STATE = {
    "Mamba1": {"d_state": 16},
    "Mamba2": {"d_state": 128, "headdim": 64},
    "Mamba3": {"d_state": 128, "headdim": 64},
}
# "Hybrid": the Mamba2 model with attention at layers 6, 12 and 18 (grouped keys and values,
# RoPE on half of each head); mamba-ssm cannot decode it without flash-attn, so its rows are ours
# beside the pure Mamba2 model's, at prompts of 64 and 1024 tokens.
HYBRID = {
    "attn_layer_idx": [6, 12, 18],
    "attn_cfg": {"num_heads": 12, "num_heads_kv": 4, "d_conv": 4, "rotary_emb_dim": 32,
                 "qkv_proj_bias": False, "out_proj_bias": False},
}  # fmt: skip
DTYPES = ("fp32", "bf16", "autocast")
BATCHES = (1, 16)


def build(mixer: str, impl: str = "fused", device="cuda", **shape) -> MambaLM:
    shape = {**SHAPE, **shape}
    extra = HYBRID if mixer == "Hybrid" else {}
    mixer = "Mamba2" if mixer == "Hybrid" else mixer
    config = BackboneConfig(
        impl=impl,
        mixer=mixer,
        d_model=shape["d_model"],
        n_layer=shape["n_layer"],
        chunk_size=None if mixer == "Mamba3" else 256,
        **MIXER_STATE[mixer],
        **extra,
    )
    torch.manual_seed(0)
    return MambaLM(config, shape["vocab"]).to(device).eval()


def timed(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def profile(fn, tokens: int) -> dict:
    """Kernels and GPU-busy time per token of one call, and the 6 kernels that take longest."""
    try:
        return _profile(fn, tokens)
    except RuntimeError as err:  # a profiler that cannot trace here must not cost the timings
        return {"error": str(err).splitlines()[0][:160]}


def _profile(fn, tokens: int) -> dict:
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.time_range.elapsed_us() for e in kernels)
    by_name = {}
    for e in kernels:
        by_name[e.name] = by_name.get(e.name, 0.0) + e.time_range.elapsed_us()
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:6]
    return {
        "kernels_per_token": round(len(kernels) / tokens, 1),
        "gpu_busy_us_per_token": round(busy / tokens, 1),
        "wall_us_per_token_profiled": round(wall * 1e6 / tokens, 1),
        "top_kernels_us_per_token": {name[:80]: round(us / tokens, 1) for name, us in top},
    }


def autocast_error(theirs, prompt) -> str | None:
    """What mamba-ssm's generate says under autocast (on a copy: a failed capture stays)."""
    probe = copy.deepcopy(theirs)
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            probe.generate(prompt, max_length=prompt.shape[1] + 2, cg=True)
        return None
    except Exception as err:  # noqa: BLE001 (any failure is the finding)
        return f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    finally:
        del probe
        torch.cuda.empty_cache()


def generate_call(model, ids, new_tokens: int, autocast: bool, graph: bool = True):
    """One whole generate of ours or mamba-ssm's (which counts the prompt in max_length)."""

    def call():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            if isinstance(model, MambaLM):
                return model.generate(ids, new_tokens, cuda_graph=graph)
            return model.generate(ids, max_length=ids.shape[1] + new_tokens, cg=graph)

    return call


def measure(ours, theirs, ids, autocast: bool, theirs_autocast: bool, repeats: int,
            with_profile: bool) -> dict:  # fmt: skip
    """tokens/s of both (median of calls in turns, so a clock change hits both), agreement."""
    new = SHAPE["new_tokens"]
    calls = {
        "ours": generate_call(ours, ids, new, autocast),
        "mamba_ssm": generate_call(theirs, ids, new, theirs_autocast),
    }
    out = {name: call()[:, -new:] for name, call in calls.items()}  # the first calls capture
    seconds = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            seconds[name] += timed(call, 1)
    rates = {n: round(ids.shape[0] * new / statistics.median(s)) for n, s in seconds.items()}
    row = {
        "ours_tokens_per_s": rates["ours"],
        "mamba_ssm_tokens_per_s": rates["mamba_ssm"],
        "ratio": round(rates["ours"] / rates["mamba_ssm"], 3),
        "greedy_agreement": round((out["ours"] == out["mamba_ssm"]).float().mean().item(), 4),
    }
    if with_profile:
        short, row["profile"] = 32, {}
        for name, model, on in (("ours", ours, autocast), ("mamba_ssm", theirs, theirs_autocast)):
            for graph in (True, False):
                call = generate_call(model, ids, short, on, graph)
                row["profile"][f"{name}_{'graph' if graph else 'eager'}"] = profile(call, short)
    return row


def compare_mixer(mixer: str, repeats: int, with_profile: bool) -> tuple[list[dict], dict]:
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    ours = {"fp32": build(mixer)}
    with tempfile.TemporaryDirectory() as folder:
        ours["fp32"].save_pretrained(folder, format="mamba_ssm")
        theirs = {
            "fp32": MambaLMHeadModel.from_pretrained(folder, device="cuda").eval(),
            "bf16": MambaLMHeadModel.from_pretrained(
                folder, device="cuda", dtype=torch.bfloat16
            ).eval(),
        }
    ours["bf16"] = copy.deepcopy(ours["fp32"]).to(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    prompts = {b: torch.randint(0, SHAPE["vocab"], (b, SHAPE["prompt"]), generator=g).cuda()
               for b in BATCHES}  # fmt: skip
    failure = autocast_error(theirs["fp32"], prompts[1])
    rows = []
    # batch sizes in increasing order: mamba-ssm's graph cache keeps the caches of the largest
    # batch so far, and its capture for a smaller batch then fails (conv_state must have shape)
    for batch in BATCHES:
        for dtype in DTYPES:
            autocast = dtype == "autocast"
            weights = "bf16" if dtype == "bf16" or (autocast and failure) else "fp32"
            row = {"mixer": mixer, "dtype": dtype, "batch": batch}
            row |= measure(
                ours["bf16" if dtype == "bf16" else "fp32"],
                theirs[weights],
                prompts[batch],
                autocast,
                autocast and not failure,
                repeats,
                with_profile,
            )
            row["baseline"] = f"mamba-ssm generate(cg=True), {weights} weights" + (
                " under autocast" if autocast and not failure else ""
            )
            rows.append(row)
            print(
                f"{mixer} {dtype:8s} B={batch:2d}: ours {row['ours_tokens_per_s']:6d} tok/s, "
                f"mamba-ssm {row['mamba_ssm_tokens_per_s']:6d} ({row['ratio']:.2f}x), "
                f"greedy agreement {row['greedy_agreement']:.3f}",
                flush=True,
            )
    notes = {"mamba_ssm_under_autocast": failure}
    try:  # the reason for the order above, seen again
        theirs["fp32"].generate(prompts[1], max_length=SHAPE["prompt"] + 2, cg=True)
    except Exception as err:  # noqa: BLE001 (any failure is the finding)
        notes["mamba_ssm_batch_1_after_16"] = f"{type(err).__name__}: {str(err)[:160]}"
    ours.clear(), theirs.clear()
    torch.cuda.empty_cache()
    rows.sort(key=lambda r: (DTYPES.index(r["dtype"]), r["batch"]))
    return rows, notes


@torch.no_grad()
def own_rows(mixer: str, repeats: int, prompts, with_profile: bool) -> list[dict]:
    """A model mamba-ssm cannot decode (Mamba3: its step crashes; a hybrid: its MHA needs
    flash-attn), and Mamba2 beside it: our tokens/s, and whether the greedy tokens are the
    argmax of our own full forward over the decoded sequence. The float32 oracle is the full
    forward in plain PyTorch (the same weights, impl=reference), which a float32 Mamba3 runs
    anyway (its Triton kernel serves bfloat16 inputs only); the bf16 rows' oracle is the same
    bf16 model, whose full forward runs the kernel."""
    rows = []
    for dtype in ("fp32", "bf16"):
        model = build(mixer)
        if dtype == "bf16":
            model = oracle = model.to(torch.bfloat16)
        else:
            oracle = build(mixer, impl="reference")
            oracle.load_state_dict(model.state_dict(), strict=True)
        for prompt, batch in ((p, b) for p in prompts for b in BATCHES):
            g = torch.Generator().manual_seed(batch)
            ids = torch.randint(0, SHAPE["vocab"], (batch, prompt), generator=g).cuda()
            call = partial(model.generate, ids, SHAPE["new_tokens"])
            out = call()  # captures the graph
            seconds = statistics.median(timed(call, repeats))
            # teacher-forced: the full forward's argmax at each decoded position
            want = oracle(out[:, :-1]).argmax(-1)[:, prompt - 1 :]
            same = (want == out[:, prompt:]).float().mean().item()
            rows.append({
                "mixer": mixer,
                "dtype": dtype,
                "batch": batch,
                "prompt": prompt,
                "ours_tokens_per_s": round(batch * SHAPE["new_tokens"] / seconds),
                "greedy_equals_full_forward": same,
                "oracle": "reference path, fp32" if dtype == "fp32" else "the same bf16 model",
            })  # fmt: skip
            if with_profile:
                rows[-1]["profile"] = profile(call, batch * SHAPE["new_tokens"])
            print(f"{mixer} {dtype} prompt {prompt} B={batch}: {rows[-1]}", flush=True)
        del model, oracle
        torch.cuda.empty_cache()
    return rows


def plain_loop(model, ids, max_new_tokens):
    """The baseline: the model's forward called on each new token, its state carried in
    inference_params, no cache allocated ahead and no graph."""
    params = InferenceParams(max_seqlen=0, max_batch_size=ids.shape[0])
    logits = model(ids, inference_params=params)[:, -1]
    tokens = [ids]
    for _ in range(max_new_tokens):
        tokens.append(sample_token(logits.float(), 0.0))
        params.seqlen_offset += tokens[-2].shape[1]
        logits = model(tokens[-1], inference_params=params)[:, -1]
    return torch.cat(tokens, dim=1)


@torch.no_grad()
def reference_on_cpu(repeats: int) -> list[dict]:
    """The twin on the CPU (d_model 256, 4 layers): generate vs the plain loop, same tokens."""
    rows = []
    for mixer in ("Mamba1", "Mamba2"):
        model = build(mixer, impl="reference", device="cpu", d_model=256, n_layer=4, vocab=256)
        for batch in (1, 4):
            ids = torch.randint(0, 256, (batch, 64), generator=torch.Generator().manual_seed(2))
            calls = {
                "ours": partial(model.generate, ids, 64),
                "plain": partial(plain_loop, model, ids, 64),
            }
            ours, plain = calls["ours"](), calls["plain"]()
            times = {"ours": [], "plain": []}
            for _ in range(repeats):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            ours_rate = batch * 64 / statistics.median(times["ours"])
            plain_rate = batch * 64 / statistics.median(times["plain"])
            rows.append({
                "mixer": mixer,
                "batch": batch,
                "ours_tokens_per_s": round(ours_rate, 1),
                "plain_loop_tokens_per_s": round(plain_rate, 1),
                "ratio": round(ours_rate / plain_rate, 3),
                "same_tokens": bool(torch.equal(ours, plain)),
            })  # fmt: skip
            print(f"twin on CPU {mixer} B={batch}: {rows[-1]}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| mixer | weights | B | ours tok/s | mamba-ssm tok/s | ratio | greedy agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"fp32": "fp32", "bf16": "bf16", "autocast": "fp32, bf16 autocast"}
    for r in rows:
        lines.append(
            f"| {r['mixer']} | {names[r['dtype']]} | {r['batch']} | {r['ours_tokens_per_s']} | "
            f"{r['mamba_ssm_tokens_per_s']} | {r['ratio']:.2f}x | {r['greedy_agreement']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixers", default="Mamba1,Mamba2,Mamba3,Hybrid")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="kernels per token, each row")
    parser.add_argument("--skip-cpu", action="store_true", help="no reference-twin CPU rows")
    parser.add_argument("--out", default=str(RESULTS / "generate_gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("generate_speed needs a CUDA GPU with mamba-ssm; run it on one.")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    import mamba_ssm

    report = {
        "device": torch.cuda.get_device_name(),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "mamba_ssm": mamba_ssm.__version__,
        "shape": SHAPE,
        "timing": f"median of {args.repeats} calls, each the whole generate (prefill included), "
        "after one call that captures the graphs; ours and mamba-ssm's in turns",
        "rows": [],
        "notes": {},
    }
    mixers = args.mixers.split(",")
    own = [m for m in mixers if m in ("Mamba3", "Hybrid")]
    for mixer in ["Mamba2"] * bool(own) + own:  # Mamba2 beside them, at the same shape
        rows = own_rows(mixer, args.repeats, (SHAPE["prompt"], 1024), args.profile)
        report.setdefault("own_rows", []).extend(rows)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for mixer in (m for m in mixers if m not in own):
        rows, report["notes"][mixer] = compare_mixer(mixer, args.repeats, args.profile)
        report["rows"] += rows
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")  # each mixer as it ends
    if not args.skip_cpu:
        report["reference_twin_cpu"] = reference_on_cpu(max(3, args.repeats // 2))
    print("\n" + table(report["rows"]))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
