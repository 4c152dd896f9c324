"""The docs' prose numbers come from results/ files: value markers (analysis.docvalues) render from the files, a
number a file no longer gives is caught, and a measured-looking number outside a marker is caught by the lint.
Provenance (analysis.provenance): every results/ file has a row, and a command's changed files get theirs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from analysis import provenance
from analysis.docvalues import DocValueError, render_values, strip_values, unmarked_numbers
from analysis.readme import REPO, value_docs


@pytest.fixture
def results(tmp_path):
    rows = [{"experiment": "s", "method": m, "poison_ratio": p, "seed": seed, "variant": None, "hs": hs}
            for m, p, seed, hs in [("sft", 0.1, 0, 98.0), ("sft", 0.1, 1, 99.0), ("sft", 0.2, 0, 100.0),
                                   ("pact", 0.1, 0, 70.0), ("pact", 0.1, 1, 80.0), ("pact", 0.2, 0, 92.83)]]
    rows.append({"experiment": "s", "method": "pact", "poison_ratio": 0.1, "seed": 0, "variant": "x=1", "hs": 1.0})
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)
    (tmp_path / "stats.json").write_text(json.dumps({"split": {"train": 1000}, "names": ["a", "b"]}))
    (tmp_path / "bench.md").write_text("# t\n\n| method | step / SFT |\n|---|---|\n| SFT | 1.00x |\n"
                                       "| PACT, live | 1.46x |\n\ntext\n\n| a | b |\n|---|---|\n| 1 | – |\n")
    return tmp_path


def marker(spec: str, value: str = "?") -> str:
    return f"<!--= {spec} -->{value}<!--/-->"


def test_markers_read_means_spreads_ranges_and_other_sources(results):
    text = "\n".join([
        "<!--= with summary.csv: experiment=s variant= -->",
        marker("method=sft poison_ratio=0.1 :: hs"), marker("method=sft poison_ratio=0.1 :: hs std .2f"),
        marker("method=pact :: hs range by=poison_ratio"), marker("method=pact :: hs range–"),
        marker("method=sft,pact poison_ratio>0.1 :: hs max .2f"), marker("method=sft :: seed count"),
        marker("summary.csv: method=pact variant=x=1 :: hs one"), marker("method=sft poison_ratio=0.1 :: '100 - hs'"),
        marker("stats.json :: split.train"), marker("stats.json :: names.1"),
        marker('bench.md#1: method="PACT, live" :: "step / SFT" one .2f'), marker("bench.md#2: a=1 :: a one .0f"),
        marker("\"?not (method == 'sft' and poison_ratio == 0.1)\" :: hs min"),
        marker("poison_ratio=0.1 :: hs,seed range .0f"),
        marker("poison_ratio!=0.3 :: 'sft - pact' range by=poison_ratio pivot=method:hs .2f"),
        marker("poison_ratio=0.2 :: 'pact / sft * 100' pivot=method:hs .2f")])
    got = strip_values(render_values(text, results)).split("\n")[1:]
    assert got == ["98.5", "0.71", "75.0-92.8", "70.0–92.8", "100.00", "3", "1.0", "1.5", "1000", "b", "1.46", "1",
                   "70.0", "0-99", "7.17-23.50", "92.83"]


def test_a_number_the_file_no_longer_gives_is_rewritten_and_a_lost_row_is_an_error(results):
    text = "PACT is back at " + marker("summary.csv: method=pact poison_ratio=0.2 variant= :: hs", "92.7") + "%"
    assert strip_values(render_values(text, results)) == "PACT is back at 92.8%"   # the hand-typed 92.7 is gone
    with pytest.raises(DocValueError, match="no row of summary.csv"):
        render_values(marker("summary.csv: method=lisa :: hs"), results)
    with pytest.raises(DocValueError, match="rows hold"):   # `one` over rows that disagree
        render_values(marker("summary.csv: method=sft :: hs one"), results)
    with pytest.raises(DocValueError, match="no `with`"):
        render_values(marker("method=sft :: hs"), results)
    with pytest.raises(DocValueError, match="no column"):
        render_values(marker("summary.csv: metod=sft :: hs"), results)


def test_the_lint_finds_measured_numbers_outside_markers_and_spares_settings():
    bad = ["helpfulness is back at 92.7-100%.", "HS 98.5 ± 1.6 at p = 0.1", "| sft | 98.5 | 0.0 |",
           "the KL there is 0.33 nats"]
    for line in bad:
        assert unmarked_numbers(line), line
    fine = ["at p = 0.05 and 0.1, lr 1e-3, lambda = 0.5, torch 2.13.0, Python 3.11+, arXiv 2603.07445",
            "95% bootstrap intervals", "`98.5` in code", "HS " + marker("summary.csv: a=b :: hs", "98.5") + "%",
            "<!-- t:begin -->\n| a | 98.5 |\n<!-- t:end -->", "Llama-3.1-8B on SmolLM2-135M", "3 seeds, 128 rows"]
    for line in fine:
        assert not unmarked_numbers(line), line


def test_results_readme_writes_every_measured_number_through_a_marker():
    text = (REPO / "results" / "README.md").read_text()
    assert "<!--= " in text
    left = unmarked_numbers(text)
    assert not left, "results/README.md: numbers not read from a results file (analysis.docvalues):\n" + \
        "\n".join(left[:20])


def test_user_docs_write_every_measured_number_through_a_marker():
    """README.md and docs/ (not the reproducibility log, whose measurements carry their date, commit and machine):
    a measured-looking number is read from a results file, or the doc names a setting or points to the log."""
    docs = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "reproducibility.md")]
    left = [f"{p.relative_to(REPO)} {x}" for p in docs for x in unmarked_numbers(p.read_text())]
    assert not left, "numbers not read from a results file (analysis.docvalues):\n" + "\n".join(left[:20])


def test_every_value_marker_of_the_docs_equals_its_source():
    for name in value_docs():
        text = (REPO / name).read_text()
        assert render_values(text, REPO / "results") == text, f"{name}: run python -m analysis.readme"


def test_every_results_file_has_a_provenance_row_and_the_table_is_current():
    rows = provenance.read(REPO / "results")
    files = {p.relative_to(REPO / "results").as_posix() for p in (REPO / "results").rglob("*") if p.is_file()}
    assert files - set(rows["file"]) == {"README.md", "provenance.csv", "provenance.md"}
    assert set(rows["file"]) <= files
    assert (REPO / "results" / "provenance.md").read_text() == provenance.render(rows)
    assert set(rows["how"]) <= {"ran at", "committed in"} and rows["commit"].str.len().ge(7).all()


def test_a_command_gets_rows_for_the_files_whose_bytes_it_changed(tmp_path, monkeypatch):
    (tmp_path / "same.csv").write_text("a\n1\n")
    (tmp_path / "old.csv").write_text("a\n1\n")
    provenance.update(tmp_path, ["same.csv", "old.csv"], "reproduce", "", "1234567", how="committed in")
    monkeypatch.setenv(provenance.TARGET_ENV, "figures")
    with provenance.recording(tmp_path, "analysis.report", ["--out", str(tmp_path)]):
        (tmp_path / "same.csv").write_text("a\n1\n")   # rewritten, same bytes: keeps its row
        (tmp_path / "old.csv").write_text("a\n2\n")
        (tmp_path / "tables").mkdir()
        (tmp_path / "tables" / "new.md").write_text("x")
    rows = provenance.read(tmp_path).set_index("file")
    assert rows.loc["same.csv", "how"] == "committed in" and rows.loc["same.csv", "commit"] == "1234567"
    for f in ("old.csv", "tables/new.md"):
        assert rows.loc[f, "target"] == "figures" and rows.loc[f, "how"] == "ran at"
        assert rows.loc[f, "command"] == f"python -m analysis.report --out {tmp_path}"
        assert rows.loc[f, "commit"] == provenance.code_commit() != "unknown"
    assert (tmp_path / "provenance.md").read_text() == provenance.render(provenance.read(tmp_path))


def test_provenance_check_names_a_file_without_a_row(tmp_path):
    (tmp_path / "a.csv").write_text("a\n")
    provenance.update(tmp_path, ["a.csv"], "t", "", "1234567")
    provenance.main(["--folder", str(tmp_path), "--check"])
    (tmp_path / "b.csv").write_text("b\n")
    with pytest.raises(SystemExit, match="b.csv"):
        provenance.main(["--folder", str(tmp_path), "--check"])


def test_the_makefile_passes_its_target_to_every_python_command():
    makefile = (REPO / "Makefile").read_text()
    assert f"PY = {provenance.TARGET_ENV}=$@ " in makefile


def test_no_marker_begins_a_line_of_running_text():
    """A line that begins with an HTML comment is an HTML block to Markdown: inside a paragraph or list item it
    would cut the text in two, and a value marker there would show its line unformatted. Only a `with` marker may
    begin a line, alone on it, after a blank line or a heading."""
    for name in value_docs():
        lines = (REPO / name).read_text().split("\n")
        for i, line in enumerate(lines):
            if not line.lstrip().startswith("<!--="):
                continue
            before = lines[i - 1].strip() if i else ""
            alone = line.strip().startswith("<!--= with ") and line.strip().endswith("-->") and \
                line.count("<!--") == 1
            assert alone and (not before or before.startswith("#")), f"{name}:{i + 1}: {line[:80]}"
