"""Tables and figures on a synthetic summary.csv: formatting, mean/std, best marks, missing cells."""

import pandas as pd

from analysis.report import mean_std
from analysis.tables import aggregate, paper_table, write_paper_tables


def _summary():
    rows = []
    for method, hs in (("sft", [90.0, 100.0]), ("pact", [10.0, 30.0])):
        for seed, h in enumerate(hs):
            for p in (0.0, 0.1):
                rows.append({"experiment": "e", "model": "toy", "method": method, "task": "sentiment",
                             "poison_ratio": p, "seed": seed, "harmful_score": h if p else 0.0,
                             "refusal_rate": 100 - h, "other_rate": 0.0, "finetune_accuracy": 95.0 + seed,
                             "helpfulness": 80.0})
    rows.append({"experiment": "e", "model": "toy", "method": "aligned", "task": "sentiment", "poison_ratio": None,
                 "seed": 0, "harmful_score": 1.0, "refusal_rate": 99.0, "other_rate": 0.0,
                 "finetune_accuracy": 70.0, "helpfulness": 100.0})
    df = pd.DataFrame(rows)
    # a missing cell: lisa ran only at p = 0
    df = pd.concat([df, pd.DataFrame([{**rows[0], "method": "lisa", "poison_ratio": 0.0, "harmful_score": 5.0}])])
    return df


def test_mean_std_and_missing():
    assert mean_std(pd.Series([1.0, 3.0])) == "2.0 ± 1.4"
    assert mean_std(pd.Series([2.0])) == "2.0"
    assert mean_std(pd.Series([None], dtype=float)) == "–"


def test_paper_table_marks_best_and_keeps_missing_cells_missing():
    md = paper_table(_summary(), fmt="md")
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines()[2:]}
    assert set(lines) == {"sft", "pact", "lisa"}  # reference rows are not methods
    assert "**20.0 ± 14.1**" in lines["pact"]  # lowest HS at p = 0.1 is pact's mean of 10 and 30
    assert "95.0 ± 7.1" in lines["sft"]
    assert lines["lisa"].count("–") == 4  # HS, Ref, Help, FA at p = 0.1: missing, not zero
    agg = aggregate(_summary())
    assert agg[(agg.method == "lisa") & (agg.poison_ratio == 0.1)].empty


def test_latex_and_csv_written(tmp_path):
    write_paper_tables(_summary(), tmp_path, "t")
    tex = (tmp_path / "t.tex").read_text()
    assert "\\toprule" in tex and "\\textbf{" in tex and "$\\pm$" in tex and "\\bottomrule" in tex
    csv = pd.read_csv(tmp_path / "t.csv")
    assert {"method", "poison_ratio", "metric", "mean", "std", "n"} <= set(csv.columns)
    assert (tmp_path / "t.md").read_text().startswith("HS = Harmful Score")


def test_report_writes_the_hs_vs_p_figure(tmp_path):
    import json

    from analysis.report import report

    runs = tmp_path / "runs" / "e"
    runs.mkdir(parents=True)
    for i, row in enumerate(_summary().to_dict("records")):
        row["poison_ratio"] = None if pd.isna(row["poison_ratio"]) else row["poison_ratio"]
        (runs / f"{i}.json").write_text(json.dumps(row))
    report(tmp_path / "runs", tmp_path / "out")
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "out" / "figures" / f"e_toy_sentiment_hs_vs_p{suffix}").stat().st_size > 1000
    assert (tmp_path / "out" / "tables" / "e_toy_sentiment_paper.tex").exists()
