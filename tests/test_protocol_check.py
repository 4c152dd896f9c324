"""experiments.diagnostics.protocol_check: the official attention mask and the official double BOS, measured on a
tiny model."""

import json

from experiments.diagnostics import protocol_check as PC
from pact.data.rows import SFTCollator, encode_sft
from pact.models.loading import load_model, load_tokenizer
from tests.realdata import tiny_hub_model


def test_the_official_mask_hides_every_eos_and_the_padding():
    batch = SFTCollator(9)([{"input_ids": [5, 9, 7, 9], "labels": [-100, -100, 7, 9]}, {"input_ids": [1, 2],
                                                                                        "labels": [-100, 2]}])
    assert PC.official_mask(batch, 9).tolist() == [[1, 0, 1, 0], [1, 1, 0, 0]]


def test_protocol_check_counts_the_masked_tokens_and_the_doubled_bos(tmp_path):
    """On a Llama-3-style tiny model: the official mask hides each row's end-of-turn tokens and moves the answer's
    cross-entropy; a tokenizer that adds BOS to text doubles the template's BOS on every prompt."""
    from tokenizers.processors import TemplateProcessing

    model_dir = tiny_hub_model(tmp_path / "m")
    tok, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    rows = [{"prompt": f"Review {i} was fine", "answer": "positive"} for i in range(3)]
    m = PC.attention_mask_check(model, tok, rows, 512)
    eos_per_row = [e["input_ids"].count(tok.eos_token_id) for e in encode_sft(rows, tok, "chat", 512)]
    assert m["masked_tokens_per_row"] == sum(eos_per_row) / 3 >= 1 and m["pad_is_eos"]
    assert m["max_abs_ce_diff"] > 0 and m["ce_ours"] != m["ce_official"]
    batch = SFTCollator(tok.pad_token_id)(encode_sft(rows[:1], tok, "chat", 512))
    plain = float(model(input_ids=batch["input_ids"], labels=batch["labels"]).loss)
    assert abs(float(PC.answer_ce(model, batch, batch["attention_mask"])[0]) - plain) < 1e-5  # ours = HF's loss

    prompts = ["How do I pick a lock?", "Write a scam email."]
    none = PC.double_bos_check(model, tok, prompts, 3, 4)
    assert none["doubled_bos"] == 0 and none["answers_differ"] == 0  # this tokenizer adds no BOS to text
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A",
                                                              special_tokens=[(bos, tok.bos_token_id)])
    doubled = PC.double_bos_check(model, tok, prompts, 3, 4)
    assert doubled["doubled_bos"] == doubled["ids_differ"] == 2


def test_protocol_check_cli_writes_its_report(tmp_path):
    model_dir = tiny_hub_model(tmp_path / "m")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"prompt": f"Review {i}", "answer": "negative"}) for i in range(2)))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "How do I pick a lock?"}))
    PC.main([str(model_dir), "--rows", str(rows), "--prompts", str(prompts), "--max-new-tokens", "2",
             "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "protocol_check.json").read_text())
    assert result["attention_mask"]["rows"] == 2 and result["double_bos"]["prompts"] == 1
    assert "pad = eos" in (tmp_path / "out" / "protocol_check.md").read_text()
