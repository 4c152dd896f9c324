"""Tables and figures on a synthetic summary.csv: formatting, mean/std, best marks, missing cells."""

import math
from pathlib import Path

import pandas as pd
import pytest

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


def test_natural_key_orders_numbers_by_value():
    from analysis.report import natural_key

    labels = ["pact [top_k=100]", "pact [top_k=10]", "pact [top_k=25]", "pact", "lisa"]
    assert sorted(labels, key=natural_key) == ["lisa", "pact", "pact [top_k=10]", "pact [top_k=25]",
                                               "pact [top_k=100]"]


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


def _write_runs(tmp_path, rows, experiment):
    import json

    runs = tmp_path / "runs" / experiment
    runs.mkdir(parents=True)
    for i, row in enumerate(rows):
        row = {**row, "experiment": experiment}
        row["poison_ratio"] = None if pd.isna(row["poison_ratio"]) else row["poison_ratio"]
        (runs / f"{i}.json").write_text(json.dumps(row))
    return tmp_path / "runs"


def test_cross_task_study_gets_a_task_table_and_the_hs_vs_fa_figure(tmp_path):
    from analysis.report import report

    rows = []
    for task, fa in (("sentiment", 90.0), ("topic", 60.0)):
        for row in _summary().to_dict("records"):
            if row["poison_ratio"] == 0.1 or pd.isna(row["poison_ratio"]):
                rows.append({**row, "task": task, "finetune_accuracy": fa + row["seed"]})
    rows = [r for r in rows if not (r["task"] == "topic" and r["method"] == "pact")]  # a missing cell
    report(_write_runs(tmp_path, rows, "tasks"), tmp_path / "out")
    md = (tmp_path / "out" / "tables" / "tasks_toy_paper.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "sentiment HS" in header and "topic FA" in header and "p = " not in header
    pact = next(line for line in md.splitlines() if line.startswith("| pact"))
    assert pact.count("–") == 4 and "90.5 ± 0.7" in pact  # topic missing, sentiment FA mean of 90 and 91
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "out" / "figures" / f"tasks_toy_hs_vs_fa{suffix}").stat().st_size > 1000


def test_numeric_sweep_gets_an_ablation_curve_and_other_variants_do_not(tmp_path):
    from analysis.report import report, swept_key

    rows = []
    for lam, hs in ((0.0, 98.0), (1.0, 70.0), (5.0, 30.0)):
        for seed in (0, 1):
            rows.append({"model": "toy", "method": "pact", "task": "sentiment", "poison_ratio": 0.1, "seed": seed,
                         "harmful_score": hs + seed, "refusal_rate": 0.0, "other_rate": 100 - hs,
                         "finetune_accuracy": 100.0, "helpfulness": 0.0, "variant": f"method.lambda_kl={lam}"})
    df = pd.DataFrame(rows)
    assert swept_key(df) == "method.lambda_kl"
    assert swept_key(df.assign(variant="method.gate=off")) is None  # not numeric
    assert swept_key(df.assign(variant="method.lambda_kl=1.0,seed=2")) is None  # two axes
    assert swept_key(df.assign(variant="")) is None
    report(_write_runs(tmp_path, rows, "lam"), tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "lam_toy_sentiment_ablation.png").stat().st_size > 1000
    md = (tmp_path / "out" / "tables" / "lam_toy_sentiment_paper.md").read_text()
    assert "pact [method.lambda_kl=5.0] | **30.5 ± 0.7**" in md


def test_tables_regenerate_from_summary_csv_alone(tmp_path):
    """A fresh clone has results/summary.csv but no run records: the same tables come out of it."""
    from analysis.report import main, report

    rows = _summary().to_dict("records")
    for r in rows:
        r["harmful_score"] = r["harmful_score"] + 100 / 320 if r["method"] == "pact" else r["harmful_score"]
    runs = _write_runs(tmp_path, rows, "e")
    report(runs, tmp_path / "a")
    before = {p.name: p.read_text() for p in (tmp_path / "a" / "tables").iterdir()}
    summary_text = (tmp_path / "a" / "summary.csv").read_text()
    main(["--runs", str(tmp_path / "no_runs"), "--out", str(tmp_path / "a")])
    after = {p.name: p.read_text() for p in (tmp_path / "a" / "tables").iterdir()}
    assert after == before
    assert (tmp_path / "a" / "summary.csv").read_text() == summary_text  # not rewritten
    assert "0.3125" in summary_text  # 100/320 kept exactly, not rounded to 4 digits


