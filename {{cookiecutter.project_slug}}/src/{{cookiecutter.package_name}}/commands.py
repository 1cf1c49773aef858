"""The commands beside Lightning's:
{%- if cookiecutter.task == 'language_model' %} `generate` (prompts in, text out), `export`, `extrapolate`,
`evaluate` (lm-evaluation-harness, evaluate.py).

    python -m {{ cookiecutter.package_name }} generate --ckpt_path runs/<id>/checkpoints/last.ckpt --prompt "Once"
    python -m {{ cookiecutter.package_name }} export --ckpt_path <ckpt> --format hf --out exported/
    python -m {{ cookiecutter.package_name }} extrapolate --ckpt_path <ckpt> --lengths 2^6..2^20
    python -m {{ cookiecutter.package_name }} evaluate --ckpt_path <ckpt> --tasks lambada_openai

Each is a typed function;
{%- else %} `extrapolate`, a checkpoint's accuracy at other
sequence lengths.

    python -m {{ cookiecutter.package_name }} extrapolate --ckpt_path <ckpt> --lengths 2^6..2^20

It is a typed function;
{%- endif %} `run` turns it into a command with jsonargparse, as LightningCLI
does for fit: the options, their types, choices and defaults come from the signature, their help
from the docstring's Args, and `--config <file>.yaml` takes any of them from a file. They load
a model and use it; no Trainer is involved. cli.main runs them and turns a bad input into one
line and exit 2, as for fit.
"""

import datetime
import difflib
import importlib
import inspect
import json
import re
{%- if cookiecutter.task == 'language_model' %}
import shutil
import sys
{%- endif %}
import time
{%- if cookiecutter.task == 'language_model' %}
from collections import deque
from collections.abc import Iterator
{%- endif %}
from pathlib import Path
{%- if cookiecutter.task == 'language_model' %}
from typing import Literal
{%- endif %}

import torch
from jsonargparse import ArgumentError, ArgumentParser

from .backbone import Impl
{%- if cookiecutter.task == 'language_model' %}
from .checkpoint import Trained, language_model, load_trained, one_source
from .data import IGNORE_INDEX, GeneratedDataModule
from .data.text import TextTokenizer
from .pretrained import FORMATS
{%- else %}
from .checkpoint import Trained, load_trained
from .data import GeneratedDataModule
{%- endif %}
{%- if cookiecutter.task == 'language_model' %}


