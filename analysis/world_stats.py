"""Statistics of the toy world behind a config: ``python -m analysis.world_stats [--out results] [overrides]``.

Split sizes, vocabulary, held-out task words, and how many tokens carry real probability in the aligned
model's refusals (the PACT safety set is the top 50 of them: in a poorer world it fills with noise tokens).
Uses the cached world/base/align artifacts (builds them if missing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf

from analysis.provenance import recording
from pact.data import rows as D
from pact.models.loading import load_model, load_tokenizer
from pact.run import pipeline as P
from pact.run.cli import run_cli
from pact.run.config import CONF_DIR, compose_config
from pact.tokens_stage import mean_response_probs

SETTINGS = OmegaConf.load(CONF_DIR / "analysis.yaml").world_stats
MASS_THRESHOLDS = tuple(float(t) for t in SETTINGS.mass_thresholds)
SAFETY_SET_SIZE = int(OmegaConf.load(CONF_DIR / "method" / "pact.yaml").tokens.top_k)  # PACT's top_k


def world_stats(overrides: list[str]) -> dict:
    cfg = compose_config(overrides)
    up = P.start(cfg)
    world, aligned = up.world, up.aligned
    meta = json.loads(world.file("meta.json").read_text())
    tok = load_tokenizer(aligned.tokenizer_path)
    model = load_model(aligned.path, cfg.model.dtype)
    pairs = D.read_jsonl(world.file("safety_pairs.jsonl"), ("prompt", "refusal"))
    r = mean_response_probs(model, tok, pairs, aligned.prompt_format, int(SETTINGS.max_resp_len))
    top = r.topk(int(SETTINGS.top_shown))
    refusal_vocab = {t for p in pairs for t in tok(p["refusal"], add_special_tokens=False)["input_ids"]}
    return {
        "world_key": world.key, "aligned_key": aligned.key, "split_sizes": meta["sizes"],
        "vocab_size": meta["vocab_size"], "heldout_task_vocab": meta["heldout_vocab"],
        "refusal_distinct_tokens": len(refusal_vocab), "n_pairs": len(pairs),
        "refusal_tokens_with_mass": {f">= {t:g}": int((r >= t).sum()) for t in MASS_THRESHOLDS},
        f"refusal_mass_top{SAFETY_SET_SIZE}": float(r.topk(SAFETY_SET_SIZE).values.sum()),
        "top_refusal_tokens": [{"token": tok.decode([int(i)]), "id": int(i), "mean_prob": round(float(v), 5)}
                               for v, i in zip(top.values, top.indices)],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. world=small model=toy_small")
    args = parser.parse_args(argv)
    stats = run_cli(lambda: world_stats(args.overrides))
    out = Path(args.out)
    with recording(out, "analysis.world_stats", argv):
        write(stats, out)
    print(json.dumps({k: v for k, v in stats.items() if k not in ("top_refusal_tokens", "heldout_task_vocab")},
                     indent=2))


def write(stats: dict, out: Path) -> None:
    """world_stats.json and world_stats.md under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "world_stats.json").write_text(json.dumps(stats, indent=2))
    lines = ["# Toy world statistics", "", f"world `{stats['world_key']}`, aligned model `{stats['aligned_key']}`",
             "", "| split | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in stats["split_sizes"].items()]
    lines += ["", f"BPE vocabulary: {stats['vocab_size']} tokens. Distinct tokens in the {stats['n_pairs']} "
              f"safety-pair refusals: {stats['refusal_distinct_tokens']}.",
              "Tokens whose mean aligned probability over refusal positions is at least a threshold: " +
              ", ".join(f"{k}: {v}" for k, v in stats["refusal_tokens_with_mass"].items()) +
              f"; the top {SAFETY_SET_SIZE} hold {100 * stats[f'refusal_mass_top{SAFETY_SET_SIZE}']:.1f}% of the mass.",
              ""]
    (out / "world_stats.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
