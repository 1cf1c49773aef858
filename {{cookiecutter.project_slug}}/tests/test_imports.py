"""A project of one task holds no code of the other: it neither ships nor imports any."""

import json
import subprocess
import sys

from conftest import PACKAGE, PROJECT
{% if cookiecutter.task == 'language_model' %}
# The classifier's modules (a classification bake of the template has them).
OTHER_TASK = ["classifier", "data.arrays", "data.series"]
OWN = "data.synthetic"  # a module of this project's own task, to show the walk reached it
{%- else %}
# The language model's modules (a language-model bake of the template has them).
OTHER_TASK = [
    "data.hub",
    "data.synthetic",
    "data.text",
    "evaluate",
    "generation",
    "machinery.formats",
    "machinery.hub",
    "model",
    "pretrained",
]
OWN = "data.series"  # a module of this project's own task, to show the walk reached it
{%- endif %}

# Imports every module of the package, as any use of it may, and lists what was loaded.
IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
    if not module.name.endswith(".__main__"):  # that one runs the command line
        importlib.import_module(module.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_every_module_loads_no_module_of_the_other_task():
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE, PACKAGE],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr  # an import of a module this project lacks fails
    loaded = set(json.loads(done.stdout))
    assert f"{PACKAGE}.cli" in loaded and f"{PACKAGE}.{OWN}" in loaded  # it walked them
    assert sorted(loaded & {f"{PACKAGE}.{name}" for name in OTHER_TASK}) == []


def test_the_package_ships_no_module_of_the_other_task():
    source = PROJECT / "src" / PACKAGE
    files = {name: source / f"{name.replace('.', '/')}.py" for name in OTHER_TASK}
    assert [name for name, path in files.items() if path.exists()] == []
