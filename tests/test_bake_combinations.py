"""Bake every combination of the options that shape the project and check each bake.

license, python_version, mamba_version and task change which files exist or what they say,
so their full product is baked (4 x 2 x 3 x 2 = 48 projects). modal_gpu only names the GPU
that Modal rents: `test_modal_gpu_only_substitutes_its_value` proves that, so each GPU is
baked once, with the other options at their defaults.
"""

import ast
import itertools
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import CHOICES, DEFAULTS, bake

SHAPING = ("license", "python_version", "mamba_version", "task")
COMBINATIONS = [
    dict(zip(SHAPING, values, strict=True))
    for values in itertools.product(*(CHOICES[name] for name in SHAPING))
]
for answers in COMBINATIONS:  # Mamba-3's kernels run on Hopper GPUs only (the hook's rule)
    if answers["mamba_version"] == "Mamba3":
        answers["modal_gpu"] = "H100"

# The project every bake contains, relative to its root. Keep in step with the template.
COMMON_FILES = {
    ".github/workflows/ci.yml",
    "README.md",
    "pyproject.toml",
    "configs/default.yaml",
    "docs/modal.md",
    "gpu_stack.toml",
    "modal_app.py",
    "scripts/install_gpu.py",
    "src/{pkg}/__init__.py",
    "src/{pkg}/__main__.py",
    "src/{pkg}/backbone.py",
    "src/{pkg}/cli.py",
    "src/{pkg}/commands.py",
    "src/{pkg}/curriculum.py",
    "src/{pkg}/data/__init__.py",
    "src/{pkg}/data/base.py",
    "src/{pkg}/loss.py",
    "src/{pkg}/loss_kernel.py",
    "src/{pkg}/machinery/__init__.py",
    "src/{pkg}/checkpoint.py",
    "src/{pkg}/machinery/devices.py",
    "src/{pkg}/machinery/errors.py",
    "src/{pkg}/machinery/graphs.py",
    "src/{pkg}/machinery/kernels.py",
    "src/{pkg}/machinery/launch.py",
    "src/{pkg}/machinery/progress.py",
    "src/{pkg}/machinery/runid.py",
    "src/{pkg}/machinery/runs.py",
    "src/{pkg}/mixers/__init__.py",
    "src/{pkg}/mixers/attention.py",
    "src/{pkg}/mixers/layers.py",
    "src/{pkg}/mixers/mamba1.py",
    "src/{pkg}/mixers/mamba2.py",
    "src/{pkg}/mixers/mamba3.py",
    "src/{pkg}/ops.py",
    "src/{pkg}/module.py",
    "src/{pkg}/scan.py",
    "tests/test_backbone.py",
    "tests/test_layers.py",
    "tests/test_commands.py",
    "tests/test_launch_gpus.py",
    "tests/test_layers_gpu.py",
    "tests/test_mamba3.py",
    "tests/test_mamba3_gpu.py",
    "tests/test_bad_inputs.py",
    "tests/test_data.py",
    "tests/test_ddp.py",
    "tests/test_gpu.py",
    "tests/test_graphs.py",
    "tests/test_launch.py",
    "tests/test_modal_app.py",
    "tests/test_scan.py",
    "tests/test_training.py",
    "tests/test_resume.py",
    "tests/test_extrapolate.py",
    "tests/conftest.py",
    "tests/test_memory.py",
    "tests/test_runs.py",
    "docs/design_decisions.md",
    "benchmarks/scan_speed.py",
    "benchmarks/demo_time.py",
    "tests/test_imports.py",
    ".gitignore",
}
# What a task's bake holds besides: a project holds no code of the other task.
TASK_FILES = {
    "language_model": {
        "src/{pkg}/evaluate.py",
        "src/{pkg}/generation.py",
        "src/{pkg}/machinery/hub.py",
        "src/{pkg}/model.py",
        "src/{pkg}/data/hub.py",
        "src/{pkg}/data/synthetic.py",
        "src/{pkg}/data/text.py",
        "src/{pkg}/pretrained.py",
        "src/{pkg}/machinery/formats.py",
        "tests/test_hub_offline.py",
        "tests/test_mamba3_checkpoints.py",
        "tests/test_h200_checkpoints.py",
        "tests/fixtures/h200_Mamba1/config.yaml",
        "tests/fixtures/h200_Mamba1/last.ckpt",
        "tests/fixtures/h200_Mamba2/config.yaml",
        "tests/fixtures/h200_Mamba2/last.ckpt",
        "tests/test_generation.py",
        "tests/test_hybrid.py",
        "tests/test_hybrid_gpu.py",
        "tests/test_generation_gpu.py",
        "tests/test_modal_generate.py",
        "tests/test_hub_data.py",
        "docs/evaluate.md",
        "benchmarks/generate_speed.py",
        "benchmarks/throughput.py",
        "benchmarks/scaling.py",
        "benchmarks/paper_tables.py",
        "configs/copying_paper.yaml",
        "configs/finetune.yaml",
        "configs/finetune_hub.yaml",
        "configs/hybrid.yaml",
        "configs/induction_heads.yaml",
        "configs/induction_heads_paper.yaml",
        "configs/text.yaml",
        "tests/test_evaluate.py",
        "tests/test_pretrained.py",
    },
    "sequence_classification": {
        "src/{pkg}/classifier.py",
        "src/{pkg}/data/arrays.py",
        "src/{pkg}/data/series.py",
        "configs/arrays.yaml",
    },
}


def expected_files(answers: dict[str, str]) -> set[str]:
    """The exact set of files a bake with `answers` must contain."""
    package = answers.get("package_name", "mamba_project")
    files = {path.format(pkg=package) for path in COMMON_FILES | TASK_FILES[answers["task"]]}
    if answers["license"] != "none":
        files.add("LICENSE")
    return files


