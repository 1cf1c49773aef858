"""Every place that says how to install torch gives the same line per platform.

A bare `pip install torch` takes the newest release and, on Linux, its multi-GB CUDA build, so
each place names one command per platform, pinned to the release the slow tests install
(test_baked_project_suite.TORCH): the baked README's Quick start, the baked pyproject.toml's
comment, the baked CI workflow and this template's README.
"""

import re

import pytest
import yaml
from conftest import TEMPLATE_ROOT, bake
from test_baked_project_suite import TORCH

COMMANDS = {
    "Linux, CPU only": f"pip install {TORCH} --index-url https://download.pytorch.org/whl/cpu",
    "Linux, NVIDIA GPU": "python scripts/install_gpu.py",
    "macOS": f"pip install {TORCH}",
}
# A command that installs torch: a pip install naming torch, or the GPU stack's script.
INSTALLS_TORCH = re.compile(r"pip install [^#]*\btorch\b|install_gpu\.py")


@pytest.fixture(scope="module")
def project(cookies_session, template):
    return bake(cookies_session, template)


def section(text: str, heading: str) -> str:
    """A Markdown section: its heading's line up to the next heading outside a code block."""
    lines = text[text.index(heading) :].splitlines()
    in_code = False
    for number, line in enumerate(lines[1:], start=1):
        in_code ^= line.startswith("```")
        if not in_code and line.startswith("#"):
            return "\n".join(lines[:number])
    return "\n".join(lines)


def install_lines(text: str) -> list[str]:
    """Lines that install torch, commands or comments, without a leading `#` or blanks."""
    lines = (line.strip().lstrip("#").strip() for line in text.splitlines())
    return [line for line in lines if INSTALLS_TORCH.search(line)]


def assert_one_command_per_platform(text: str, where: str) -> None:
    lines = install_lines(text)
    for platform, command in COMMANDS.items():
        stating = [line for line in lines if platform in line]
        assert len(stating) == 1, f"{where}: no single line for {platform!r} in {lines}"
        assert command in stating[0], f"{where}, {platform}: {stating[0]!r} is not {command!r}"
    for line in lines:  # nothing else installs torch, pinned otherwise or not at all
        assert any(command in line for command in COMMANDS.values()), f"{where}: {line!r}"


def test_the_pinned_release_is_the_one_the_slow_tests_install():
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", TORCH)


def test_baked_readme_quick_start_gives_one_command_per_platform(project):
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert_one_command_per_platform(section(readme, "## Quick start"), "README Quick start")


def test_baked_pyproject_comment_gives_one_command_per_platform(project):
    pyproject = (project / "pyproject.toml").read_text(encoding="utf-8")
    comments = "\n".join(line for line in pyproject.splitlines() if line.startswith("#"))
    assert_one_command_per_platform(comments, "pyproject.toml")


def test_template_readme_gives_one_command_per_platform():
    readme = (TEMPLATE_ROOT / "README.md").read_text(encoding="utf-8")
    assert_one_command_per_platform(section(readme, "## Making your own project"), "README")


def test_baked_ci_installs_the_linux_cpu_command(project):
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text(encoding="utf-8"))
    runs = [step["run"] for step in workflow["jobs"]["test"]["steps"] if "run" in step]
    installs = [run for run in runs if INSTALLS_TORCH.search(run)]
    assert installs == [COMMANDS["Linux, CPU only"]]
