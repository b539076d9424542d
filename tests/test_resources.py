"""Recipes, export profiles and bench suites ship inside the package (issue 15, item 19).

One copy: the repository's ``training/``, ``export/`` and ``bench/`` YAML, reached through the
package's ``recipes``/``profiles``/``suites`` folders with importlib.resources; the wheel holds
exactly those files (slow test: builds it).  ``--recipe``, ``--profile`` and ``--suite`` take
bare names.  CI (``.ci/run``) installs the wheel into a fresh venv outside the checkout and runs
a training job from there.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cityseg_deploy import resources
from cityseg_deploy.bench import suite as suite_mod
from cityseg_deploy.cli import run
from cityseg_deploy.errors import CitysegError

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"recipe": "training", "profile": "export", "suite": "bench"}


@pytest.mark.parametrize("kind, folder", FOLDERS.items())
def test_every_repo_yaml_is_shipped_under_its_bare_name(kind, folder):
    repo_files = {p.stem: p for p in (REPO / folder).glob("*.yaml")}
    assert repo_files, folder
    shipped = resources.available(kind)
    assert set(shipped) == set(repo_files)
    for name, path in shipped.items():
        assert path.resolve() == repo_files[name].resolve()  # one copy, not two
        assert resources.resolve(kind, name) == path == resources.resolve(kind, f"{name}.yaml")


def test_unknown_names_list_what_exists(tmp_path):
    with pytest.raises(CitysegError, match=r"--profile 'smok': no such file or profile name; .*smoke"):
        resources.resolve("profile", "smok")
    with pytest.raises(CitysegError, match=r"--suite 'x/cpu_backends': no such file"):
        resources.resolve("suite", "x/cpu_backends")  # a path that does not exist is not a name
    (tmp_path / "own.yaml").write_text("{}")
    assert resources.resolve("profile", tmp_path / "own.yaml") == tmp_path / "own.yaml"


def test_profile_takes_a_bare_name_like_recipe(tmp_path, capsys):
    # The profile is read before the model: a bare name gets as far as the missing checkpoint.
    assert run(["export", str(tmp_path / "nope.pt"), "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "nope.pt" in err and "--profile" not in err
    assert run(["export", str(tmp_path / "nope.pt"), "--profile", "smok"]) == 2
    assert "one of: cpu, edge, smoke, tensorrt" in capsys.readouterr().err


def test_suite_bare_name_and_where_its_results_go(monkeypatch):
    suite = suite_mod.load_suite("cpu_backends")
    assert suite["name"] == "cpu_backends"
    assert suite_mod._default_results(Path(suite["_file"])).resolve() == REPO / "bench" / "results"
    monkeypatch.setattr(resources, "is_shipped", lambda path: True)  # as from a wheel's site-packages
    assert suite_mod._default_results(Path(suite["_file"])) == Path("bench-results")


def test_a_checkout_is_not_shipped_but_site_packages_is():
    assert not resources.is_shipped(resources.available("suite")["cpu_backends"])
    assert resources.is_shipped(Path(resources.__file__))


@pytest.mark.slow
def test_wheel_holds_exactly_the_repo_yaml(tmp_path):
    # Built from a copy (links kept as links), so the in-tree build/ folder lands in tmp_path.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", ".hypothesis", "__pycache__",
                                                  "results", "*.png"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(src)], check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for kind, folder in FOLDERS.items():
        package_folder = resources.KINDS[kind][0]
        shipped = {n.split("/")[-1] for n in names if n.startswith(f"cityseg_deploy/{package_folder}/")}
        assert shipped == {p.name for p in (REPO / folder).glob("*.yaml")}, kind
    assert not [n for n in names if n.startswith("cityseg_deploy/suites/") and not n.endswith(".yaml")]
