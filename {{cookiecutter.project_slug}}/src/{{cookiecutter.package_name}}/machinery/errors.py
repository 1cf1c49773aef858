"""Bad inputs as one line: which value, what is wrong, what to do.

`input_error` finds the message in what a failed start raised; `explain` rewrites the
parser's messages where they bury the point (a nested union error, a YAML file called
"<unicode string>") and adds "did you mean" for a mistyped option.
"""

import difflib
import re
import traceback
from argparse import ArgumentError
from collections.abc import Callable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole package, not machinery/ alone
Options = Callable[[str], list[str]]


def input_error(
    err: BaseException, argv: list[str] = (), options_under: Options = lambda prefix: []
) -> str | None:
    """The message of a bad input, or None for anything else (which keeps its traceback).

    A bad input is an error raised by this package's own checks, a missing file, or an
    argument the parser refuses (its type, its choices, an unknown key). LightningCLI and
    jsonargparse wrap our checks in a few layers of their own, and a check may be raised while
    another error is handled (a UnicodeDecodeError, a KeyError), so the whole chain of causes
    and contexts is searched: the outermost of our own errors is the message (it is the one
    written for the user), else the parser's, else a missing file anywhere in the chain.
    `options_under(prefix)` names the options one level below a dotted prefix, for the
    closest known option to a mistyped one.
    """
    chain = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    for err in chain:
        frames = traceback.extract_tb(err.__traceback__)
        ours = frames and Path(frames[-1].filename).resolve().is_relative_to(PACKAGE_DIR)
        if ours and isinstance(err, ValueError | TypeError | RuntimeError | FileNotFoundError):
            return str(err)
    for err in chain:
        if isinstance(err, ArgumentError):  # jsonargparse's message spans several lines
            return (
                explain(" ".join(str(err).split()), argv, options_under)
                + ". See --help for the accepted values."
            )
    missing = [err for err in chain if isinstance(err, FileNotFoundError)]
    return str(missing[-1]) if missing else None


def explain(message: str, argv: list[str], options_under: Options) -> str:
    """The parser's `message`, with the innermost reason of a nested error, the config file's
    name, and the closest known option to a mistyped one."""
    if "Does not validate against any of the Union subtypes" in message:
        reasons = re.findall(
            r"Problem with given class_path '[^']+': (.*?)(?= - Expected|$)", message
        )
        key = re.search(r"NestedArg\(key='([^']+)', val='([^']*)'\)", message)
        reason = reasons[-1] if reasons else message
        reason = reason.split("': ")[-1] if "Problem with given class_path" in reason else reason
        if key is not None:
            root = message.split('Parser key "', 1)[1].split('"', 1)[0]
            message = f"--{root}.{key.group(1)}={key.group(2)}: {reason}"
    message = message.replace('"<unicode string>"', config_files(argv))
    # the full key of a nested error (rewritten above), else the one the parser names
    typo = re.search(r"^--([\w.]+)=", message) or re.search(
        r"(?:unrecognized arguments: |Option ')--?([\w.]+?)(?:=|'| |$)", message
    )
    if typo is not None and (close := closest_option(typo.group(1), options_under)):
        message += f"; did you mean --{close}?"
    return message


def config_files(argv: list[str]) -> str:
    """The --config files of `argv`, for a YAML error that names none."""
    found = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    found += [b for a, b in zip(argv, argv[1:], strict=False) if a in ("--config", "-c")]
    return ", ".join(found) or "the config"


def closest_option(name: str, options_under: Options) -> str | None:
    """The known option whose last part is closest to `name`'s (same prefix), if any is close."""
    prefix, _, last = name.rpartition(".")
    known = [f"{prefix}.{option}" if prefix else option for option in options_under(prefix)]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return close[0] if close and close[0] != name else None
