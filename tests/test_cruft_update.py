"""A baked project records its answers and template commit, and `cruft update` keeps it current.

Each test makes its own git repository of the template (cruft clones templates with git)
and its own git repository of the project (cruft update applies a diff with git).
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import commit_all, copy_template, cruft, git, run

SLUG_DIR = "{{cookiecutter.project_slug}}"
USER_LINE = "# Written by the user after baking: an update must keep this line."
CHANGE_LINE = "# Added by a newer template: an update must bring this line."


@pytest.fixture
def template_repo(tmp_path: Path) -> Path:
    """The template as a git repository with one commit."""
    repo = copy_template(tmp_path / "template")
    git(repo, "init", "--quiet")
    commit_all(repo, "template v1")
    return repo


def change_template(repo: Path) -> str:
    """Commit a template change to the CI workflow and a new file; return the new commit."""
    workflow = repo / SLUG_DIR / ".github/workflows/ci.yml"
    workflow.write_text(CHANGE_LINE + "\n" + workflow.read_text(encoding="utf-8"), "utf-8")
    (repo / SLUG_DIR / "CHANGELOG.md").write_text(
        "# Changelog of {{ cookiecutter.project_name }}\n", encoding="utf-8"
    )
    return commit_all(repo, "template v2")


def edit_as_user(project: Path) -> None:
    """Make the project its own git repository and commit a user edit on top of the bake.

    The edit is at the end of the file whose start the template change edits.
    """
    git(project, "init", "--quiet")
    commit_all(project, "baked")
    workflow = project / ".github/workflows/ci.yml"
    workflow.write_text(workflow.read_text(encoding="utf-8") + USER_LINE + "\n", "utf-8")
    commit_all(project, "user edit")


def assert_updated(project: Path, new_commit: str) -> None:
    # The template changed the top of the file, the user its bottom: both must be there.
    workflow = (project / ".github/workflows/ci.yml").read_text(encoding="utf-8")
    assert workflow.startswith(CHANGE_LINE + "\n")
    assert workflow.endswith("\n" + USER_LINE + "\n")
    assert (project / "CHANGELOG.md").read_text(encoding="utf-8") == (
        "# Changelog of Mamba Project\n"
    )
    leftovers = [path.name for pattern in ("*.rej", "*.orig") for path in project.rglob(pattern)]
    assert leftovers == []
    conflicted = [
        path.relative_to(project).as_posix()
        for path in project.rglob("*")
        if path.is_file()
        and ".git" not in path.parts
        and "\n<<<<<<< " in "\n" + path.read_text(encoding="utf-8", errors="replace")
    ]
    assert conflicted == []
    assert json.loads((project / ".cruft.json").read_text())["commit"] == new_commit
    cruft("check", cwd=project)


def test_cruft_create_records_answers_and_commit(template_repo, tmp_path):
    out = tmp_path / "out"
    cruft("create", template_repo, "--no-input", "--output-dir", out, cwd=tmp_path)
    state = json.loads((out / "mamba-project" / ".cruft.json").read_text())
    assert state["commit"] == git(template_repo, "rev-parse", "HEAD")
    assert state["context"]["cookiecutter"]["package_name"] == "mamba_project"
    assert state["context"]["cookiecutter"]["modal_gpu"] == "A100-80GB"


def test_cruft_update_brings_template_change_and_keeps_user_edit(template_repo, tmp_path):
    out = tmp_path / "out"
    cruft(
        "create", template_repo, "--no-input", "--output-dir", out,
        "--extra-context", json.dumps({"license": "none", "task": "sequence_classification"}),
        cwd=tmp_path,
    )  # fmt: skip
    project = out / "mamba-project"
    edit_as_user(project)
    new_commit = change_template(template_repo)
    cruft("update", "--skip-apply-ask", cwd=project)
    assert_updated(project, new_commit)
    assert not (project / "LICENSE").exists()
    answers = json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]
    assert (answers["license"], answers["task"]) == ("none", "sequence_classification")


def test_plain_cookiecutter_bake_from_a_checkout_is_updatable_by_cruft(template_repo, tmp_path):
    """`cookiecutter gh:...` bakes from a clone; the post-generation hook records it for cruft."""
    out = tmp_path / "out"
    run(
        sys.executable, "-m", "cookiecutter", "--no-input", "--output-dir", out,
        template_repo, "author_name=Grace Hopper",
        cwd=tmp_path,
    )  # fmt: skip
    project = out / "mamba-project"
    state = json.loads((project / ".cruft.json").read_text())
    assert state["template"] == str(template_repo)
    assert state["commit"] == git(template_repo, "rev-parse", "HEAD")
    assert state["context"]["cookiecutter"]["author_name"] == "Grace Hopper"
    cruft("check", cwd=project)
    edit_as_user(project)
    new_commit = change_template(template_repo)
    cruft("update", "--skip-apply-ask", cwd=project)
    assert_updated(project, new_commit)


def test_bake_from_a_dirty_checkout_records_no_commit(template_repo, tmp_path):
    """An uncommitted template change has no commit to name, so nothing is recorded."""
    workflow = template_repo / SLUG_DIR / ".github/workflows/ci.yml"
    workflow.write_text(workflow.read_text(encoding="utf-8") + "# local edit\n", "utf-8")
    out = tmp_path / "out"
    run(sys.executable, "-m", "cookiecutter", "--no-input", "-o", out, template_repo, cwd=tmp_path)
    assert not (out / "mamba-project" / ".cruft.json").exists()
    shutil.rmtree(out)
