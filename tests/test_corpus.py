"""The SmolLM2 real-data study's alignment corpus is the one the rule fixed before the candidates ran picks
(analysis/corpus.py, conf/analysis.yaml ``corpus``, conf/experiment/smollm2_real.yaml)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from analysis.corpus import SETTINGS, markdown, pick, tradeoff
from tests.test_intervals import row

ROOT = Path(__file__).resolve().parents[1]


def summary(rates: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """Base and aligned rows per corpus experiment: corpus -> (harmful refusal, safe refusal) of its aligned model."""
    named = {**SETTINGS.experiments, **SETTINGS.beside}
    rows = []
    for corpus, (ref, over) in rates.items():
        for method, r, o in (("base", 17.0, 4.0), ("aligned", ref, over)):
            rows.append({**row(method=method, p=None, ref=(r, r), over=o), "experiment": named[corpus]})
    return pd.DataFrame(rows)


def test_the_rule_takes_the_first_candidate_that_meets_both_bars():
    table = tradeoff(summary({"lookalike_20": (85.0, 15.0), "lookalike_40": (90.0, 5.0), "lookalike_0": (95.0, 96.0)}))
    assert list(table["corpus"])[:3] == ["lookalike_20", "lookalike_40", "lookalike_0"]
    assert pick(table) == "lookalike_20"  # the first that meets both, though lookalike_40's gap is larger
    text = markdown(table, pick(table))
    assert "**Picked: lookalike_20.**" in text and "(instruct model, before alignment)" in text


@pytest.mark.parametrize("rates,chosen", [
    ({"lookalike_20": (75.0, 30.0), "lookalike_40": (70.0, 10.0), "lookalike_0": (95.0, 96.0)}, "lookalike_40"),
    ({"lookalike_20": (70.0, 30.0), "lookalike_40": (60.0, 20.0), "lookalike_0": (95.0, 96.0)}, "lookalike_20"),
    ({"lookalike_20": (79.0, 10.0), "lookalike_40": (85.0, 21.0), "lookalike_0": (80.0, 0.0)}, "lookalike_20"),
])
def test_without_a_candidate_at_both_bars_the_larger_gap_wins_and_a_tie_goes_to_fewer_look_alikes(rates, chosen):
    table = tradeoff(summary(rates))
    assert pick(table) == chosen  # the measured-beside corpus (lookalike_0) is never picked


def test_a_missing_candidate_names_its_experiment():
    with pytest.raises(ValueError, match="smollm2_real_corpus_l40"):
        tradeoff(summary({"lookalike_20": (85.0, 15.0)}))


def test_the_study_uses_the_corpus_the_committed_rows_pick():
    df = pd.read_csv(ROOT / "results" / "summary.csv")
    if not set(SETTINGS.experiments.values()) <= set(df["experiment"]):
        pytest.skip("the candidates' rows are not committed")
    defaults = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "experiment" / "smollm2_real.yaml").defaults)
    [corpus] = [d["/corpus"] for d in defaults if isinstance(d, dict) and "/corpus" in d]
    assert corpus == pick(tradeoff(df))
