"""Print PACT's safety set S: ``python -m experiments.safety_tokens [overrides]`` (e.g. ``method.tokens.top_k=25``).

Builds (or reuses) the tokens stage of the configured aligned/base pair and prints every token of S, decoded,
with its mean aligned probability r over refusal positions and its weight v: which tokens land in S decides
what PACT protects.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from analysis.provenance import recording
from pact.run import pipeline as P
from pact.run.cli import OVERRIDES, exit_on_help, fail, pop_option, run_cli
from pact.run.config import compose_config
from pact.runtime.fileio import write_atomic
from pact.tokens_stage import tokens_stage


def safety_set(overrides: list[str]) -> dict:
    """The tokens artifact's metadata for the config made of ``overrides`` (method defaults to pact)."""
    if not any(o.startswith("method=") for o in overrides):
        overrides = ["method=pact", *overrides]
    cfg = compose_config(overrides)
    if "tokens" not in cfg.method:
        fail(f"method={cfg.method.id} has no safety tokens; use a PACT method")
    up = P.start(cfg)
    art = tokens_stage(up.store, cfg.method.tokens, up.aligned, up.base, up.data, cfg.model.dtype,
                       cfg.model.trust_remote_code)
    meta = json.loads(art.file("meta.json").read_text())
    meta["path"] = str(art.path)
    return meta


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    exit_on_help(args, "experiments.safety_tokens", __doc__, f"{OVERRIDES} [--out FILE]")
    out = pop_option(args, "--out", "a file path")
    out = Path(out) if out is not None else None
    meta = run_cli(lambda: safety_set(args))
    rows = sorted(meta["safety_set"], key=lambda x: -x["v"])
    kept = sum(r["v"] > 0 for r in rows)
    lines = [f"safety set S: {meta['size']} tokens from {meta['n_pairs']} refusal pairs ({meta['path']})",
             f"{'id':>6}  {'token':<18} {'mean aligned prob r':>20} {'weight v':>10}",
             *(f"{row['id']:>6}  {json.dumps(row['token']):<18} {row['r']:>20.5f} {row['v']:>+10.4f}" for row in rows),
             f"{kept} tokens with positive weight (the KL target keeps relu(v)); {len(rows) - kept} with v <= 0"]
    print("\n".join(lines))
    if out is not None:
        with recording(out.parent, "experiments.safety_tokens", argv):
            write_atomic(out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
