"""Two details of the official PACT code measured on a model:
``python -m experiments.diagnostics.protocol_check MODEL_DIR --rows FILE --prompts FILE [--out DIR]``.

1. **The training attention mask.** The official datasets set ``pad = eos`` and build the mask as ``input_ids !=
   pad`` (ft_datasets/SST2_dataset/SST2_dataset.py), so every end-of-turn token inside a sequence (the ends of the
   system and user turns in Llama 3's template) is masked out of attention, not only the padding. Ours masks padding
   alone. Measured on (prompt, answer) rows through the model's chat template: how many tokens per row the official
   mask hides, and the answer cross-entropy (the SFT loss at step 0) under each mask.
2. **Double BOS at evaluation.** The official safety evaluation renders the chat template as text and hands the text
   to vLLM, which tokenises it again with the tokenizer's special tokens (evaluation/safety_evaluation/
   safety_eval.py), so a template that starts with BOS gets a second one. Ours passes the template's token ids.
   Measured on harmful prompts: how many get a second BOS, and the greedy answers (HF ``generate``) both ways: the
   share that differ and the refusal rate of each under ``keyword_qi``.

Writes ``protocol_check.{json,md}`` under ``--out``. No store, no Hydra: a model folder and two JSON-lines files
(``--rows``: prompt, answer; ``--prompts``: prompt), e.g. an aligned model of the store and the data stage's files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from experiments.diagnostics.gpu_check import read_conf
from pact.data.labels import IGNORE_INDEX
from pact.data.rows import SFTCollator, encode_sft, prompt_ids, read_jsonl
from pact.evaluation.generation import HFEngine
from pact.evaluation.judges import JUDGES, REFUSAL
from pact.models.loading import load_model, load_tokenizer
from pact.runtime.fileio import write_atomic

# defaults of the command line (conf/analysis.yaml protocol_check); read without Hydra, as the GPU check
SETTINGS = read_conf("analysis.yaml").protocol_check


def official_mask(batch: dict[str, torch.Tensor], pad_id: int) -> torch.Tensor:
    """The official attention mask: every position whose token is the pad id (= eos) is masked, padding or not."""
    return batch["input_ids"].ne(pad_id).long() * batch["attention_mask"]


@torch.no_grad()
def answer_ce(model, batch: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean cross-entropy of the labelled answer tokens under ``mask``."""
    logits = model(input_ids=batch["input_ids"], attention_mask=mask).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    valid = labels.ne(IGNORE_INDEX)
    return (nll * valid).sum(1) / valid.sum(1)


def attention_mask_check(model, tok, rows: list[dict[str, Any]], max_len: int) -> dict[str, Any]:
    """Part 1, one row at a time (no padding: the two masks differ only at in-sequence end-of-turn tokens)."""
    hidden, ours, official = [], [], []
    for ex in encode_sft(rows, tok, "chat", max_len):
        batch = SFTCollator(tok.pad_token_id)([ex])
        mask = official_mask(batch, tok.pad_token_id)
        hidden.append(int((batch["attention_mask"] - mask).sum()))
        ours.append(float(answer_ce(model, batch, batch["attention_mask"])))
        official.append(float(answer_ce(model, batch, mask)))
    diffs = [abs(a - b) for a, b in zip(ours, official)]
    return {"rows": len(rows), "pad_is_eos": tok.pad_token_id == tok.eos_token_id,
            "masked_tokens_per_row": sum(hidden) / len(hidden), "ce_ours": sum(ours) / len(ours),
            "ce_official": sum(official) / len(official), "mean_abs_ce_diff": sum(diffs) / len(diffs),
            "max_abs_ce_diff": max(diffs)}


