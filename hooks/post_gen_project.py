"""Finish the bake: drop the LICENSE for license=none, remove the folders that conditional
file names left empty, and record the answers for cruft.

LICENSE is one file whatever the license, so it is written for every bake and removed here
when it is not wanted. A file whose Jinja name renders empty is skipped (the task's own
modules, configs and tests are chosen so), but cookiecutter still makes its folder: one whose
every file was skipped (tests/fixtures/ for a classifier) is removed here.

`cruft create` writes .cruft.json itself after this hook. A plain `cookiecutter` bake from a
clean git checkout of the template (which is what `cookiecutter gh:...` is) writes the same
file here, so `cruft check` and `cruft update` work on every project; from a folder that is
not a clean checkout the commit is unknown and nothing is written.
"""

import json
import subprocess
from pathlib import Path

ANSWERS = json.loads(r"""{{ cookiecutter | jsonify }}""")


def git(repo_dir: str, *args: str) -> str | None:
    """Return the stripped output of a git command, or None if it fails."""
    try:
        done = subprocess.run(
            ["git", "-C", repo_dir, *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def template_commit(repo_dir: str) -> str | None:
    """Return HEAD of the template checkout when it holds exactly what was rendered."""
    if git(repo_dir, "status", "--porcelain", "--untracked-files=no", "--", ".") != "":
        return None  # not a git checkout (None), or one with uncommitted changes
    return git(repo_dir, "rev-parse", "HEAD")


def remove_empty_folders() -> None:
    """Remove the folders left without a file, deepest first (a bake holds no empty folder)."""
    for folder in sorted(Path().rglob("*"), key=lambda path: -len(path.parts)):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def record_answers_for_cruft() -> None:
    if "_commit" in ANSWERS or Path(".cruft.json").exists():
        return  # cruft is baking and writes its own state file
    repo_dir = ANSWERS.get("_repo_dir")
    commit = template_commit(repo_dir) if repo_dir else None
    if commit is None:
        return
    top = Path(git(repo_dir, "rev-parse", "--show-toplevel"))
    inner = Path(repo_dir).resolve().relative_to(top.resolve()).as_posix()
    template = git(repo_dir, "config", "--get", "remote.origin.url") or str(top)
    answers = {key: value for key, value in ANSWERS.items() if not key.startswith("_")}
    answers |= {"_template": template, "_commit": commit}
    state = {
        "template": template,
        "commit": commit,
        "checkout": ANSWERS.get("_checkout") or None,
        "context": {"cookiecutter": answers},
        "directory": None if inner == "." else inner,
    }
    text = json.dumps(state, ensure_ascii=False, indent=2, separators=(",", ": "))
    Path(".cruft.json").write_text(text + "\n", encoding="utf-8")


def main() -> None:
    if ANSWERS["license"] == "none":
        Path("LICENSE").unlink()
    remove_empty_folders()
    record_answers_for_cruft()


if __name__ == "__main__":
    main()
