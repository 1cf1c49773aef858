"""Shared fixtures: a clean copy of the template and helpers to bake and inspect projects."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TEMPLATE_ROOT = Path(__file__).resolve().parents[1]
COOKIECUTTER_JSON = json.loads((TEMPLATE_ROOT / "cookiecutter.json").read_text(encoding="utf-8"))

# Everything cookiecutter reads from the template; the rest of the repo is not the template.
TEMPLATE_PARTS = ("cookiecutter.json", "hooks", "{{cookiecutter.project_slug}}")
# Build and tool output that may sit in a working tree but is never part of a clone.
NOT_TEMPLATE = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "*.egg-info", ".venv"
)

# Questions with a list of options; keys starting with "_" are settings, not questions.
CHOICES = {
    key: value
    for key, value in COOKIECUTTER_JSON.items()
    if isinstance(value, list) and not key.startswith("_")
}
DEFAULTS = {key: options[0] for key, options in CHOICES.items()}

# Commits made by the tests must not depend on the machine's git identity.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Template Tests",
    "GIT_AUTHOR_EMAIL": "tests@example.com",
    "GIT_COMMITTER_NAME": "Template Tests",
    "GIT_COMMITTER_EMAIL": "tests@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def copy_template(destination: Path) -> Path:
    """Copy the template (only what cookiecutter reads) into `destination` and return it."""
    destination.mkdir(parents=True, exist_ok=True)
    for part in TEMPLATE_PARTS:
        source = TEMPLATE_ROOT / part
        if source.is_dir():
            shutil.copytree(source, destination / part, ignore=NOT_TEMPLATE)
        else:
            shutil.copy2(source, destination / part)
    return destination


def git(cwd: Path, *args: str) -> str:
    """Run git in `cwd` with a fixed identity and return its stdout."""
    done = subprocess.run(
        ["git", "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    """Stage everything in `repo`, commit it and return the new commit id."""
    git(repo, "add", "--all")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def failures_first(output: str, tail: int = 6000) -> str:
    """pytest's `output` cut to its last `tail` characters, after what failed and why.

    The end of a failed suite's output is often the data of one assertion (a list of numbers);
    the names of the failed tests (the `FAILED`/`ERROR` lines of the short summary) and the
    first `E` lines of each failure, lifted to the top, say what broke. Output without them
    (not pytest's, or nothing failed) is only cut.
    """
    summary, reasons, section, taken = [], [], None, 0
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            summary.append(line[:500])
        elif header := re.fullmatch(r"_{3,} (.+?) _{3,}", line):
            section, taken = header.group(1), 0
        elif section and line.startswith("E ") and taken < 4:
            reasons.append(f"{section}: {line[1:].strip()}"[:500])
            taken += 1
    lifted = "\n".join(summary + reasons)
    return (lifted + "\n--- output, last part\n" if lifted else "") + output[-tail:]


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command, fail the test with its output if it exits non-zero."""
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {done.returncode} in {cwd}\n"
            f"--- stdout\n{failures_first(done.stdout)}\n--- stderr\n{done.stderr[-6000:]}"
        )
    return done


def cruft(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return run(sys.executable, "-m", "cruft", *args, cwd=cwd)


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the template in a folder that is not a git checkout.

    Baking from it is deterministic: no caches from the working tree travel along, and the
    post-generation hook records no .cruft.json (it does that only for a clean checkout,
    which the cruft tests build themselves).
    """
    return copy_template(tmp_path_factory.mktemp("template"))


def bake(cookies, template: Path, **answers: str) -> Path:
    """Bake with `answers` over the defaults; fail the test if the bake fails."""
    result = cookies.bake(extra_context=answers, template=str(template))
    if result.exception is not None:
        pytest.fail(f"bake with {answers} failed: {result.exception!r}")
    return result.project_path
