"""The rule for a run id: it names a folder, so only a safe subset of characters; where a
run's checkpoints lie in its folder (and which run a checkpoint is of); and the folder that
published weights' scores go to.

One rule for both places that take an id: the CLI's `--run.id` (runs.RunConfig) and
`modal run modal_app.py --run-id` (launch.py, which checks it on your machine before any GPU
starts). Standard library only, as launch.py needs.
"""

import re
from pathlib import Path

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RULE = "only letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128"


def is_run_id(value: str) -> bool:
    return RUN_ID.fullmatch(value) is not None


CHECKPOINTS = "checkpoints"  # <run root>/<id>/checkpoints/: last.ckpt, best.ckpt, ...


def checkpoint_path(root: str | Path, run_id: str, name: str) -> Path:
    """<root>/<run_id>/checkpoints/<name>.ckpt, where fit writes a run's checkpoint `name`."""
    return Path(root) / run_id / CHECKPOINTS / f"{name}.ckpt"


def run_folder(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to: <run>/ for <run>/checkpoints/<name>.ckpt, else
    the checkpoint's own folder."""
    folder = checkpoint.parent
    return folder.parent if folder.name == CHECKPOINTS else folder
{%- if cookiecutter.task == 'language_model' %}


def pretrained_folder(pretrained: str) -> str:
    """The folder name for published weights' results (evaluate): the hub id or path, with each
    run of characters other than letters, digits, '.', '_' and '-' made one '_'."""
    return re.sub(r"[^\w.-]+", "_", pretrained.strip("/"))
{%- endif %}