def double_bos_check(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int) -> dict[str, Any]:
    """Part 2: the template's ids (ours) against the template's text tokenised again (official)."""
    ours = [prompt_ids(tok, p, "chat") for p in prompts]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    official = [tok(t)["input_ids"] for t in texts]  # add_special_tokens=True, as vLLM encodes a text prompt
    bos = tok.bos_token_id
    doubled = sum(len(o) > 1 and bos is not None and o[0] == o[1] == bos for o in official)
    engine = HFEngine(model, tok, batch_size)
    a, b = engine.generate(ours, max_new_tokens), engine.generate(official, max_new_tokens)
    rows = [{"prompt": p} for p in prompts]
    judge = JUDGES["keyword_qi"]
    refusals = [sum(v == REFUSAL for v in judge.judge(rows, answers)) / len(rows) for answers in (a, b)]
    return {"prompts": len(prompts), "bos_token": tok.bos_token, "doubled_bos": doubled,
            "ids_differ": sum(x != y for x, y in zip(ours, official)),
            "answers_differ": sum(x != y for x, y in zip(a, b)), "refusal_ours": refusals[0],
            "refusal_official": refusals[1], "max_new_tokens": max_new_tokens}


def markdown(result: dict[str, Any]) -> str:
    m, d = result["attention_mask"], result["double_bos"]
    return "\n".join([
        f"# Official protocol details measured on {result['model']}", "",
        f"Command: `{result['command']}`", "",
        "## Training attention mask (pad = eos masks every end-of-turn token)", "",
        f"{m['rows']} (prompt, answer) rows, one at a time; pad is eos: {m['pad_is_eos']}. The official mask hides "
        f"{m['masked_tokens_per_row']:.2f} tokens per row. Answer cross-entropy: ours {m['ce_ours']:.4f}, official "
        f"{m['ce_official']:.4f}; per row |difference| mean {m['mean_abs_ce_diff']:.4f}, max "
        f"{m['max_abs_ce_diff']:.4f}.", "",
        "## Double BOS at evaluation (the template's text tokenised again)", "",
        f"{d['prompts']} harmful prompts; BOS token {d['bos_token']!r}: {d['doubled_bos']} prompts get a second BOS, "
        f"{d['ids_differ']} have other ids. Greedy answers ({d['max_new_tokens']} new tokens) differ for "
        f"{d['answers_differ']}; refusal rate (keyword_qi) ours {100 * d['refusal_ours']:.1f}%, official "
        f"{100 * d['refusal_official']:.1f}%.", ""])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="What each part measures: the module docstring.")
    parser.add_argument("model", help="a saved model folder (with its tokenizer), e.g. the store's aligned model")
    parser.add_argument("--rows", required=True, help="JSON lines with prompt and answer (fine-tuning rows)")
    parser.add_argument("--prompts", required=True, help="JSON lines with prompt (harmful requests)")
    d = SETTINGS
    parser.add_argument("--limit", type=int, default=d.limit, help=f"rows and prompts read from each file ({d.limit})")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                        help=f"greedy answer length ({d.max_new_tokens})")
    parser.add_argument("--max-len", type=int, default=d.max_len,
                        help=f"token budget of a fine-tuning row ({d.max_len})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"HF generate batch ({d.batch_size})")
    parser.add_argument("--out", default="outputs/protocol_check", help="where protocol_check.{json,md} go")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    tok = load_tokenizer(args.model)
    model = load_model(args.model).eval()
    rows = read_jsonl(args.rows, ("prompt", "answer"))[: args.limit]
    prompts = [r["prompt"] for r in read_jsonl(args.prompts, ("prompt",))[: args.limit]]
    command = " ".join(["python -m experiments.diagnostics.protocol_check", *(sys.argv[1:] if argv is None else argv)])
    result = {"model": Path(args.model).name, "command": command,
              "attention_mask": attention_mask_check(model, tok, rows, args.max_len),
              "double_bos": double_bos_check(model, tok, prompts, args.max_new_tokens, args.batch_size)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "protocol_check.json", json.dumps(result, indent=2))
    report = markdown(result)
    write_atomic(out / "protocol_check.md", report)
    print(report)


if __name__ == "__main__":
    main()
