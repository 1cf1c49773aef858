"""Tokens per second of a training step: ours against mamba-ssm's and HF's own loops.

24 layers x d_model 768, vocab 50280, B=8, L=2048, bf16, fused AdamW, clipping 1.0:
(a) our Lightning fit (CUDA graphs as `model.cuda_graphs=auto` decides, and eager),
(b) a raw loop over mamba-ssm's MambaLMHeadModel with cross-entropy on float32 logits,
(c) HF transformers' MambaForCausalLM (Mamba1), (d) our reference twin; peak memory of each.
Mamba3's (b) is mamba-ssm's Mamba3 in its Blocks; Hybrid's (b) is mamba-ssm's own hybrid
MambaLMHeadModel (Mamba2 with MHA at layers 6, 12, 18; common.HYBRID).
"""

from .common import SIZE, guarded, hf_mamba_lm, lightning_fit, mamba_ssm_lm, raw_loop, table


def section_throughput(steps: int, mixers=("Mamba1", "Mamba2"), quick: bool = False) -> dict:
    """quick: only the rows behind the ratios, (a) with and without graphs, (b) and (c)."""
    b, length, warm = SIZE["batch"], SIZE["length"], 5
    results = {}
    for mixer in mixers:
        r = {
            "a_lightning_fit": guarded(lightning_fit, mixer, "fused", b, length, warm, steps),
            "a_eager": guarded(
                lightning_fit, mixer, "fused", b, length, warm, steps, cuda_graphs="off"
            ),
            "b_raw_mamba_ssm": guarded(raw_loop, mamba_ssm_lm(mixer), b, length, warm, steps),
        }
        if mixer == "Mamba1":
            r["c_hf_transformers"] = guarded(raw_loop, hf_mamba_lm(), b, length, warm, steps)
        if not quick:
            r["a_lightning_fit_no_clip"] = guarded(
                lightning_fit, mixer, "fused", b, length, warm, steps, clip=None
            )
            r["d_reference_twin"] = guarded(lightning_fit, mixer, "reference", 1, length, 2, 3)
            r["a_L8192"] = guarded(lightning_fit, mixer, "fused", 2, 8192, 3, max(5, steps // 2))
            r["b_L8192"] = guarded(raw_loop, mamba_ssm_lm(mixer), 2, 8192, 3, max(5, steps // 2))
            r["a_profile"] = guarded(lightning_fit, mixer, "fused", b, length, 3, 5, profile=True)
            r["b_profile"] = guarded(raw_loop, mamba_ssm_lm(mixer), b, length, 3, 5, profile=True)
        a, base = r["a_lightning_fit"].get("ktok_s"), r["b_raw_mamba_ssm"].get("ktok_s")
        if a and base:
            r["ratio_a_over_b"] = a / base
        if a and r.get("c_hf_transformers", {}).get("ktok_s"):
            r["ratio_a_over_c"] = a / r["c_hf_transformers"]["ktok_s"]
        peak, base_peak = r["a_lightning_fit"].get("peak_gib"), r["b_raw_mamba_ssm"].get("peak_gib")
        if peak and base_peak:
            r["peak_a_over_b"] = peak / base_peak
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
        for name in ("a_profile", "b_profile") if not quick else ():
            prof = r[name]
            wall, busy = prof.get("step_ms", 0), prof.get("gpu_busy_ms_per_step", 0)
            print(f"{name}: {wall:.1f} ms/step wall, {busy:.1f} ms/step GPU busy (incl. warmup)")
            for kernel in prof.get("profile_top_kernels", [])[:8]:
                print(f"  {kernel['share']:6.1%}  {kernel['calls']:5d}  {kernel['name']}")
    return results
