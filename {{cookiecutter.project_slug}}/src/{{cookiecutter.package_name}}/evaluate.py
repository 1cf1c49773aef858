"""Benchmark scores through EleutherAI's lm-evaluation-harness, as the Mamba papers report them.

    pip install -e '.[eval]'
    python -m {{ cookiecutter.package_name }} evaluate --pretrained state-spaces/mamba-130m \\
        --tokenizer EleutherAI/gpt-neox-20b \\
        --tasks lambada_openai,hellaswag,piqa,arc_easy,arc_challenge,winogrande
    python -m {{ cookiecutter.package_name }} evaluate --tasks lambada_openai \\
        --ckpt_path runs/<id>/checkpoints/best.ckpt

lm-eval asks a model three questions, and `HarnessLM` answers them with MambaLM:

    loglikelihood          log P(continuation | context) and whether greedy decoding gives it:
                           multiple choice (HellaSwag, PIQA, ARC, WinoGrande) and LAMBADA
    loglikelihood_rolling  log P(text), in windows of max_length tokens: perplexity (wikitext)
    generate_until         greedy (or sampled) text until a stop string, through model.generate

Requests are tokenized as lm-eval's own `hf` model does (lm_eval.api.model.TemplateLM), sorted
longest first and run in batches padded on the right, which a causal model never sees; so the
scores equal those of the same weights exported with `save_pretrained(format="hf")` and run
as `lm_eval --model hf` (tests/test_evaluate.py checks this). On a GPU the fused kernels run
under bfloat16 autocast; on a CPU the pure-PyTorch twin runs in float32.
"""

import datetime
import importlib.util
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .backbone import Impl
from .checkpoint import language_model, one_source
from .runid import pretrained_folder, run_folder

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import Collator
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:  # the `eval` extra is not installed: `evaluate` says how to install it
    TemplateLM, register_model = object, None

NAME = "{{ cookiecutter.package_name }}"  # lm-eval's name for HarnessLM: --model {{ cookiecutter.package_name }}
INSTALL = "lm-evaluation-harness is not installed; pip install -e '.[eval]'"