def baked_files(project: Path) -> set[str]:
    return {path.relative_to(project).as_posix() for path in project.rglob("*") if path.is_file()}


def combination_id(answers: dict[str, str]) -> str:
    return "-".join(answers[name] for name in SHAPING)


@pytest.fixture(scope="module", params=COMBINATIONS, ids=combination_id)
def baked(request, cookies_session, template) -> tuple[dict[str, str], Path]:
    answers = request.param
    return answers, bake(cookies_session, template, **answers)


def test_bake_has_exactly_the_expected_files(baked):
    answers, project = baked
    assert project.name == "mamba-project"
    assert baked_files(project) == expected_files(answers)


def test_bake_has_no_empty_folder(baked):
    """A folder whose every file belongs to the other task (tests/fixtures/ for a classifier)
    is not left behind empty."""
    _, project = baked
    assert [p for p in project.rglob("*") if p.is_dir() and not any(p.iterdir())] == []


# `${{ ... }}` is GitHub Actions syntax that must reach the workflow file as written.
UNRENDERED = re.compile(r"(?<!\$)\{\{|\{%|\{#|cookiecutter\.[a-z_]")


def test_bake_leaves_nothing_unrendered(baked):
    _, project = baked
    leftovers = []
    for path in sorted(project.rglob("*")):
        assert "{{" not in path.name and "{%" not in path.name, path
        if path.is_file() and path.suffix != ".ckpt":  # binary fixtures are copied as-is
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if UNRENDERED.search(line):
                    leftovers.append(f"{path.relative_to(project)}:{number}: {line.strip()}")
    assert leftovers == []


def test_bake_parses_as_python_toml_and_yaml(baked):
    _, project = baked
    for path in project.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for path in project.rglob("*.toml"):
        tomllib.loads(path.read_text(encoding="utf-8"))
    for path in [*project.rglob("*.yaml"), *project.rglob("*.yml")]:
        list(yaml.safe_load_all(path.read_text(encoding="utf-8")))


def test_bake_is_ruff_clean(baked):
    _, project = baked
    for command in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command], cwd=project, capture_output=True, text=True
        )
        assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout}{done.stderr}"


def test_bake_records_the_options_in_pyproject_and_ci(baked):
    answers, project = baked
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text(encoding="utf-8"))
    setup_python = next(
        step for step in workflow["jobs"]["test"]["steps"] if "setup-python" in step.get("uses", "")
    )
    assert setup_python["with"]["python-version"] == answers["python_version"]
    assert pyproject["project"]["name"] == "mamba-project"
    # the code runs on 3.11 and newer; python_version picks the Modal image, CI and ruff target
    assert pyproject["project"]["requires-python"] == ">=3.11"
    if answers["license"] == "none":
        assert "license" not in pyproject["project"]
    else:
        assert answers["license"] in str(pyproject["project"]["license"])


def test_pyproject_holds_free_text_answers_as_typed(cookies, template):
    """Accents, quotes and backslashes reach pyproject.toml as plain TOML strings, readable
    in the file and equal to the answers once parsed."""
    answers = {
        "author_name": "Zoë O'Brien",
        "author_email": "zoe.obrien@example.com",
        "description": 'Mamba for "EEG" \\ séries, 100% local',
    }
    project = bake(cookies, template, **answers)
    text = (project / "pyproject.toml").read_text(encoding="utf-8")
    pyproject = tomllib.loads(text)["project"]
    assert pyproject["authors"] == [{"name": "Zoë O'Brien", "email": answers["author_email"]}]
    assert pyproject["description"] == answers["description"]
    assert "\\u00eb" not in text and "\\u0027" not in text  # written as typed, not escaped


@pytest.mark.parametrize("license_", CHOICES["license"])
def test_license_file_matches_the_answer(cookies, template, license_):
    project = bake(cookies, template, license=license_, author_name="Ada Lovelace")
    licence = project / "LICENSE"
    if license_ == "none":
        assert not licence.exists()
        return
    text = licence.read_text(encoding="utf-8")
    first_line = {"MIT": "MIT License", "BSD-3-Clause": "BSD 3-Clause License"}
    if license_ == "Apache-2.0":
        assert text.lstrip().startswith("Apache License\n")
        assert "Version 2.0, January 2004" in text
    else:
        assert text.startswith(first_line[license_] + "\n")
        assert "Ada Lovelace" in text.splitlines()[2]


def test_modal_gpu_only_substitutes_its_value(cookies, template):
    """Every other GPU bakes the default project with the GPU's name in place of the default's.

    Compared line by line: the same files, the same number of lines, and each line that
    differs becomes the default's line once the GPU name is swapped back.
    """
    default_gpu = DEFAULTS["modal_gpu"]
    reference = bake(cookies, template)
    reference_files = baked_files(reference)
    for gpu in CHOICES["modal_gpu"][1:]:
        project = bake(cookies, template, modal_gpu=gpu)
        assert baked_files(project) == reference_files, gpu
        changed = 0
        for name in sorted(reference_files):
            if (project / name).suffix == ".ckpt":  # binary fixtures: copied as-is
                assert (project / name).read_bytes() == (reference / name).read_bytes()
                continue
            ours = (project / name).read_text(encoding="utf-8").splitlines()
            theirs = (reference / name).read_text(encoding="utf-8").splitlines()
            assert len(ours) == len(theirs), f"{gpu}: {name} has another number of lines"
            for line, default_line in zip(ours, theirs, strict=True):
                if line != default_line:
                    changed += 1
                    assert line.replace(gpu, default_gpu) == default_line, f"{gpu}: {name}"
        assert changed > 0, f"{gpu} appears nowhere in the project"
