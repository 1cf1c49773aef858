"""Check the answers before cookiecutter writes a single file.

Every answer is data. Cookiecutter renders the JSON of all answers (`jsonify`) into the raw
string below, and JSON cannot end it early: inside a JSON string every quote and backslash
comes escaped by a backslash, which a raw string keeps as text, and JSON never puts three
quotes in a row. So quotes, backslashes and newlines in an answer cannot change this code.

A bad answer stops the bake with one line naming the field, the value and the rule;
cookiecutter then removes the project folder it had just created.
"""

import json
import keyword
import re
import sys

ANSWERS = json.loads(r"""{{ cookiecutter | jsonify }}""")

CHOICES = {
    "license": ["MIT", "Apache-2.0", "BSD-3-Clause", "none"],
    "python_version": ["3.12", "3.11"],
    "mamba_version": ["Mamba2", "Mamba1", "Mamba3"],
    "task": ["language_model", "sequence_classification"],
    "modal_gpu": ["A100-80GB", "H100", "H200", "B200", "A100-40GB", "L40S", "L4", "A10"],
}

# GPUs that Modal rents but the pinned kernel stack cannot train on, and why: cookiecutter.json's
# _unsupported_gpus, which the project's machinery/launch.py refuses in the same words; and one
# name the bake does not take.
UNSUPPORTED_GPUS = {**ANSWERS["_unsupported_gpus"], "A10G": "Modal calls this GPU A10"}

# Mamba-3's Triton kernels use Hopper's tensor memory accelerator: the GPUs they were run on.
MAMBA3_GPUS = ("H100", "H200")

# Import names the generated project (or what it installs) already uses. A package of the
# same name would hide the real one on sys.path, or be hidden by it.
DEPENDENCY_IMPORTS = {
    "causal_conv1d",
    "einops",
    "fsspec",
    "huggingface_hub",
    "jsonargparse",
    "lightning",
    "lightning_fabric",
    "lightning_utilities",
    "mamba_ssm",
    "modal",
    "numpy",
    "packaging",
    "pytest",
    "pytorch_lightning",
    "ruff",
    "selective_scan_cuda",
    "tensorboard",
    "torch",
    "torchmetrics",
    "transformers",
    "triton",
    "yaml",
}

# Distribution names of the same dependencies: a project published under one of these
# names would make pip treat it as that dependency.
DEPENDENCY_DISTRIBUTIONS = {
    "causal-conv1d",
    "einops",
    "jsonargparse",
    "lightning",
    "mamba-ssm",
    "modal",
    "numpy",
    "pytest",
    "pytorch-lightning",
    "ruff",
    "tensorboard",
    "torch",
    "torchmetrics",
    "transformers",
    "triton",
}

# PEP 508 distribution name, restricted to lower case so folder and name agree.
SLUG = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?")
PACKAGE = re.compile(r"[a-z][a-z0-9_]*")
EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def problems(answers: dict) -> list[tuple[str, str]]:
    """Return (field, rule) for every answer that breaks a rule, in prompt order."""
    found = []

    def rule(field: str, broken: bool, text: str) -> None:
        if broken:
            found.append((field, text))

    for field in ("project_name", "description", "author_name"):
        value = answers[field]
        rule(field, not value.strip(), "must not be empty")
        rule(field, bool(CONTROL.search(value)), "must be one line without control characters")

    slug = answers["project_slug"]
    normalized = re.sub(r"[-_.]+", "-", slug)
    rule(
        "project_slug",
        not SLUG.fullmatch(slug),
        "must be lower-case letters, digits, '-', '_' or '.', starting and ending with a letter "
        "or digit (it is the folder name and the distribution name)",
    )
    rule(
        "project_slug",
        normalized in DEPENDENCY_DISTRIBUTIONS,
        "must not be the distribution name of a dependency (pip would confuse the two); "
        f"answer another, e.g. project_slug={normalized}-project",
    )

    package = answers["package_name"]
    rule(
        "package_name",
        not PACKAGE.fullmatch(package),
        "must be a Python identifier of lower-case ASCII letters, digits and '_', "
        "starting with a letter",
    )
    other = f"; answer another, e.g. package_name={package}_project"
    rule("package_name", keyword.iskeyword(package), "must not be a Python keyword" + other)
    rule(
        "package_name",
        package in sys.stdlib_module_names,
        "must not shadow a standard-library module" + other,
    )
    rule(
        "package_name",
        package in DEPENDENCY_IMPORTS,
        "must not shadow a dependency of the project" + other,
    )

    rule(
        "author_email",
        not EMAIL.fullmatch(answers["author_email"]),
        "must look like name@example.com",
    )

    for field, options in CHOICES.items():
        value = answers[field]
        if field == "modal_gpu" and value in UNSUPPORTED_GPUS:
            rule(field, True, f"is not supported: {UNSUPPORTED_GPUS[value]}")
        else:
            rule(field, value not in options, f"must be one of {', '.join(options)}")
    rule(
        "modal_gpu",
        answers["mamba_version"] == "Mamba3" and answers["modal_gpu"] not in MAMBA3_GPUS,
        "cannot train mamba_version=Mamba3: its Triton kernels need a Hopper GPU; "
        f"answer modal_gpu={' or '.join(MAMBA3_GPUS)}",
    )
    return found


def main() -> int:
    found = problems(ANSWERS)
    if not found:
        return 0
    field, text = found[0]
    print(f"error: {field} {ANSWERS[field]!r} {text}.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
