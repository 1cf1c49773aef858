"""The rule for a run id: it names a folder, so only a safe subset of characters.

One rule for both places that take an id: the CLI's `--run.id` (runs.RunConfig) and
`modal run modal_app.py --run-id` (launch.py, which checks it on your machine before any GPU
starts). Standard library only, as launch.py needs.
"""

import re

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
RULE = "only letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128"


def is_run_id(value: str) -> bool:
    return RUN_ID.fullmatch(value) is not None
