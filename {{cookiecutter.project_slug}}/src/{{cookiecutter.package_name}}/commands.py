"""The commands beside Lightning's: `generate` (prompts in, text out) and `export`.

    python -m {{ cookiecutter.package_name }} generate --ckpt_path runs/<id>/checkpoints/last.ckpt --prompt "Once"
    python -m {{ cookiecutter.package_name }} export --ckpt_path <ckpt> --format hf --out exported/

They load a model and use it; no Trainer is involved. cli.main runs them and turns a bad input
into one line and exit 2, as for fit.
"""

import argparse
import sys
from pathlib import Path

import torch

from .backbone import BackboneConfig
from .module import MambaModule


class CommandParser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line, exit 2, like every other bad input (argparse would add its usage)."""
        print(f"error: {self.prog.split()[-1]}: {message}; see --help", file=sys.stderr)
        raise SystemExit(2)


def export(argv: list[str]) -> None:
    """Write a trained checkpoint as a folder in mamba-ssm's or HF transformers' format."""
    from .pretrained import FORMATS

    parser = CommandParser(prog=f"python -m {__package__} export")
    parser.add_argument("--ckpt_path", required=True, help="a .ckpt written by fit")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="a new (or empty) folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out={out} exists and is not an empty folder; give a new one")
    model = _load_checkpoint(args.ckpt_path, "reference")
    model.save_pretrained(out, format=args.format)
    print(f"wrote {out} ({args.format} format)")


def generate(argv: list[str]) -> None:
    """Continue prompts with a trained or pretrained language model, through its recurrent state."""
    from .data.text import TextTokenizer
    from .pretrained import hub_file, looks_like_path

    parser = CommandParser(prog=f"python -m {__package__} generate")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="a .ckpt written by fit")
    source.add_argument("--pretrained", help="a checkpoint folder or hub id")
    parser.add_argument("--revision", help="hub branch, tag or commit of --pretrained")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="a prompt; repeat for several")
    prompts.add_argument("--prompts_file", help="a UTF-8 file with one prompt per line")
    parser.add_argument(
        "--tokenizer",
        help="bytes, a tokenizer.json or a hub id; default: the one the checkpoint was trained "
        "with, or the tokenizer.json in the --pretrained folder",
    )
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy decoding")
    parser.add_argument("--top_k", type=int, default=None, help="sample from the k likeliest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--impl", choices=("auto", "fused", "reference"), default="auto")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or args.temperature < 0 or (args.top_k or 1) < 1:
        raise ValueError(
            f"--max_new_tokens={args.max_new_tokens}, --temperature={args.temperature} and "
            f"--top_k={args.top_k} must be >= 1, >= 0 and >= 1"
        )
    if args.prompts_file is not None:
        if not Path(args.prompts_file).is_file():
            raise FileNotFoundError(f"--prompts_file={args.prompts_file}: no such file")
        texts = [line for line in Path(args.prompts_file).read_text().splitlines() if line]
    else:
        texts = args.prompt
    spec = args.tokenizer
    if args.ckpt_path is not None:
        model = _load_checkpoint(args.ckpt_path, args.impl)
        saved = torch.load(args.ckpt_path, map_location="cpu", mmap=True, weights_only=False)
        trained_on = saved.get("datamodule_hyper_parameters", {})
        if spec is None and "suffixes" in trained_on:  # trained on TextFile
            spec = trained_on.get("tokenizer", "bytes")
    else:
        model = MambaModule.from_pretrained(
            args.pretrained, args.revision, backbone=BackboneConfig(impl=args.impl)
        )
        if spec is None:  # the checkpoint's own tokenizer.json, where it ships one
            folder = Path(args.pretrained).expanduser()
            found = folder / "tokenizer.json" if folder.is_dir() else None
            if found is None and not looks_like_path(args.pretrained):
                found = hub_file(args.pretrained, "tokenizer.json", args.revision, required=False)
            spec = str(found) if found is not None and found.is_file() else None
    if spec is None:
        raise ValueError(
            "--tokenizer is needed: the model was not trained on text with a known tokenizer; "
            "give bytes, a tokenizer.json or a hub id (e.g. EleutherAI/gpt-neox-20b)"
        )
    tokenizer = TextTokenizer(spec)
    if tokenizer.vocab_size > model.hparams.vocab_size:
        raise ValueError(
            f"--tokenizer={spec} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocabulary of {model.hparams.vocab_size}; use the tokenizer it was trained with"
        )
    if model.backbone.impl == "fused":
        model.cuda()
    model.eval()
    torch.manual_seed(args.seed)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if not ids:
            raise ValueError(f"prompt {i + 1} encodes to no tokens; give it some text")
        prompt = torch.tensor([ids], device=model.device)  # (1, L)
        out = model.generate(prompt, args.max_new_tokens, args.temperature, args.top_k)
        print(("\n" if i else "") + tokenizer.decode(out[0].tolist()), flush=True)


def _load_checkpoint(path: str, impl: str) -> MambaModule:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--ckpt_path={path}: no such file; give a .ckpt written by fit")
    return MambaModule.load_for_device(path, impl=impl, map_location="cpu")


COMMANDS = {"export": export, "generate": generate}
