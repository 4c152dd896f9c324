"""The documentation tells the truth: README's generated parts equal their sources (results/summary.csv, the
Makefile's help lines), their relative links resolve (every run command they show: tests/test_doc_commands.py),
and they speak to users (no development diary words)."""

from __future__ import annotations

import re
from pathlib import Path

from analysis.readme import blocks, render

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
