"""Does a row's reference depend on its batch-mates? ``python -m experiments.batch_invariance [overrides] [--rows N]``.

PACT's reference pass (the aligned model's safety-subset logits, full context and post-only) over the first ``N``
training rows of the configured run (default 32), once in one padded batch and once row by row, compared bit for
bit; also the batch computed twice. A row whose logits move with its batch-mates would make any cache that computes
rows in batches depend on which rows were computed together (pact/refcache.py therefore computes each row alone).
Prints the rows that differ per pass and the largest absolute difference. Reads the store's aligned model and
safety set (built by ``experiments.prepare`` with the same overrides), trains nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from pact import data as D
from pact import pipeline as P
from pact.cli import OVERRIDES, exit_on_help, fail, run_cli
from pact.config import compose_config, validate
from pact.methods import FinetuneContext, build_method
from pact.models import load_model, load_tokenizer

DEFAULT_ROWS = 32  # the batch size the reference cache used before it computed rows alone


@torch.no_grad()
def compare(method, model, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Rows whose full-context / post-only reference differs between one batch of ``examples`` and each alone, the
    largest absolute difference, and whether the batch computed twice is bit-equal."""
    full, post = method.reference(model, examples)
    again = method.reference(model, examples)
    out = {"rows": len(examples), "full_differ": 0, "post_differ": 0, "max_abs_diff": 0.0,
           "batch_repeatable": torch.equal(full, again[0]) and torch.equal(post, again[1])}
    for j, example in enumerate(examples):
        alone_full, alone_post = method.reference(model, [example])
        n = alone_full.shape[1]
        for name, batched, alone in (("full", full[j, :n], alone_full[0]), ("post", post[j, :n], alone_post[0])):
            out[f"{name}_differ"] += int(not torch.equal(batched, alone))
            out["max_abs_diff"] = max(out["max_abs_diff"], float((batched - alone).abs().max()))
    return out


def measure(overrides: list[str], rows: int) -> dict[str, Any]:
    """:func:`compare` on the first ``rows`` training rows of the run that ``overrides`` configure."""
    cfg = validate(compose_config(overrides))
    if "tokens" not in cfg.method:
        fail(f"method={cfg.method.id} is not a PACT method")
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))
    up = P.start(cfg)
    tok = load_tokenizer(up.aligned.tokenizer_path, cfg.model.trust_remote_code)
    method = build_method(cfg.method)
    method.prepare(FinetuneContext(aligned=up.aligned, base=up.base, data=up.data, tokenizer=tok,
                                   prompt_format=up.aligned.prompt_format, max_len=int(cfg.model.max_len),
                                   seed=int(cfg.seed), dtype=cfg.model.dtype, store=up.store))
    examples = D.encode_sft(P.finetune_rows(cfg, up.data), tok, up.aligned.prompt_format,
                            int(cfg.model.max_len))[:rows]
    model = load_model(up.aligned.path, cfg.model.dtype, cfg.model.trust_remote_code).eval()
    return compare(method, model, examples)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    exit_on_help(args, "experiments.batch_invariance", __doc__, f"{OVERRIDES} [--rows N]")
    rows = DEFAULT_ROWS
    if "--rows" in args:
        i = args.index("--rows")
        if i + 1 >= len(args) or not args[i + 1].isdigit() or int(args[i + 1]) < 1:
            fail("--rows needs a positive whole number")
        rows = int(args[i + 1])
        del args[i:i + 2]
    result = run_cli(lambda: measure(args, rows))
    print(f"{result['rows']} rows; differ between one batch and each alone: full context {result['full_differ']}, "
          f"post-only {result['post_differ']}; largest absolute difference {result['max_abs_diff']:.3g}; "
          f"the batch twice: {'bit-equal' if result['batch_repeatable'] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
