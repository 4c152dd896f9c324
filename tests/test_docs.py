"""The documentation tells the truth: README's generated parts equal their sources (results/summary.csv, the
Makefile's help lines), their relative links resolve (every run command they show: tests/test_doc_commands.py),
and they speak to users (no development diary words)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from analysis.readme import blocks, config_groups, doc_blocks, render

REPO = Path(__file__).resolve().parents[1]
USER_DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "results" / "README.md"]


def test_docs_generated_parts_equal_their_sources():
    for name, parts in doc_blocks().items():
        text = (REPO / name).read_text()
        assert render(text, parts) == text, f"{name}: run python -m analysis.readme (make figures does)"


def test_a_new_config_option_or_group_reaches_the_list(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf)
    before = config_groups(conf)
    (conf / "method" / "mymethod.yaml").write_text("id: mymethod\n")
    (conf / "newgroup").mkdir()
    (conf / "newgroup" / "a.yaml").write_text("x: 1\n")
    after = config_groups(conf)
    assert "mymethod" not in before and " · mymethod" in after and "newgroup" in after
    assert "sft (default)" in after and "accelerate" not in after   # launch configs are not a group


# every package of the repository's code (pact's sub-packages found on disk, so a new one is checked too)
MODULE_PACKAGES = ("pact", *sorted(str(p.parent.relative_to(REPO)) for p in (REPO / "pact").glob("*/__init__.py")),
                   "baselines", "experiments", "experiments/diagnostics", "analysis")


def test_the_module_map_names_every_module():
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("**Where things live.**", 1)[1].split("```")[1]
    missing = [f"{pkg}/{f.name}" for pkg in MODULE_PACKAGES for f in sorted((REPO / pkg).glob("*.py"))
               if f.stem != "__init__" and not re.search(rf"\b{f.stem}\b", block)]
    missing += [f"{pkg}/" for pkg in MODULE_PACKAGES if pkg.count("/") and f"{pkg.rsplit('/', 1)[1]}/" not in block]
    assert not missing, f"docs/architecture.md's module map lacks {missing}"


def test_a_number_edited_by_hand_is_caught():
    text = (REPO / "README.md").read_text()
    edited = text.replace("| toy: SFT | 0.1 / 36.9", "| toy: SFT | 0.1 / 37.9", 1)
    assert edited != text and render(edited, blocks()) != edited
    slower = text.replace("(~75 min on 2 cores", "(~45 min on 2 cores", 1)
    assert slower != text and render(slower, blocks()) != slower  # a time category lives in the Makefile


# Words of a development diary: the history (dates of work, machines, what changed) belongs in the reproducibility log.
DIARY = re.compile(r"session|issue #|this machine|this environment|\blent\b|\bearlier\b|was cut|\breplaced\b|"
                   r"measured and|\bbefore,|not spent|\b20\d\d-[01]\d-[0-3]\d\b", re.I)
LOG = REPO / "docs" / "reproducibility.md"
README_MAX_LINES = 150   # the front door fits a few screens; details live in docs/


def diary_lines(text: str) -> list[str]:
    """The lines of a doc that speak of its making instead of to its user."""
    return [line for line in text.splitlines() if DIARY.search(line)]


def test_user_docs_name_no_sessions_or_issues():
    for path in USER_DOCS:
        hits = [line for line in path.read_text().splitlines() if re.search(r"session|issue #", line, re.I)]
        assert not hits, f"{path.relative_to(REPO)}: {hits[:3]}"


def test_user_docs_keep_no_diary():
    for path in USER_DOCS:
        if path != LOG:
            hits = diary_lines(path.read_text())
            assert not hits, f"{path.relative_to(REPO)} (history goes to docs/reproducibility.md): {hits[:3]}"


def test_the_diary_words_are_caught():
    for line in ("Measured on this machine.", "n was cut to 120", "the earlier run", "checked on 2026-12-05",
                 "Before, the copy stayed", "two recipes were measured and replaced", "no GPU has been lent"):
        assert diary_lines(line), line
    assert not diary_lines("the reference before fine-tuning; Lisa's rows; a replacement for")


def test_the_front_door_is_short_and_names_the_paper_and_its_code():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    first = text.split("\n\n")[1]   # the paragraph under the title
    assert "https://arxiv.org/abs/2603.07445" in first and "https://github.com/Glresearch1/PACT" in first
    assert "**Scope.**" in text.split("\n## ")[0]   # what ran, before any result


def test_make_commands_in_the_docs_name_real_targets():
    targets = set(re.findall(r"^([a-z0-9-]+):", (REPO / "Makefile").read_text(), re.M))
    for path in USER_DOCS:
        named = set(re.findall(r"(?:^|`)make ([a-z][a-z0-9-]*)", path.read_text(), re.M))   # commands, not prose
        assert named <= targets, f"{path.relative_to(REPO)} names missing make targets {sorted(named - targets)}"


def test_python_commands_in_the_docs_name_real_modules():
    """A moved or renamed entry point leaves no doc pointing at the old module (the log's commands included)."""
    import importlib.util

    for path in [*USER_DOCS, REPO / "Makefile"]:
        named = set(re.findall(r"-m ((?:experiments|analysis|pact|tests)(?:\.\w+)+)", path.read_text()))
        missing = sorted(m for m in named if importlib.util.find_spec(m) is None)
        assert not missing, f"{path.relative_to(REPO)} runs missing modules {missing}"


def test_relative_links_resolve():
    for path in USER_DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
            if "://" not in target:
                assert (path.parent / target).exists(), f"{path.relative_to(REPO)} links to a missing {target}"


def test_the_methods_table_names_every_method():
    text = (REPO / "docs" / "usage.md").read_text()
    table = text.split("## Methods", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z0-9_]+)`", table))
    missing = sorted(f.stem for f in (REPO / "conf" / "method").glob("*.yaml") if f.stem not in named)
    assert not missing, f"docs/usage.md's methods table lacks {missing}"


def test_the_sweep_table_is_each_methods_mean_in_the_sweeps_order():
    from types import SimpleNamespace

    import pandas as pd

    from analysis.readme import sweep_table

    rows = [{"experiment": "poison_ratio", "model": "toy", "task": "sentiment", "method": m, "poison_ratio": p,
             "seed": s, "harmful_score": hs + s, "refusal_rate": 50.0, "variant": None}
            for m, hs in (("vaccine", 10.0), ("sft", 90.0)) for p in (0.0, 0.1) for s in (0, 1)]
    rows.append({**rows[0], "method": "aligned", "poison_ratio": None})   # a reference row: no column of its own
    spec = SimpleNamespace(experiment="poison_ratio", model="toy", task="sentiment", ratios=[0.0, 0.05, 0.1],
                           metrics=["harmful_score", "refusal_rate"])
    lines = sweep_table(pd.DataFrame(rows), spec).splitlines()
    assert lines[0] == "| method | p = 0 | p = 0.05 | p = 0.1 |"
    assert lines[2] == "| sft | 90.5 / 50.0 |  | 90.5 / 50.0 |"   # sft comes first in poison_ratio's sweep
    assert lines[3].startswith("| vaccine | 10.5 / 50.0 |") and len(lines) == 4
