"""The pre-generation hook: every rule rejects its bad answer, and answers stay data."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import CHOICES, COOKIECUTTER_JSON, DEFAULTS, bake
from cookiecutter import prompt
from cookiecutter.environment import StrictEnvironment
from cookiecutter.exceptions import FailedHookException
from cookiecutter.generate import generate_context
from cookiecutter.main import cookiecutter

HOOKS = Path(__file__).resolve().parents[1] / "hooks"

# (answers over the defaults, field named in the message, words of the rule)
REJECTED = {
    "package_name_that_is_not_an_identifier": (
        {"package_name": "2fast"},
        "package_name",
        "must be a Python identifier",
    ),
    "package_name_with_a_dash": ({"package_name": "my-model"}, "package_name", "identifier"),
    "package_name_with_capitals": ({"package_name": "MyModel"}, "package_name", "lower-case"),
    "package_name_that_is_not_ascii": ({"package_name": "mambá"}, "package_name", "ASCII"),
    "package_name_that_is_a_keyword": (
        {"package_name": "lambda"},
        "package_name",
        "must not be a Python keyword",
    ),
    "package_name_that_shadows_stdlib": (
        {"package_name": "json"},
        "package_name",
        "must not shadow a standard-library module",
    ),
    "package_name_that_shadows_stdlib_tokenize": (
        {"package_name": "tokenize"},
        "package_name",
        "standard-library",
    ),
    "package_name_that_shadows_torch": (
        {"package_name": "torch"},
        "package_name",
        "must not shadow a dependency",
    ),
    "package_name_that_shadows_mamba_ssm": (
        {"package_name": "mamba_ssm"},
        "package_name",
        "must not shadow a dependency",
    ),
    "package_name_that_shadows_lightning": (
        {"package_name": "lightning"},
        "package_name",
        "must not shadow a dependency",
    ),
    "package_name_that_shadows_modal": (
        {"package_name": "modal"},
        "package_name",
        "must not shadow a dependency",
    ),
    "package_name_that_shadows_causal_conv1d": (
        {"package_name": "causal_conv1d"},
        "package_name",
        "dependency",
    ),
    "package_name_that_shadows_triton": ({"package_name": "triton"}, "package_name", "dependency"),
    "package_name_that_shadows_einops": ({"package_name": "einops"}, "package_name", "dependency"),
    "package_name_that_shadows_numpy": ({"package_name": "numpy"}, "package_name", "dependency"),
    "slug_with_a_space": ({"project_slug": "mamba project"}, "project_slug", "folder name"),
    "mamba3_on_an_a100": (
        {"mamba_version": "Mamba3", "modal_gpu": "A100-80GB"},
        "modal_gpu",
        "its Triton kernels need a Hopper GPU; answer modal_gpu=H100 or H200",
    ),
    "slug_with_capitals": ({"project_slug": "Mamba-Project"}, "project_slug", "lower-case"),
    "slug_that_starts_with_a_dash": ({"project_slug": "-mamba"}, "project_slug", "starting"),
    "slug_that_ends_with_a_dot": ({"project_slug": "mamba."}, "project_slug", "ending"),
    "slug_with_a_quote": ({"project_slug": 'mamba"x'}, "project_slug", "distribution name"),
    "slug_that_is_a_dependency_distribution": (
        {"project_slug": "mamba-ssm", "package_name": "my_mamba"},
        "project_slug",
        "distribution name of a dependency",
    ),
    "slug_that_normalizes_to_a_dependency": (
        {"project_slug": "causal_conv1d", "package_name": "my_conv"},
        "project_slug",
        "dependency",
    ),
    "email_without_at": ({"author_email": "you.example.com"}, "author_email", "name@example.com"),
    "email_without_domain_dot": ({"author_email": "you@localhost"}, "author_email", "@"),
    "email_with_a_quote": ({"author_email": 'y"ou@example.com'}, "author_email", "@"),
    "email_with_a_space": ({"author_email": "you @example.com"}, "author_email", "@"),
    "empty_email": ({"author_email": ""}, "author_email", "name@example.com"),
    "empty_project_name": (
        {"project_name": "   ", "project_slug": "blank"},
        "project_name",
        "must not be empty",
    ),
    "empty_author_name": ({"author_name": ""}, "author_name", "must not be empty"),
    "description_on_two_lines": (
        {"description": "first line\nsecond line"},
        "description",
        "one line",
    ),
    "project_name_with_a_tab": ({"project_name": "Mamba\tModel"}, "project_name", "one line"),
    "author_name_with_a_bell": ({"author_name": "Ann\x07"}, "author_name", "control characters"),
    "empty_description": ({"description": " "}, "description", "must not be empty"),
    "package_name_starting_with_underscore": (
        {"package_name": "_mamba"},
        "package_name",
        "starting with a letter",
    ),
    "empty_package_name": ({"package_name": ""}, "package_name", "must be a Python identifier"),
    "package_name_that_shadows_stdlib_os": (
        {"package_name": "os"},
        "package_name",
        "standard-library",
    ),
    "package_name_that_shadows_transformers": (
        {"package_name": "transformers"},
        "package_name",
        "package_name=transformers_project",
    ),
    "slug_with_an_accent": ({"project_slug": "café"}, "project_slug", "lower-case letters"),
    "slug_that_is_torch": (
        {"project_slug": "torch", "package_name": "my_torch"},
        "project_slug",
        "project_slug=torch-project",
    ),
}


def output_left_behind(output_root: Path) -> list[str]:
    """Everything under pytest-cookies' output folders (bake00, bake01, ...) themselves."""
    return sorted(
        str(path.relative_to(output_root))
        for bake_dir in output_root.iterdir()
        for path in bake_dir.rglob("*")
    )