class HarnessLM(TemplateLM):
    """MambaLM as an lm-eval model.

    Args:
        pretrained: a checkpoint folder or hub id (MambaLM.from_pretrained); or
        ckpt_path: a .ckpt written by fit.
        tokenizer: bytes, a tokenizer.json or a hub id; default the one the checkpoint was
            trained with, or the tokenizer.json beside the pretrained weights.
        impl: auto (fused kernels on a GPU with mamba-ssm, else the twin), fused or reference.
        max_length: the longest window scored at once, in tokens (lm-eval's `hf` default).
        device, max_batch_size: what lm-eval passes to every model; impl picks the device.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        ckpt_path: str | None = None,
        revision: str | None = None,
        tokenizer: str | None = None,
        impl: str = "auto",
        batch_size: int | str = 16,
        max_length: int = 2048,
        device: str | None = None,
        max_batch_size: int | None = None,
    ):
        super().__init__()
        if (pretrained is None) == (ckpt_path is None):
            raise ValueError("give one of pretrained= (a folder or hub id) and ckpt_path=")
        if not str(batch_size).isdigit() or int(batch_size) < 1 or int(max_length) < 2:
            raise ValueError(
                f"batch_size={batch_size} and max_length={max_length} must be integers >= 1 and "
                ">= 2 (batch_size=auto is not supported)"
            )
        model, self.text = language_model(
            "evaluate", ckpt_path, pretrained, revision, tokenizer, impl
        )
        self.gpu = model.backbone.impl == "fused"
        self._device = torch.device("cuda" if self.gpu else "cpu")
        self.model = model.to(self._device).eval()
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.max_gen_toks = 256  # lm-eval's default for generation tasks that name none
        eot = self.text.hf.token_to_id("<|endoftext|>") if self.text.hf is not None else None
        self._eot = eot if eot is not None else 0  # GPT-NeoX's is 0; for bytes, NUL

    @property
    def eot_token_id(self) -> int:
        """Ends a text, and stands for the context of a text scored from its first token."""
        return self._eot

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs):
        return self.text.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.text.decode(tokens)

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """(log P(continuation | context), greedy?) for (strings, context ids, continuation ids).

        As lm-eval's hf model: the longest first; requests that differ in their last token
        only (one-token answers to one question) share one forward pass.
        """
        order = Collator(
            requests,
            sort_fn=lambda req: (-len(req[1] + req[2]), tuple(req[1] + req[2])),
            group_by="contexts",
            group_fn=lambda req: req[1] + req[2][:-1],
        )
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            # the last max_length tokens of context + continuation, less the last (predicted)
            inputs = [(ctx + cont)[-(self.max_length + 1) :][:-1] for _, ctx, cont in chunk]
            hidden = self.hidden(inputs)  # (B, L, D), right-padded
            for (strings, ctx, cont), row, ids in zip(chunk, hidden, inputs, strict=True):
                scored = row[len(ids) - len(cont) : len(ids)]  # (C, D): predicts cont
                logp = F.linear(scored, self.model.output_weight).float().log_softmax(-1)
                for strings, cont, logp in order.get_cache(  # noqa: B020 (lm-eval's idiom)
                    req_str=strings, cxt_toks=ctx, cont_toks=cont, logits=logp[None]
                ):
                    target = torch.tensor(cont, device=self._device)[None]  # (1, C)
                    greedy = bool((logp.argmax(-1)[:, -len(cont) :] == target).all())
                    score = float(logp.gather(2, target[..., None]).sum())
                    results.append((score, greedy))
                    if strings is not None:  # lm-eval's optional cache of answers
                        self.cache_hook.add_partial("loglikelihood", strings, (score, greedy))
        return order.get_original(results)

    def hidden(self, inputs: list[list[int]]) -> torch.Tensor:
        """The backbone's last hidden states of token lists padded on the right: (B, L, D)."""
        batch = torch.zeros(len(inputs), max(map(len, inputs)), dtype=torch.long)
        for i, ids in enumerate(inputs):
            batch[i, : len(ids)] = torch.tensor(ids)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.gpu):
            return self.model.backbone(batch.to(self._device))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log P(text) of whole texts: windows of max_length tokens, each token scored once."""
        windows, counts = [], []
        for (text,) in (req.args for req in requests):
            rolling = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            pairs = [make_disjoint_window(window) for window in rolling]
            windows += [(None, ctx, cont) for ctx, cont in pairs]
            counts.append(len(pairs))
        scores = [score for score, _ in self._loglikelihood_tokens(windows)]
        totals, start = [], 0
        for req, n in zip(requests, counts, strict=True):
            totals.append(sum(scores[start : start + n]))
            start += n
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, totals[-1])
        return totals

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Text after each context, up to the first stop string or max_gen_toks tokens.

        model.generate takes no padding mask, so a batch holds contexts of one length."""
        order = Collator(
            [req.args for req in requests],
            sort_fn=lambda req: (-len(self.tok_encode(req[0])), req[0]),
            group_by="gen_kwargs",
            group_fn=lambda req: req[1],
        )
        eos = self.tok_decode([self.eot_token_id])
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            settings = dict(chunk[0][1])  # the same for the whole chunk
            until = settings.pop("until", None) or []
            until = ([until] if isinstance(until, str) else list(until)) + [eos]
            new = int(settings.pop("max_gen_toks", self.max_gen_toks))
            sampled = settings.get("do_sample", False)
            temperature = float(settings.get("temperature", 1.0)) if sampled else 0.0
            keep = max(1, self.max_length - new)  # the context's last tokens that fit
            ids = [(self.tok_encode(ctx) or [self.eot_token_id])[-keep:] for ctx, _ in chunk]
            texts = {}
            for length in sorted({len(row) for row in ids}, reverse=True):
                rows = [i for i, row in enumerate(ids) if len(row) == length]
                prompt = torch.tensor([ids[i] for i in rows], device=self._device)  # (b, L)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.gpu):
                    out = self.model.generate(prompt, new, temperature)  # (b, L + new)
                for i, tokens in zip(rows, out[:, length:].tolist(), strict=True):
                    texts[i] = self.tok_decode(tokens)
            for i, (ctx, kwargs) in enumerate(chunk):
                text = texts[i]
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                results.append(text)
                self.cache_hook.add_partial("generate_until", (ctx, kwargs), text)
        return order.get_original(results)