def test_compare_matches_rows_by_identity_and_reports_every_differing_cell(tmp_path):
    from analysis.compare import compare, read_text_table

    full = _summary().assign(variant="")
    full.to_csv(tmp_path / "ref.csv", index=False, float_format="%.6g")
    part = full[full["poison_ratio"] == 0.1].copy()
    part.to_csv(tmp_path / "same.csv", index=False, float_format="%.6g")
    same = compare(read_text_table(tmp_path / "ref.csv"), read_text_table(tmp_path / "same.csv"))
    assert same["matched"] == 4 and not same["diffs"] and not same["missing"]
    part.loc[part.index[0], "harmful_score"] += 1e-4  # a change in the 6th significant digit is a difference
    part.loc[part.index[1], "method"] = "new"
    part.to_csv(tmp_path / "other.csv", index=False, float_format="%.6g")
    other = compare(read_text_table(tmp_path / "ref.csv"), read_text_table(tmp_path / "other.csv"))
    assert other["matched"] == 3 and len(other["missing"]) == 1
    assert [(d[1], d[2], d[3]) for d in other["diffs"]] == [("harmful_score", "90", "90.0001")]
    from analysis.compare import same

    assert same("0", "0.0") and same("", "") and not same("0", "") and not same("90", "90.0001")


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_report_keeps_summary_rows_of_experiments_without_records(tmp_path):
    """Records of one experiment rewrite that experiment's rows; the rows of experiments with no records here (a
    committed study this clone did not run) stay in summary.csv as they were, byte for byte."""
    from analysis.report import report

    rows = _summary().to_dict("records")
    report(_write_runs(tmp_path / "first", rows, "other"), tmp_path / "out")
    kept = (tmp_path / "out" / "summary.csv").read_text().splitlines()[1:]
    changed = [{**r, "harmful_score": 42.0} for r in rows]
    report(_write_runs(tmp_path / "second", changed, "e"), tmp_path / "out")
    df = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert set(df["experiment"]) == {"e", "other"}
    assert (df[df["experiment"] == "e"]["harmful_score"] == 42.0).all()
    lines = (tmp_path / "out" / "summary.csv").read_text().splitlines()[1:]
    assert set(kept) <= set(lines)
    report(_write_runs(tmp_path / "third", rows, "other"), tmp_path / "out")  # records replace kept rows
    df = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(df) == 2 * len(rows) and (df[df["experiment"] == "other"]["harmful_score"] != 42.0).any()


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_a_new_study_with_other_columns_adds_its_lines_and_changes_no_other(tmp_path):
    """A study whose records lack a metric (None: real data has no helpfulness judge) and add one (a benchmark's
    column): summary.csv gains its lines, and every line already there, the header's columns included, stays."""
    from analysis.report import report

    rows = [{**r, "dtype": "float32", "judge": "oracle"} for r in _summary().to_dict("records")]
    report(_write_runs(tmp_path / "first", rows, "toy"), tmp_path / "out")
    before = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    # no helpfulness at all, a new column, and the other columns in another order
    real = [{"harmful_score.harmbench": 12.5, "judge": "keyword_qi",
             **{k: v for k, v in r.items() if k not in ("helpfulness", "judge")}} for r in rows[:3]]
    report(_write_runs(tmp_path / "second", real, "real"), tmp_path / "out")
    after = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert after[0] == before[0] + ",harmful_score.harmbench"
    assert [line + "," for line in before[1:]] == [line for line in after if line.startswith("toy,")]
    assert len(after) == len(before) + 3


