"""The documentation tells the truth: README's generated parts equal their sources (results/summary.csv, the
Makefile's help lines), every `experiments.run` command the README and docs/ show composes and validates, their
relative links resolve, and they speak to users (no development diary words)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from analysis.readme import blocks, render
from pact.config import compose_config

REPO = Path(__file__).resolve().parents[1]
USER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "results" / "README.md"]


def test_readme_generated_parts_equal_their_sources():
    text = (REPO / "README.md").read_text()
    assert render(text, blocks()) == text, "run python -m analysis.readme (make figures does)"


def test_a_number_edited_by_hand_is_caught():
    text = (REPO / "README.md").read_text()
    edited = text.replace("| toy: SFT | 0.1 / 36.9", "| toy: SFT | 0.1 / 37.9", 1)
    assert edited != text and render(edited, blocks()) != edited
    slower = text.replace("(69 min on 2 cores", "(49 min on 2 cores", 1)
    assert slower != text and render(slower, blocks()) != slower  # a time category lives in the Makefile


def test_user_docs_name_no_sessions_or_issues():
    for path in USER_DOCS:
        hits = [line for line in path.read_text().splitlines() if re.search(r"session|issue #", line, re.I)]
        assert not hits, f"{path.relative_to(REPO)}: {hits[:3]}"


def test_relative_links_resolve():
    for path in USER_DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(REPO)} links to a missing {target}"


def documented_runs() -> list[tuple[str, list[str]]]:
    """(doc, overrides) of every `python -m experiments.run ...` line in the README's and docs' code blocks, with
    continuation lines joined; Hydra's own flags and options (-m, hydra.*, hydra/launcher) and placeholders left
    out: what composes the run's config."""
    out = []
    for path in USER_DOCS:
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0]
                if "-m experiments.run" not in line:
                    continue
                args = shlex.split(line.split("-m experiments.run", 1)[1])
                keep = [a for a in args if not a.startswith(("-", "hydra")) and "<" not in a and a != "..."]
                out.append((f"{path.relative_to(REPO)}: {line.strip()}", keep))
    return out


def test_every_documented_run_command_composes_and_validates():
    runs = documented_runs()
    assert len(runs) >= 10  # README and docs show a dozen or more
    for where, overrides in runs:
        first = [o.split(",")[0] if "=" in o and not o.split("=", 1)[1].startswith("[") else o for o in overrides]
        try:
            compose_config(first)  # a sweep's first value of each swept key
        except Exception as err:  # noqa: BLE001 - the message names the command
            pytest.fail(f"{where}: {type(err).__name__}: {err}")
