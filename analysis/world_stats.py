"""Statistics of the toy world behind a config: ``python -m analysis.world_stats [--out results] [overrides]``.

Split sizes, vocabulary, held-out task words, and how many tokens carry real probability in the aligned
model's refusals (the PACT safety set is the top 50 of them: in a poorer world it fills with noise tokens).
Uses the cached world/base/align artifacts (builds them if missing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from pact import data as D
from pact import pipeline as P
from pact.config import validate
from pact.models import load_model, load_tokenizer
from pact.store import Store
from pact.tokens import mean_response_probs

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
# Thresholds at which a token "carries probability" in refusals (mean aligned probability per position).
MASS_THRESHOLDS = (1e-2, 1e-3)
MAX_RESP_LEN = 64  # PACT official README: max_resp_len = 64
TOP_SHOWN = 60


def world_stats(overrides: list[str]) -> dict:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = validate(compose("config", overrides=overrides))
    store = Store(cfg.store_dir)
    world = P.world_stage(store, cfg.world)
    _, aligned = P.model_refs(store, cfg, world)
    meta = json.loads(world.file("meta.json").read_text())
    tok = load_tokenizer(aligned.tokenizer_path)
    model = load_model(aligned.path, cfg.model.dtype)
    pairs = D.read_jsonl(world.file("safety_pairs.jsonl"), ("prompt", "refusal"))
    r = mean_response_probs(model, tok, pairs, aligned.prompt_format, MAX_RESP_LEN)
    top = r.topk(TOP_SHOWN)
    refusal_vocab = {t for p in pairs for t in tok(p["refusal"], add_special_tokens=False)["input_ids"]}
    return {
        "world_key": world.key, "aligned_key": aligned.key, "split_sizes": meta["sizes"],
        "vocab_size": meta["vocab_size"], "heldout_task_vocab": meta["heldout_vocab"],
        "refusal_distinct_tokens": len(refusal_vocab), "n_pairs": len(pairs),
        "refusal_tokens_with_mass": {f">= {t:g}": int((r >= t).sum()) for t in MASS_THRESHOLDS},
        "refusal_mass_top50": float(r.topk(50).values.sum()),
        "top_refusal_tokens": [{"token": tok.decode([int(i)]), "id": int(i), "mean_prob": round(float(v), 5)}
                               for v, i in zip(top.values, top.indices)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. world=small model=toy_small")
    args = parser.parse_args(argv)
    stats = world_stats(args.overrides)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "world_stats.json").write_text(json.dumps(stats, indent=2))
    lines = ["# Toy world statistics", "", f"world `{stats['world_key']}`, aligned model `{stats['aligned_key']}`",
             "", "| split | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in stats["split_sizes"].items()]
    lines += ["", f"BPE vocabulary: {stats['vocab_size']} tokens. Distinct tokens in the {stats['n_pairs']} "
              f"safety-pair refusals: {stats['refusal_distinct_tokens']}.",
              "Tokens whose mean aligned probability over refusal positions is at least a threshold: " +
              ", ".join(f"{k}: {v}" for k, v in stats["refusal_tokens_with_mass"].items()) +
              f"; the top 50 hold {100 * stats['refusal_mass_top50']:.1f}% of the mass.", ""]
    (out / "world_stats.md").write_text("\n".join(lines) + "\n")
    print(json.dumps({k: v for k, v in stats.items() if k not in ("top_refusal_tokens", "heldout_task_vocab")},
                     indent=2))


if __name__ == "__main__":
    main()
