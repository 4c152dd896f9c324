"""Bootstrap intervals of the real-data rates from summary.csv's per-benchmark rates and prompt counts
(analysis/intervals.py), and the tables and figure the report makes of them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.intervals import GAP, cell_intervals, interval_table, intervals_markdown, rates_of


def row(method="pact_lora", p=0.1, seed=0, ref=(80.0, 60.0), n=(100, 100), over=20.0, n_benign=250,
        fa=90.0, n_task=872):
    """A real-data summary row: two harmful benchmarks (a, b), one benign, the task."""
    out = {"experiment": "e", "model": "m", "task": "sst2", "method": method, "poison_ratio": p, "seed": seed,
           "refusal_rate": float(np.mean(ref)), "harmful_score": 100 - float(np.mean(ref)),
           "benign_refusal_rate": over, "n_benign": n_benign, "finetune_accuracy": fa, "n_task": n_task}
    for bench, r, k in zip("ab", ref, n):
        out.update({f"refusal_rate.{bench}": r, f"harmful_score.{bench}": 100 - r, f"n_harmful.{bench}": k})
    out["n_harmful"] = sum(n)
    return out


def test_one_run_gives_the_binomial_interval_of_each_benchmark_mean():
    df = pd.DataFrame([row(ref=(50.0, 50.0), n=(400, 400))])
    lo, hi = cell_intervals(df, rates_of(df))["refusal_rate"][1:]
    # the mean of two benchmarks of 400 prompts at 50%: sd = 100 * sqrt(.25 / 800) = 1.77 points
    assert lo == pytest.approx(50 - 1.96 * 1.77, abs=0.4) and hi == pytest.approx(50 + 1.96 * 1.77, abs=0.4)
    assert rates_of(df)["refusal_rate"].counts == ("n_harmful.a", "n_harmful.b")  # per benchmark, not pooled


def test_seeds_that_disagree_widen_the_interval_beyond_the_prompts_alone():
    alike = pd.DataFrame([row(seed=s, ref=(50.0, 50.0), n=(1000, 1000)) for s in range(3)])
    apart = pd.DataFrame([row(seed=s, ref=(r, r), n=(1000, 1000)) for s, r in enumerate((30.0, 50.0, 70.0))])
    width = {name: np.subtract(*cell_intervals(df, rates_of(df))["refusal_rate"][:0:-1])
             for name, df in (("alike", alike), ("apart", apart))}
    assert width["alike"] < 4 and width["apart"] > 20  # the seeds are resampled, not only the prompts


def test_the_gap_is_drawn_with_both_rates_and_the_intervals_are_reproducible():
    df = pd.DataFrame([row(ref=(90.0, 70.0), over=30.0)])
    a, b = cell_intervals(df, rates_of(df)), cell_intervals(df, rates_of(df))
    assert a == b and a[GAP][0] == pytest.approx(80.0 - 30.0)
    assert a[GAP][1] < 50 < a[GAP][2] and a[GAP][2] - a[GAP][1] > a["refusal_rate"][2] - a["refusal_rate"][1]
    assert cell_intervals(df, rates_of(df), seed=1) != a  # the seed is used


def test_the_table_puts_the_reference_models_first_and_reads_each_cell():
    df = pd.DataFrame([row(method="aligned", p=None), row(seed=0), row(seed=1), row(method="sft_lora", p=0.0)])
    table = interval_table(df)
    assert list(table["method"]) == ["aligned", "sft_lora", "pact_lora"] and list(table["seeds"]) == [1, 1, 2]
    text = intervals_markdown(table)
    assert "| aligned | ref | 1 | 70.0 [" in text and "Gap" in text


def test_the_report_writes_intervals_and_the_selectivity_figure_for_a_real_study(tmp_path):
    from analysis.report import report

    df = pd.DataFrame([row(method="base", p=None, ref=(20.0, 10.0), over=4.0), row(method="aligned", p=None),
                       *(row(method=m, p=p, seed=s) for m in ("sft_lora", "pact_lora") for p in (0.0, 0.1)
                         for s in (0, 1))])
    df["judge"] = "keyword_qi"
    df.to_csv(tmp_path / "summary.csv", index=False)
    report(tmp_path / "no_runs", tmp_path / "out", summary=tmp_path / "summary.csv")
    tables = tmp_path / "out" / "tables"
    assert "[" in (tables / "e_m_sst2_paper.md").read_text()  # the paper table's cells carry intervals
    assert "| pact_lora | 0.1 | 2 |" in (tables / "e_m_sst2_intervals.md").read_text()
    assert (tmp_path / "out" / "figures" / "e_m_sst2_selectivity.png").stat().st_size > 0