@pytest.mark.parametrize("case", REJECTED.values(), ids=REJECTED.keys())
def test_rejects_bad_answer_with_one_line_and_leaves_no_folder(
    cookies, template, tmp_path, capfd, case
):
    answers, field, rule = case
    result = cookies.bake(extra_context=answers, template=str(template))
    assert isinstance(result.exception, FailedHookException)
    errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    value = answers.get(field)
    assert errors[0].startswith(f"error: {field} {value!r} "), errors[0]
    assert rule in errors[0]
    assert output_left_behind(tmp_path / "cookies") == []


def test_rejects_slug_with_a_path_separator(cookies, template, tmp_path, capfd):
    """Cookiecutter creates the parent folder of `a/b` before any hook runs.

    The hook rejects the slug and cookiecutter removes the project folder; the empty parent
    it made itself is all that remains (see docs/design_decisions.md).
    """
    result = cookies.bake(extra_context={"project_slug": "mamba/project"}, template=str(template))
    assert isinstance(result.exception, FailedHookException)
    assert "error: project_slug 'mamba/project' must be lower-case" in capfd.readouterr().err
    assert output_left_behind(tmp_path / "cookies") == ["bake00/mamba"]


def replay(template: Path, tmp_path: Path, **answers: str) -> None:
    """Bake from a replay file, which skips cookiecutter's own check of the choices."""
    context = {
        "cookiecutter": {
            key: (value if not isinstance(value, list) else value[0])
            for key, value in json.loads((template / "cookiecutter.json").read_text()).items()
            if not key.startswith("_")
        }
    }
    context["cookiecutter"] |= {
        "project_slug": "mamba-project",
        "package_name": "mamba_project",
        **answers,
    }
    context["_cookiecutter"] = dict(context["cookiecutter"])
    replay_file = tmp_path / "answers.json"
    replay_file.write_text(json.dumps(context), encoding="utf-8")
    cookiecutter(str(template), replay=str(replay_file), output_dir=str(tmp_path / "out"))


def test_rejects_t4_from_a_replay_file_and_says_why(template, tmp_path, capfd):
    with pytest.raises(FailedHookException):
        replay(template, tmp_path, modal_gpu="T4")
    err = capfd.readouterr().err
    assert "error: modal_gpu 'T4' is not supported: T4 is sm_75, which has no bfloat16" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_rejects_a10g_from_a_replay_file_and_names_modals_spelling(template, tmp_path, capfd):
    with pytest.raises(FailedHookException):
        replay(template, tmp_path, modal_gpu="A10G")
    assert "error: modal_gpu 'A10G' is not supported: Modal calls this GPU A10" in (
        capfd.readouterr().err
    )
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("field", sorted(CHOICES))
def test_rejects_a_choice_the_template_does_not_offer(template, tmp_path, capfd, field):
    with pytest.raises(FailedHookException):
        replay(template, tmp_path, **{field: "something-else"})
    err = capfd.readouterr().err
    options = ", ".join(CHOICES[field])
    assert f"error: {field} 'something-else' must be one of {options}." in err
    assert list((tmp_path / "out").iterdir()) == []