def export(ckpt_path: str, format: Literal[FORMATS], out: str) -> None:
    """Write a trained checkpoint as a folder in mamba-ssm's or HF transformers' format.

    Args:
        ckpt_path: a .ckpt written by fit
        format: mamba_ssm (MambaLMHeadModel.from_pretrained) or hf (transformers)
        out: a new (or empty) folder
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out={out} exists and is not an empty folder; give a new one")
    trained = load_trained(ckpt_path, "reference")
    # the tokenizer.json it was trained with goes along, so the folder generates on its own
    tokenizer = TextTokenizer(trained.tokenizer).path if trained.tokenizer else None
    trained.net.save_pretrained(out, format=format)
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out / "tokenizer.json")
    shipped = " with its tokenizer.json" if tokenizer is not None else ""
    print(f"wrote {out} ({format} format){shipped}")


def generate(
    ckpt_path: str | None = None,
    pretrained: str | None = None,
    revision: str | None = None,
    prompt: list[str] | None = None,
    prompts_file: str | None = None,
    tokenizer: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 16,
    dtype: Literal["auto", "bf16", "fp32"] = "auto",
    seed: int = 0,
    impl: Impl = "auto",
) -> None:
    """Continue prompts with a trained or pretrained language model, through its recurrent state.

    The prompts are decoded batch_size at a time (prompts of different lengths in one batch
    each get the tokens they get alone); a single prompt is printed token by token as it is
    generated. At the end one line on stderr gives the time to the first token and the rate.

    Args:
        ckpt_path: a .ckpt written by fit (or give pretrained)
        pretrained: a checkpoint folder or hub id (or give ckpt_path)
        revision: hub branch, tag or commit of pretrained
        prompt: a prompt; repeat the option for several (or give prompts_file)
        prompts_file: a UTF-8 file with one prompt per line
        tokenizer: bytes, a tokenizer.json or a hub id; default: the one the checkpoint was
            trained with, or the tokenizer.json in the pretrained folder
        max_new_tokens: tokens generated after each prompt
        temperature: 0: greedy decoding
        top_k: sample from the k likeliest tokens
        top_p: sample from the likeliest tokens worth p
        batch_size: prompts decoded together
        dtype: what the matrices multiply in (bf16: under torch.autocast); auto: bf16 on a GPU,
            fp32 on a CPU
        seed: the sampling's seed
        impl: auto (fused kernels on a GPU with mamba-ssm, else plain PyTorch), fused or reference
    """
    one_source(ckpt_path, pretrained)
    if isinstance(prompt, str):  # `prompt: text` in a config file
        prompt = [prompt]
    if (prompt is None) == (prompts_file is None):
        raise ValueError(
            "give --prompt (repeat it for several prompts) or --prompts_file (one prompt per "
            "line), one of the two"
        )
    if min(max_new_tokens, top_k or 1, batch_size) < 1 or temperature < 0:
        raise ValueError(
            f"--max_new_tokens={max_new_tokens}, --top_k={top_k} and "
            f"--batch_size={batch_size} must be >= 1, and --temperature={temperature} >= 0"
        )
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"--top_p={top_p} must be in (0, 1]; 1 keeps every token")
    if prompts_file is not None:
        if not Path(prompts_file).is_file():
            raise FileNotFoundError(f"--prompts_file={prompts_file}: no such file")
        texts = [line for line in Path(prompts_file).read_text().splitlines() if line]
        if not texts:
            raise ValueError(f"--prompts_file={prompts_file} holds no prompt; one per line")
    else:
        texts = prompt
    model, tokenizer = language_model(ckpt_path, pretrained, revision, tokenizer, impl)
    prompts = [tokenizer.encode(text) for text in texts]
    for i, ids in enumerate(prompts):
        if not ids:
            raise ValueError(f"prompt {i + 1} encodes to no tokens; give it some text")
    gpu = model.backbone.impl == "fused"
    device = torch.device("cuda" if gpu else "cpu")
    model.to(device).eval()
    bf16 = dtype == "bf16" or (dtype == "auto" and gpu)
    sampling = (temperature, top_k, top_p)
    torch.manual_seed(seed)
    start, first = time.perf_counter(), None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, len(prompts), batch_size):
            batch = [torch.tensor(ids, device=device) for ids in prompts[i : i + batch_size]]
            steps = model.stream(batch, max_new_tokens, *sampling)
            shown = Shown(tokenizer, prompts[0]) if len(prompts) == 1 else None
            new = [[] for _ in batch]
            for tokens in _on_host(steps):
                first = first or time.perf_counter()
                for row, token in zip(new, tokens, strict=True):
                    row.append(token)
                if shown is not None:
                    shown.update(new[0])
            if shown is not None:
                shown.close()
                continue
            for j, row in enumerate(new):
                text = tokenizer.decode(prompts[i + j] + row)
                print(("\n" if i + j else "") + text, flush=True)
    took = time.perf_counter() - start
    count = len(prompts) * max_new_tokens
    print(
        f"generated {count} tokens for {len(prompts)} prompt(s) in {took:.2f} s: first token "
        f"after {(first - start) * 1e3:.0f} ms, {count / took:.0f} tokens/s "
        f"({'bf16' if bf16 else 'fp32'}, batches of up to {batch_size})",
        file=sys.stderr,
    )


class Shown:
    """A prompt's text and its continuation on stdout, as the tokens come.

    The text of all tokens so far is decoded again at each token and what is new is printed,
    except a trailing incomplete UTF-8 character (a byte tokenizer emits one byte at a time).
    """

    def __init__(self, tokenizer, prompt: list[int]):
        self.tokenizer, self.prompt, self.printed, self.new = tokenizer, prompt, "", []
        self.update([])

    def update(self, new: list[int], final: bool = False) -> None:
        self.new = new
        text = self.tokenizer.decode(self.prompt + new)
        if text.endswith("\ufffd") and not final:
            return
        print(text[len(self.printed) :], end="", flush=True)
        self.printed = text

    def close(self) -> None:
        self.update(self.new, final=True)
        print(flush=True)


def _on_host(steps: Iterator[torch.Tensor]) -> Iterator[list[int]]:
    """Each step's tokens (B, 1) as B ints. On a GPU a step after the first is read one step
    late: the next is already queued when it is copied, so the GPU never waits for the host."""
    pending = deque()
    for step, tokens in enumerate(steps):
        done = None
        copy = tokens[:, 0].to("cpu", non_blocking=True)  # pinned memory, from a GPU
        if tokens.is_cuda:
            done = torch.cuda.Event()
            done.record()
        pending.append((copy, done))
        while len(pending) > (1 if step else 0):  # the first at once: the time to first token
            copy, done = pending.popleft()
            if done is not None:
                done.synchronize()
            yield copy.tolist()
    for copy, done in pending:
        if done is not None:
            done.synchronize()
        yield copy.tolist()
{%- endif %}


def parse_lengths(text: str | int | list[int]) -> list[int]:
    """`64,256,4096` or `2^6..2^20` (every power of two in between), or both, comma-separated;
    or, from a config file, one length or a list of them."""
    if not isinstance(text, str):
        text = ",".join(str(length) for length in ([text] if isinstance(text, int) else text))
    lengths = []
    for part in text.split(","):
        try:
            if ".." in part:
                low, high = (int(side.strip().removeprefix("2^")) for side in part.split(".."))
                lengths += [2**k for k in range(low, high + 1)]
            else:
                base, _, power = part.strip().partition("^")
                lengths.append(int(base) ** int(power) if power else int(base))
        except ValueError:
            raise ValueError(
                f"--lengths={text}: {part!r} is not a length; give integers or powers of two, "
                "e.g. 64,256,4096 or 2^6..2^20"
            ) from None
    if not lengths or min(lengths) < 3:
        raise ValueError(f"--lengths={text} must name lengths of at least 3")
    return sorted(set(lengths))


def _task_of(trained: Trained):
    """The generated data module a checkpoint was trained on, and its arguments."""
    path, saved = trained.data_class, trained.data_args
    cls = None
    if path is not None:
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, GeneratedDataModule) and "seq_len" in saved):
        raise ValueError(
            f"--ckpt_path was trained on {path or 'data that is not recorded'}, not a generated "
{%- if cookiecutter.task == 'language_model' %}
            "task with a seq_len; extrapolate evaluates InductionHeads and SelectiveCopying "
            "checkpoints written by fit"
{%- else %}
            "task with a seq_len; extrapolate evaluates SyntheticSeries checkpoints written by fit"
{%- endif %}
        )
    return cls, saved


@torch.no_grad()
def _accuracy(model: torch.nn.Module, inputs, targets) -> tuple[int, int]:
{%- if cookiecutter.task == 'language_model' %}
    """(correct, scored) over the positions with a target."""
    hidden = model.backbone(inputs)  # (B, L, D); only the scored positions reach the head
    scored = targets != IGNORE_INDEX
    logits = hidden[scored] @ model.output_weight.T
    return int((logits.argmax(-1) == targets[scored]).sum()), int(scored.sum())
{%- else %}
    """(correct, scored): one label per classified series."""
    return int((model(inputs).argmax(-1) == targets).sum()), targets.numel()
{%- endif %}


def extrapolate(
    ckpt_path: str,
    lengths: str | int | list[int],
    samples: int = 256,
    tokens_per_batch: int | None = None,
    max_cpu_minutes: float = 10.0,
    impl: Impl = "auto",
    out: str | None = None,
) -> None:
    """Accuracy of a checkpoint at sequence lengths it was not trained at (generated tasks).

    The samples are the validation split of the checkpoint's own task at each length. On a GPU
    the fused kernels run every length; on a CPU each length's time is projected from the one
    before, and lengths projected over max_cpu_minutes are skipped with the cost printed.

    Args:
        ckpt_path: a .ckpt written by fit
        lengths: e.g. 64,256,4096 or 2^6..2^20 (in a config file also a list: [64, 256])
        samples: validation samples per length
        tokens_per_batch: batch size x length; default 2^22 on a GPU, 2^15 on a CPU
        max_cpu_minutes: on a CPU: skip lengths projected to take longer
        impl: auto (fused kernels on a GPU with mamba-ssm, else plain PyTorch), fused or reference
        out: also write the results to this JSON file
    """
    lengths = parse_lengths(lengths)
    if out is not None and not Path(out).resolve().parent.is_dir():
        raise FileNotFoundError(f"--out={out}: its folder does not exist; create it first")
    if samples < 1 or (tokens_per_batch or 1) < 1 or max_cpu_minutes <= 0:
        raise ValueError(
            f"--samples={samples}, --tokens_per_batch={tokens_per_batch} and "
            f"--max_cpu_minutes={max_cpu_minutes} must be positive"
        )
    trained = load_trained(ckpt_path, impl)
    model = trained.net
    task, data_args = _task_of(trained)
    for length in lengths:  # a length the task cannot have is refused before any work
        task(**{**data_args, "seq_len": length})
    gpu = model.backbone.impl == "fused"
    try:  # the longest length must fit one call of the kernels: the backbone splits batches
        model.backbone.samples_per_call(lengths[-1])
    except ValueError as err:
        raise ValueError(f"--lengths: {err}") from None
    device = torch.device("cuda" if gpu else "cpu")
    model.to(device).eval()
    budget = tokens_per_batch or (2**22 if gpu else 2**15)
    name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{task.__name__} at {len(lengths)} lengths, {samples} samples each, on {name}")
    print(f"{'length':>9s} | {'accuracy':>8s} | {'seconds':>8s}")
    results, seconds, skipped, rate = {}, {}, {}, None
    for length in lengths:
        tokens = samples * length
        if not gpu and rate is not None and tokens / rate > max_cpu_minutes * 60:
            minutes = tokens / rate / 60
            skipped[str(length)] = round(minutes, 1)
            print(
                f"{length:9d} | not run: about {minutes:.1f} min on this CPU at "
                f"{rate / 1e3:.0f}k tokens/s (--max_cpu_minutes={max_cpu_minutes:g}); "
                "run it on a GPU"
            )
            continue
        data = task(**{**data_args, "seq_len": length, "num_val_samples": samples})
        dataset = data.dataset("val")
        per_batch = max(1, budget // length)
        start, correct, scored = time.perf_counter(), 0, 0
        for first in range(0, samples, per_batch):
            batch = [dataset[i] for i in range(first, min(first + per_batch, samples))]
            inputs, targets = (torch.stack(t).to(device) for t in zip(*batch, strict=True))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu):
                hits, n = _accuracy(model, inputs, targets)
            correct, scored = correct + hits, scored + n
        if gpu:
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        rate = tokens / took
        results[str(length)], seconds[str(length)] = correct / scored, round(took, 2)
        print(f"{length:9d} | {correct / scored:8.4f} | {took:8.2f}", flush=True)
    if out is not None:
        report = {
            "checkpoint": str(ckpt_path),
            "task": task.__name__,
            "device": name,
            "date": datetime.date.today().isoformat(),
            "samples_per_length": samples,
            "lengths": results,
            "seconds": seconds,
            "skipped_projected_cpu_minutes": skipped,
        }
        Path(out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}")


# command -> "module.function" of this package{% if cookiecutter.task == 'language_model' %}; evaluate's module imports lm-eval, an extra and
# slow to import, so a command's module is imported only when the command runs{% endif %}
COMMANDS = {
{%- if cookiecutter.task == 'language_model' %}
    "evaluate": "evaluate.evaluate",
    "export": "commands.export",
{%- endif %}
    "extrapolate": "commands.extrapolate",
{%- if cookiecutter.task == 'language_model' %}
    "generate": "commands.generate",
{%- endif %}
}
{%- if cookiecutter.task == 'language_model' %}
REPEATED = {"prompt": "a prompt; repeat the option for several"}  # list options given one by one
{%- else %}
REPEATED: dict[str, str] = {}  # list options given one by one: --x a --x b
{%- endif %}


def run(name: str, argv: list[str]) -> None:
    """Parse `argv` into the arguments of the command `name` and call it."""
    module, _, attribute = COMMANDS[name].rpartition(".")
    command = getattr(importlib.import_module(f".{module}", __package__), attribute)
    parser = ArgumentParser(
        prog=f"python -m {__package__} {name}",
        description=command.__doc__.split("\n")[0],
        exit_on_error=False,
        allow_abbrev=False,  # --sample is not --samples
    )
    parser.add_argument("--config", action="config", help="a YAML file of any of these options")
    parameters = inspect.signature(command).parameters
    repeated = {key: text for key, text in REPEATED.items() if key in parameters}
    parser.add_function_arguments(command, skip=set(repeated), as_group=False)
    for key, text in repeated.items():
        parser.add_argument(f"--{key}", action="append", help=text)
    try:
        args = parser.parse_args(argv)
    except ArgumentError as err:
        raise ValueError(f"{name}: {refused(str(err), list(parameters))}") from None
    command(**{key: args[key] for key in parameters})


def refused(message: str, options: list[str]) -> str:
    """jsonargparse's message for a refused option, in one line, in the command's terms."""
    message = " ".join(message.split())

    def not_a(m: re.Match) -> str:  # (option, type, value)
        return f"--{m[1]}={m[3]} is not {'an' if m[2] == 'int' else 'a'} {m[2]}"

    rewrites = [
        (r'Parser key "(\w+)": Expected a typing\.Literal\[(.*)\]\. Got value: (.*)',
         lambda m: f"--{m[1]}={m[3]} is not one of {m[2].replace(chr(39), '')}"),
        (r"Parser key \"(\w+)\": Expected a <class '(\w+)'>\. Got value: (.*)", not_a),
        (r"Parser key \"(\w+)\": Does not validate against any of the Union subtypes "
         r"Subtypes: \[<class '(\w+)'>, <class 'NoneType'>\].* Given value: (.*)", not_a),
        (r'Parser key "(\w+)":', lambda m: f"--{m[1]}:"),
        (r"the following arguments are required: (.*)",
         lambda m: "missing " + ", ".join(f"--{key.strip()}" for key in m[1].split(","))),
    ]  # fmt: skip
    for pattern, rewrite in rewrites:
        message = re.sub(pattern, rewrite, message)
    typo = re.search(r"unrecognized arguments: --?(\w+)", message)
    close = difflib.get_close_matches(typo.group(1), options, n=1) if typo else []
    return message + (f"; did you mean --{close[0]}?" if close else "; see --help")