if register_model is not None:
    register_model(NAME)(HarnessLM)


def evaluate(
    tasks: str,
    ckpt_path: str | None = None,
    pretrained: str | None = None,
    revision: str | None = None,
    tokenizer: str | None = None,
    limit: float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 16,
    max_length: int = 2048,
    impl: Impl = "auto",
    include_path: str | None = None,
    out: str | None = None,
) -> None:
    """Score a trained or pretrained language model on lm-evaluation-harness tasks.

    Args:
        tasks: lm-eval task or group names, comma-separated
        ckpt_path: a .ckpt written by fit (or give pretrained)
        pretrained: a checkpoint folder or hub id (or give ckpt_path)
        revision: hub branch, tag or commit of pretrained
        tokenizer: bytes, a tokenizer.json or a hub id; default: the model's own
        limit: at most N examples per task (< 1: a fraction)
        num_fewshot: examples in each prompt (default: the task's)
        batch_size: requests scored together
        max_length: tokens scored at once
        impl: auto (fused kernels on a GPU with mamba-ssm, else plain PyTorch), fused or reference
        include_path: a folder of task YAML files of your own (lm-eval's format)
        out: folder for the results JSON; default runs/<id>/eval or eval/<name>
    """
    one_source(ckpt_path, pretrained)
    if importlib.util.find_spec("lm_eval") is None:
        raise RuntimeError(f"evaluate: {INSTALL}")
    if (limit is not None and limit <= 0) or (num_fewshot or 0) < 0:
        raise ValueError(f"--limit={limit} and --num_fewshot={num_fewshot} must be > 0 and >= 0")
    if include_path is not None and not Path(include_path).is_dir():
        raise FileNotFoundError(f"--include_path={include_path}: no such folder")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable, make_table

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    manager = TaskManager(include_path=include_path)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown or not names:
        raise ValueError(
            f"--tasks={tasks}: lm-eval knows no task {', '.join(unknown) or '(none given)'}; "
            "`lm-eval ls tasks` lists them, --include_path adds your own"
        )
    out = Path(out) if out else default_out(ckpt_path, pretrained)
    model = HarnessLM(
        pretrained, ckpt_path, revision, tokenizer, impl,
        batch_size, max_length,
    )  # fmt: skip
    limit = int(limit) if limit is not None and limit >= 1 else limit
    try:
        results = simple_evaluate(
            model=model,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
        )
    except ConnectionError as err:  # a task's data set, offline and not in the datasets cache
        raise FileNotFoundError(
            f"--tasks={tasks}: a task's data is not in the datasets cache and cannot be "
            f"downloaded ({' '.join(str(err).split())}); run the command once online with the "
            "same HF_HOME, then it works offline"
        ) from None
    print(make_table(results))
    if "groups" in results:
        print(make_table(results, "groups"))
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    path = out / f"results_{stamp}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(results, indent=1, default=handle_non_serializable) + "\n")
    os.replace(partial, path)
    print(f"wrote {path}")


def default_out(ckpt_path: str | None, pretrained: str | None) -> Path:
    """runs/<id>/eval for a run's checkpoint, else eval/<the pretrained name>."""
    if ckpt_path is not None:
        return run_folder(Path(ckpt_path).resolve()) / "eval"
    return Path("eval") / pretrained_folder(pretrained)