def test_hook_choices_match_cookiecutter_json():
    """The hook keeps its own copy of the options (under cruft it cannot read the template)."""
    source = render_hook("pre_gen_project.py", DEFAULTS)
    namespace: dict = {}
    exec(compile(source, "pre_gen_project.py", "exec"), namespace)
    assert namespace["CHOICES"] == CHOICES


NASTY = {
    "project_name": 'Ünïcode "Quoted" O\'Brien \\ back\\slash: [x] {y} # hash',
    "project_slug": "nasty-project",
    "package_name": "nasty_project",
    "description": (
        "Says \"hi\" \\ to 'everyone': {a: [b, c]} # not a comment; tabs\\t and \\n stay text, "
        "\"\"\" and ''' too, ünïcode ✓, %s ${HOME} & <b>"
    ),
    "author_name": 'Zoë "Z" O\'Hara \\ Jr.: - [bot]',
    "author_email": "zoe.o'hara+tag@example.co.uk",
}


def render_hook(name: str, answers: dict[str, str]) -> str:
    private = {k: v for k, v in COOKIECUTTER_JSON.items() if k.startswith("_")}
    context = {"cookiecutter": {**private, **DEFAULTS, **answers, "_template": "x"}}
    env = StrictEnvironment(context=context, keep_trailing_newline=True)
    return env.from_string((HOOKS / name).read_text(encoding="utf-8")).render(**context)


@pytest.mark.parametrize("name", ["pre_gen_project.py", "post_gen_project.py"])
def test_hooks_read_answers_as_data(name):
    source = render_hook(name, NASTY)
    namespace: dict = {}
    exec(compile(source, name, "exec"), namespace)
    assert {field: namespace["ANSWERS"][field] for field in NASTY} == NASTY


def test_hooks_are_ruff_clean():
    """The hooks are plain Python before rendering, so they are linted like any code."""
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [sys.executable, "-m", "ruff", *command, "--no-cache", "hooks", "tests"],
            cwd=HOOKS.parent,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_nasty_free_text_bakes_into_parseable_files(cookies, template):
    project = bake(cookies, template, **NASTY)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["description"] == NASTY["description"]
    assert pyproject["project"]["authors"][0]["name"] == NASTY["author_name"]
    assert pyproject["project"]["authors"][0]["email"] == NASTY["author_email"]
    for path in [*project.rglob("*.yaml"), *project.rglob("*.yml")]:
        list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    for path in project.rglob("*.py"):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
    readme = (project / "README.md").read_text(encoding="utf-8")
    assert NASTY["project_name"] in readme
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "."],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# Project names a user may type, and the slug and package name derived from each.
PROJECT_NAMES = {
    "Mamba Project": ("mamba-project", "mamba_project"),
    "Café Models": ("cafe-models", "cafe_models"),
    "Tom's Mamba (v2)": ("tom-s-mamba-v2", "tom_s_mamba_v2"),
    "Über_Net 3.0": ("uber-net-3-0", "uber_net_3_0"),
    "  Spaced   Out  ": ("spaced-out", "spaced_out"),
    "R&D: Mamba/SSM [draft]": ("r-d-mamba-ssm-draft", "r_d_mamba_ssm_draft"),
    "Tom &amp; Jerry": ("tom-jerry", "tom_jerry"),
    "2048": ("2048", "mamba_2048"),
    "3D Mamba": ("3d-mamba", "mamba_3d_mamba"),
    "!!! ???": ("mamba-project", "mamba_project"),
    "🐍🐍": ("mamba-project", "mamba_project"),
    "Snake 🐍 Net": ("snake-net", "snake_net"),
    "深度学习": ("shen-du-xue-xi", "shen_du_xue_xi"),
    "Модель Мамба": ("model-mamba", "model_mamba"),
    "Ελληνικά": ("ellenika", "ellenika"),
    "العربية": ("l-rby", "l_rby"),
    "ünïcode.dots_and-dashes": ("unicode-dots-and-dashes", "unicode_dots_and_dashes"),
    "word " * 20: ("-".join(["word"] * 13), "_".join(["word"] * 13)),  # 64 characters at most
}