def test_a_toy_table_shows_utility_columns_only_where_its_runs_measured_them(tmp_path):
    """summary.csv gains the utility columns from one study (utility=assistant); another study's table, whose runs
    did not measure them, keeps its own columns and shows no empty utility column."""
    from analysis.report import report

    rows = [{**r, "dtype": "float32", "judge": "oracle"} for r in _summary().to_dict("records")]
    measured = [{**r, "instruction_refusal_rate": 10.0, "non_answer_rate": 5.0, "knowledge_accuracy": 30.0,
                 "n_instructions": 20, "n_knowledge": 40} for r in rows]
    report(_write_runs(tmp_path / "first", rows, "plain"), tmp_path / "out")
    report(_write_runs(tmp_path / "second", measured, "useful"), tmp_path / "out")
    tables = tmp_path / "out" / "tables"
    assert "MMLU ↑" in next(tables.glob("useful_*_sentiment.md")).read_text()
    assert "MMLU" not in next(tables.glob("plain_*_sentiment.md")).read_text()


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_report_of_a_partial_rerun_keeps_the_rows_it_did_not_redo(tmp_path):
    """Records of two of an experiment's runs (a partial rerun, here the aligned row and one seed) replace those
    two rows and leave the others of summary.csv as they were; ``replace`` drops the others."""
    from analysis.report import report

    rows = _summary().to_dict("records")
    report(_write_runs(tmp_path / "first", rows, "e"), tmp_path / "out")
    before = pd.read_csv(tmp_path / "out" / "summary.csv")
    redo = [{**r, "harmful_score": 42.0} for r in rows if pd.isna(r["poison_ratio"]) or
            (r["method"] == "sft" and r["seed"] == 1 and r["poison_ratio"] == 0.1)]
    assert len(redo) == 2
    report(_write_runs(tmp_path / "second", redo, "e"), tmp_path / "out")
    after = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert len(after) == len(before) and (after["harmful_score"] == 42.0).sum() == 2
    changed = after[after["harmful_score"] != before["harmful_score"]]
    assert sorted(changed["method"]) == ["aligned", "sft"]
    report(_write_runs(tmp_path / "third", redo, "e"), tmp_path / "out", replace=True)
    assert len(pd.read_csv(tmp_path / "out" / "summary.csv")) == 2


def test_cohen_kappa_and_pairwise_agreement():
    from analysis.agreement import cohen_kappa, pairwise

    assert cohen_kappa([1, 1, 0, 0], [1, 0, 0, 0]) == pytest.approx(0.5)  # p_o 0.75, p_e 0.5
    assert cohen_kappa([1, 0], [0, 1]) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([1, 1, 1], [1, 1, 1]))  # chance agreement 1: undefined
    with pytest.raises(ValueError):
        cohen_kappa([1], [1, 0])
    answers = [{"set": "harmful", "benchmark": b, "response": "",
                "verdicts": {"keyword": k, "guard": g}} for b, k, g in [
                    ("advbench", "compliance", "compliance"), ("advbench", "compliance", "other"),
                    ("advbench", "refusal", "other"), ("advbench", "refusal", "other"),
                    ("harmbench", "refusal", "compliance")]]
    rows = {r["benchmark"]: r for r in pairwise(answers)}
    adv = rows["advbench"]
    assert (adv["judge_a"], adv["judge_b"], adv["n"]) == ("keyword", "guard", 4)
    assert (adv["hs_a"], adv["hs_b"], adv["agreement"]) == (50.0, 25.0, 75.0)
    assert adv["kappa"] == pytest.approx(0.5)
    assert rows["harmbench"]["agreement"] == 0.0 and rows["harmbench"]["kappa"] == 0.0


def test_store_profile_counts_stage_seconds(tmp_path):
    from analysis.store_profile import markdown, profile, stage_times
    from pact.runtime.store import Store

    store = Store(tmp_path / "store")
    for stage, config in (("finetune", 1), ("finetune", 2), ("generate", 1)):
        store.build(stage, {"c": config}, None, lambda tmp: None)
    times = stage_times(store.root)
    assert sorted(times["stage"]) == ["finetune", "finetune", "generate"]
    times["seconds"] = [3.0, 5.0, 2.0]  # builder times as recorded in meta.json
    table = profile(times, wall=20.0).set_index("stage")
    assert table.loc["finetune", "count"] == 2 and table.loc["finetune", "mean"] == 4.0
    assert table.loc["finetune", "share"] == 0.4 and table.loc["(outside stages)", "total"] == 10.0
    assert "| finetune | 2 | 4.0 | 8.0 | 40.0% |" in markdown(profile(times, wall=20.0))


def test_report_writes_into_results_only_when_asked(tmp_path, monkeypatch):
    """A user's own runs go to outputs/report by default: the committed results/summary.csv is not touched."""
    from analysis.report import DEFAULT_OUT, main

    rows = _summary().to_dict("records")
    runs = _write_runs(tmp_path, rows, "mine")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results").mkdir()
    _summary().head(1).assign(experiment="committed").to_csv(tmp_path / "results" / "summary.csv", index=False)
    committed = (tmp_path / "results" / "summary.csv").read_text()
    main(["--runs", str(runs)])
    assert (tmp_path / DEFAULT_OUT / "summary.csv").is_file() and DEFAULT_OUT == "outputs/report"
    assert (tmp_path / "results" / "summary.csv").read_text() == committed
    main(["--runs", str(runs), "--out", "results"])
    assert set(pd.read_csv(tmp_path / "results" / "summary.csv")["experiment"]) == {"committed", "mine"}


