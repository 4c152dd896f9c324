"""analysis.mixtures: the official mixtures' cells beside ours, read from summary.csv."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import mixtures


def _row(exp: str, method: str, ratio: float | None, hs: float, **extra) -> dict:
    return {"experiment": exp, "model": "m", "task": "sst2", "method": method, "poison_ratio": ratio, "seed": 0,
            "harmful_score": hs, "refusal_rate": 100 - hs, "benign_refusal_rate": 50.0, "finetune_accuracy": 70.0,
            "harmful_score.harmbench": hs + 1, "variant": "", **extra}


def _summary(tmp_path, rows):
    (tmp_path / "tables").mkdir(exist_ok=True)
    pd.DataFrame(rows).to_csv(tmp_path / "summary.csv", index=False)


def test_each_cell_of_ours_sits_beside_the_same_official_cell(tmp_path):
    _summary(tmp_path, [
        _row("off", "aligned", None, 18.0), _row("off", "sft_lora", 0.1, 85.0), _row("off", "pact_lora", 0.1, 23.0),
        _row("off", "pact_lora", 0.05, 26.0),  # a cell ours did not run: not in the table
        _row("ours", "pact_lora", 0.1, 30.0), _row("ours", "aligned", None, 18.0), _row("ours", "sft_lora", 0.1, 90.0),
        _row("other", "pact_lora", 0.1, 1.0),
    ])
    mixtures.main(["--official", "off", "--ours", "ours", "--out", str(tmp_path)])
    got = pd.read_csv(tmp_path / "tables" / "off_official_vs_ours.csv", dtype=str)
    assert list(got["method"]) == ["aligned", "aligned", "pact_lora", "pact_lora", "sft_lora", "sft_lora"]
    assert list(got["mixture"])[:2] == ["official (off)", "ours (ours)"]
    assert list(got["HS"]) == ["18.0", "18.0", "23.0", "30.0", "85.0", "90.0"]
    assert list(got["HS harmbench"]) == ["19.0", "19.0", "24.0", "31.0", "86.0", "91.0"]
    assert list(got["p"]) == ["–", "–", "0.1", "0.1", "0.1", "0.1"]
    assert list(got.columns) == ["method", "p", "seed", "mixture", "HS", "Ref", "HS harmbench", "OverRef", "FA"]
    md = (tmp_path / "tables" / "off_official_vs_ours.md").read_text()
    assert "| pact_lora | 0.1 | 0 | ours (ours) | 30.0 | 70.0 | 31.0 | 50.0 | 70.0 |" in md


def test_a_cell_the_official_study_lacks_is_named(tmp_path):
    _summary(tmp_path, [_row("off", "sft_lora", 0.1, 85.0), _row("ours", "pact_lora", 0.1, 30.0)])
    with pytest.raises(ValueError, match="experiment 'off' has no row for method=pact_lora p=0.1 seed=0"):
        mixtures.main(["--official", "off", "--ours", "ours", "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="no rows in .* for experiment"):
        mixtures.main(["--official", "x", "--ours", "y", "--out", str(tmp_path)])