def derived_answers(template: Path, project_name: str) -> dict:
    """The answers cookiecutter derives with --no-input for `project_name`."""
    context = generate_context(
        context_file=str(template / "cookiecutter.json"),
        extra_context={"project_name": project_name},
    )
    return dict(prompt.prompt_for_config(context, no_input=True))


def hook_problems(answers: dict) -> list[tuple[str, str]]:
    namespace: dict = {}
    exec(compile(render_hook("pre_gen_project.py", DEFAULTS), "pre_gen", "exec"), namespace)
    return namespace["problems"](answers)


@pytest.mark.parametrize("name", PROJECT_NAMES, ids=range(len(PROJECT_NAMES)))
def test_any_project_name_derives_a_slug_and_package_that_the_hook_accepts(template, name):
    answers = derived_answers(template, name)
    assert (answers["project_slug"], answers["package_name"]) == PROJECT_NAMES[name]
    assert hook_problems(answers) == []


@pytest.mark.parametrize("name", ["Café Models", "Tom's Mamba (v2)", "2048"])
def test_project_name_with_punctuation_or_accents_bakes(cookies, template, name):
    slug, package = PROJECT_NAMES[name]
    project = bake(cookies, template, project_name=name)
    assert project.name == slug
    assert (project / "src" / package / "cli.py").is_file()
    assert name in (project / "README.md").read_text(encoding="utf-8")


def test_interactive_prompt_offers_the_derived_slug_and_package(template, monkeypatch):
    """The defaults shown after the project name are the valid derived ones."""
    offered = {}

    def answer(var_name, default_value, prompts=None, prefix=""):
        offered[var_name] = default_value
        return "Tom's Mamba (v2)" if var_name == "project_name" else default_value

    monkeypatch.setattr(prompt, "read_user_variable", answer)
    monkeypatch.setattr(prompt, "read_user_choice", lambda name, options, *a, **k: options[0])
    context = generate_context(context_file=str(template / "cookiecutter.json"))
    answers = prompt.prompt_for_config(context, no_input=False)
    assert offered["project_slug"] == answers["project_slug"] == "tom-s-mamba-v2"
    assert offered["package_name"] == answers["package_name"] == "tom_s_mamba_v2"


@pytest.mark.parametrize(
    "name, field, example",
    [
        ("Mamba SSM", "project_slug", "project_slug=mamba-ssm-project"),
        ("Lightning", "project_slug", "project_slug=lightning-project"),
        ("Tokenize", "package_name", "package_name=tokenize_project"),
        ("Lambda", "package_name", "package_name=lambda_project"),
    ],
)
def test_project_name_that_is_a_reserved_name_is_refused_with_an_alternative(
    template, name, field, example
):
    """A name that is a dependency, keyword or stdlib module is no default to bake silently.

    The derived answer breaks a rule the user must see; the message offers an answer that works.
    """
    answers = derived_answers(template, name)
    found = hook_problems(answers)
    assert found and found[0][0] == field and example in found[0][1]
    fixed = {**answers, field: example.split("=")[1]}
    if field == "project_slug":
        fixed["package_name"] = fixed["project_slug"].replace("-", "_")
    assert hook_problems(fixed) == []


@pytest.mark.parametrize(
    ("answer", "first", "last"),
    [
        (
            "package_name=torch",
            "error: package_name 'torch' must not shadow a dependency of the project; answer "
            "another, e.g. package_name=torch_project.",
            "Hook script failed (exit status: 1)",
        ),
        (
            "modal_gpu=T4",
            None,
            "ValueError: T4 provided for choice variable modal_gpu, but the choices are [",
        ),
    ],
    ids=["hook", "choice"],
)
def test_a_refused_answer_shows_what_the_readme_says(template, tmp_path, answer, first, last):
    """The README tells a user what a refused bake prints: our line first where the hook
    refuses, cookiecutter's own last line either way; and no folder is left."""
    done = subprocess.run(
        [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(tmp_path / "out"),
         str(template), answer],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode != 0
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    if first is not None:
        assert lines[0] == first and f"`{first}`" in readme
    assert lines[-1].startswith(last) and last.rstrip("[") in readme
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