@pytest.mark.slow  # the whole report of every committed study (~1 min)
def test_committed_results_regenerate_byte_for_byte(tmp_path):
    """`make figures` on a clone without run records: every table and figure under results/ comes back byte for
    byte from the committed summary.csv and judge_agreement.csv (no date, no run-dependent state in them)."""
    import filecmp
    import shutil
    from pathlib import Path

    from analysis.report import main

    results = Path(__file__).resolve().parent.parent / "results"
    out = tmp_path / "results"
    out.mkdir()
    for name in ("summary.csv", "judge_agreement.csv"):
        shutil.copy(results / name, out / name)
    main(["--runs", str(tmp_path / "no-runs"), "--out", str(out)])
    # provenance.{csv,md} record this command (its commit, its files), not the committed study's: not compared
    made = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file() and not p.name.startswith("provenance."))
    assert len(made) > 50
    differ = [str(p) for p in made if not (results / p).is_file() or not filecmp.cmp(out / p, results / p,
                                                                                      shallow=False)]
    assert differ == []


def test_the_attack_grid_reads_each_cells_knobs_and_finds_each_methods_worst_case(tmp_path):
    """analysis.attack on a grid made of the real-data study's seed-0 rows: every (method, lr, epochs) cell with its
    interval, the worst case of each method the cell whose harmful answers were all made harmful, and the files."""
    from analysis.attack import grid, main, worst_cases

    summary = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "summary.csv")
    rows = summary[(summary["experiment"] == "smollm2_real") & (summary["seed"] == 0)
                   & (summary["poison_ratio"] == 0.1) & summary["method"].isin(["sft_lora", "pact_lora"])]
    harmful = [c for c in summary.columns if c.startswith("harmful_score.")]
    parts = []
    for lr in (3e-4, 1e-3):
        for epochs in (1, 5):
            variant = f"finetune.lora_lr={lr},finetune.optim.epochs={epochs}"
            part = rows.assign(experiment="attack", variant=variant, method=rows["method"] + f" [{variant}]")
            if (lr, epochs) == (3e-4, 5):   # the worst case of both methods
                part[harmful] = part[harmful].where(part[harmful].isna(), 100.0)
                part["harmful_score"] = 100.0
            parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    cells = grid(df)
    assert len(cells) == 8 and set(cells["method"]) == {"sft_lora", "pact_lora"}
    assert (cells["harmful_score_lo"] <= cells["harmful_score"]).all()
    assert (cells["harmful_score"] <= cells["harmful_score_hi"]).all()
    worst = worst_cases(cells)
    assert list(worst["finetune.lora_lr"]) == [3e-4, 3e-4] and list(worst["finetune.optim.epochs"]) == [5, 5]
    assert (worst["harmful_score"] == 100.0).all()
    with pytest.raises(ValueError, match=r"do not set \['finetune.optim.epochs'\]"):
        grid(df.assign(variant="finetune.lora_lr=0.001"))
    out = tmp_path / "results"
    out.mkdir()
    df.to_csv(out / "summary.csv", index=False)
    main(["--experiment", "attack", "--out", str(out)])
    table = (out / "tables" / "attack_grid.md").read_text()
    assert "## Each method's worst case" in table and "100.0 [100.0, 100.0]" in table
    assert (out / "figures" / "attack_grid.png").is_file()


def test_a_figure_cuts_a_long_variant_label_and_keeps_two_apart():
    """A label of many overrides (a dry run's: ~14 kB) is cut for a legend, with a hash of the whole label; the
    committed studies' labels pass whole."""
    from analysis.style import LEGEND_LABEL_MAX, legend_label

    short = "pact_lora [method.gate=off,method.post_bos=False]"
    assert legend_label(short) == short
    summary = pd.read_csv(Path(__file__).resolve().parents[1] / "results" / "summary.csv")
    assert all(legend_label(m) == m for m in summary["method"].unique())
    a, b = (f"pact [{'data.sources.x.git.sha256=' + '0' * 64},seed_note={end}]" for end in ("a", "b"))
    assert len(legend_label(a)) < LEGEND_LABEL_MAX + 12 and legend_label(a).startswith(a[:LEGEND_LABEL_MAX])
    assert legend_label(a) != legend_label(b)
    # the mark is the variant's tag in its record's file name
    from pact.runtime.records import record_path, variant_tag

    variant = a.removeprefix("pact [").removesuffix("]")
    identity = {"experiment": "e", "model": "m", "method": "pact", "task": "t", "poison_ratio": 0.1, "seed": 0}
    assert legend_label(a).endswith(variant_tag(variant)) and variant_tag(variant) in record_path("r", identity,
                                                                                                 variant).name
