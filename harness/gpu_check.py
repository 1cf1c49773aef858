"""The template's GPU proof: fused kernels active, the twin equals mamba-ssm, `fit`'s speed.

It measures a baked project (the defaults: a language model, package `mamba_project`), whose
package it imports and whose `fit` it starts; the results land in this repository's results/.

    cookiecutter --no-input -o /tmp/bake .               # in the template's root
    export PYTHONPATH=/tmp/bake/mamba-project/src        # or: pip install -e <the bake>
    python harness/gpu_check.py                          # everything, about 8 minutes on an H200
    python harness/gpu_check.py --sections parity        # one or more sections, comma-separated

Sections, one module each in harness/sections/ (they import the benchmark model, its Trainer
and the raw loops from the bake's benchmarks/throughput.py, the benchmark a project ships):
  kernels     parity.py: which fast paths are active; what happens when causal-conv1d is missing
  layers      layers.py: each mixer against mamba-ssm's own module (same state_dict), the fused
              layer against its composed kernels, reference against fused
  parity      parity.py: fused vs reference (same weights, strict load): outputs and every
              gradient, in float32 (also against a float64 run of the twin) and under bf16
              autocast; a checkpoint written by the fused model loads into the reference one
  throughput  the bake's benchmarks/throughput.py: 24 layers x d_model 768, vocab 50280, B=8,
              L=2048, bf16, fused AdamW: (a) our Lightning fit (with and without CUDA graphs),
              (b) a raw loop over mamba-ssm's MambaLMHeadModel, (c) HF transformers'
              MambaForCausalLM (Mamba1), (d) our reference twin; peak memory for each; L=8192
  cli         cli_row.py: the real `python -m ... fit` at that size (byte vocabulary) against
              the raw loop, timed from the command's own logs
  small       cli_row.py: configs/default.yaml's training steps per second
  profile     profile.py: ms per step by kernel group for (a) variants and (b)
  loss        loss.py: the head and loss alone: ours, liger-kernel's fused linear cross-entropy
              (if installed) and plain float32 logits: ms, memory, agreement
  copying     copying.py: configs/copying_paper.yaml as a user runs it: time to 99% at 4096
              (writes results/copying_gpu.json)

Prints a table per section and writes results/gpu_check.json; a section run alone replaces
only its own part of that file.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from sections.cli_row import section_cli, section_small  # sections/ finds the bake first
from sections.common import RESULTS
from sections.copying import section_copying
from sections.layers import section_layers
from sections.loss import section_loss
from sections.parity import section_kernels, section_parity
from sections.profile import section_profile
from throughput import machine, measure_throughput  # the bake's benchmarks/throughput.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="kernels,parity,throughput,cli,small")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per throughput run")
    parser.add_argument("--out", default=str(RESULTS / "gpu_check.json"))
    parser.add_argument("--copying-seconds", type=float, default=300)
    parser.add_argument(
        "--mixers", default="Mamba1,Mamba2,Mamba3,Hybrid", help="for throughput and cli"
    )
    parser.add_argument("--quick", action="store_true", help="throughput: only the ratio rows")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check needs a CUDA GPU; run it on a machine with one.")
    mixers = args.mixers.split(",")
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.update(machine())
    sections = {
        "kernels": section_kernels,
        "layers": section_layers,
        "parity": section_parity,
        "throughput": lambda: measure_throughput(args.steps, mixers, args.quick),
        "cli": lambda: section_cli(args.steps, mixers),
        "small": section_small,
        "copying": lambda: section_copying(args.copying_seconds),
        "profile": section_profile,
        "loss": section_loss,
    }
    for name in args.sections.split(","):
        result = sections[name]()
        if name in ("cli", "throughput"):  # each mixer's rows side by side, as in the README
            for mixer, rows in result.items():
                report.setdefault("throughput", {}).setdefault(mixer, {}).update(rows)
        elif name == "small":
            report["small_config"] = result
            report["small_config_it_s"] = result["graphs"].get("it_s")
        else:
            report[name] = result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
