"""``make paper-dry-run`` in the test suite: experiment=paper_llama31's whole grid and its full-parameter methods on
CPU stand-ins (tests/paper_dry_run.py), every cell with a record, the report made from them, and the official values
of the experiment in force in what the stages built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.paper_dry_run import DRY_RUN, grid, main
from tests.realdata import MIXTURE_ROWS


def metas(store: Path, stage: str) -> list[dict]:
    return [json.loads((p.parent / "meta.json").read_text()) for p in (store / stage).glob("*/DONE")]


@pytest.mark.slow
def test_the_paper_dry_run_gives_every_cell_a_record_and_a_report(tmp_path, capsys):
    main([str(tmp_path)])
    assert "every one with a record" in capsys.readouterr().out
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs" / DRY_RUN).glob("*.json")]
    tuned = [r for r in records if r["poison_ratio"] is not None]
    assert len(tuned) == len(grid()) + 4 == 44
    assert {r["task"] for r in tuned} == {"sst2", "agnews"} and max(r["poison_ratio"] for r in tuned) == 0.3
    assert all(r["engine"] == "hf" and r["judge"] == "llama_guard3" for r in tuned)
    tables = {p.name for p in (tmp_path / "report" / "tables").glob("*.md")}
    assert {f"{DRY_RUN}_tiny-llama3_sst2.md", f"{DRY_RUN}_tiny-llama3_agnews.md"} <= tables
    store = tmp_path / "store"
    finetunes = metas(store, "finetune")
    assert all(m["rows"] == MIXTURE_ROWS for m in finetunes)  # every row of each official file
    lora = [m for m in finetunes if m["config"]["method"].get("adapter") == "lora"]
    assert lora and all(m["config"]["finetune"]["lora_dtype"] == "model" for m in lora)
    assert all(m["config"]["finetune"]["attention_mask"] == "eos" for m in finetunes)
    assert all(m["config"]["eval"]["chat_as_text"] for m in metas(store, "generate"))
    assert all(m["config"]["chat_as_text"] for m in metas(store, "judge"))
    assert not (store / "safety_pairs").exists()  # the stored pairs: nothing generated
    # Vaccine's route: its alignment of the aligned model (the defence's step, LoRA merged), then the fine-tune from it
    [vaccine] = [r for r in tuned if r["method"] == "vaccine_lora"]
    [defended] = [r for r in records if r["method"] == "vaccine_lora_aligned"]
    [align] = metas(store, "align")
    assert vaccine["keys"]["aligned"] == defended["keys"]["model"] == align["key"]
    assert align["rows"] == 4 and align["upstream"]["init"] != align["key"]
    assert align["config"]["method"]["align"]["lora"]["alpha"] == 4  # the official Vaccine alignment adapter
    # safety mixing keeps Vaccine's share of the official file's rows (a tenth), not the SmolLM2 study's count
    mixed = [m for m in finetunes if m["config"]["method"]["id"] == "safety_mix_lora"]
    assert mixed and all(m["method_stats"]["safety_rows"] == round(0.1 * MIXTURE_ROWS) for m in mixed)
