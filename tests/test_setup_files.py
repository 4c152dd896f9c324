"""The install files tell the truth: the Python floor is the one the pins' own metadata sets, environment.yml holds
the same pins and takes torch's CPU build, and CITATION.cff cites the paper as the README's BibTeX does."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _pins() -> list[Requirement]:
    project = _project()
    return [Requirement(r) for r in (*project["dependencies"], *project["optional-dependencies"]["dev"])]


def python_floor(requires: list[str | None]) -> Version:
    """The lowest Python every ``Requires-Python`` accepts: the largest of their ``>=`` bounds."""
    bounds = [Version(s.version) for r in requires if r for s in SpecifierSet(r) if s.operator == ">="]
    return max(bounds)


def test_python_floor_is_the_one_the_pinned_packages_require():
    requires = []
    for req in (*_pins(), Requirement("numpy")):   # numpy: pandas' and torch's, the one with the highest floor
        dist = importlib.metadata.distribution(req.name)
        assert req.specifier.contains(dist.version), f"{req}: {dist.version} installed (run make setup)"
        requires.append(dist.metadata.get("Requires-Python"))
    floor = python_floor(requires)
    major_minor = f"{floor.major}.{floor.minor}"
    assert _project()["requires-python"] == f">={major_minor}"
    assert f"Python {major_minor}+" in (REPO / "README.md").read_text()
    assert f"python={major_minor}" in yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]


def test_python_floor_reads_the_largest_lower_bound():
    assert python_floor([">=3.10", None, ">=3.11.0", ">=3.6,<4"]) == Version("3.11")


def test_environment_yml_has_the_pins_and_takes_torch_from_the_cpu_index():
    deps = yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert pip[0] == CPU_INDEX, "torch's CPU build: the CPU index must come with the pins"
    assert [str(Requirement(r)) for r in pip[1:]] == [str(r) for r in _pins()]
    # the CPU index's wheel satisfies the pin and sorts above PyPI's same version (PEP 440 local label)
    torch = next(r for r in _pins() if r.name == "torch")
    pinned = next(iter(torch.specifier)).version
    assert torch.specifier.contains(f"{pinned}+cpu") and Version(f"{pinned}+cpu") > Version(pinned)


def test_citation_cff_cites_the_paper_as_the_readme_bibtex():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())["preferred-citation"]
    bibtex = re.search(r"```bibtex\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    authors = re.search(r"author\s*=\s*\{(.*)\}", bibtex).group(1).split(" and ")
    assert authors == [f"{a['family-names']}, {a['given-names']}" for a in cff["authors"]]
    assert re.search(r"title\s*=\s*\{(.*)\}", bibtex).group(1) == cff["title"]
    assert "arXiv:2603.07445" in cff["journal"] and "2603.07445" in bibtex


def test_make_data_takes_git_dirs_one_per_line():
    """`GIT_DIRS="$(ls -d <dirs>)"` gives one directory per line: every one reaches --git-dir (a newline in a
    recipe would end the command after the first)."""
    done = subprocess.run(["make", "-n", "--no-print-directory", "data", "GIT_DIRS=/a/repo\n/b/repo\n"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    fetch = [line for line in done.stdout.splitlines() if "experiments.fetch_data" in line]
    assert len(fetch) == 1 and fetch[0].endswith("--kind git --git-dir /a/repo /b/repo"), done.stdout
