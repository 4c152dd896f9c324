"""Does a row's reference depend on its batch-mates?
``python -m experiments.diagnostics.batch_invariance [overrides] [--rows N]``.

PACT's reference pass (the aligned model's safety-subset logits, full context and post-only) over the first ``N``
training rows of the configured run (default: conf/analysis.yaml pact_step0.batch_size, 32), once in one padded
batch and once row by row, compared bit for bit; also the batch computed twice. A row whose logits move with its
batch-mates would make any cache that computes rows in batches depend on which rows were computed together
(pact/runtime/refcache.py therefore computes each row alone). Prints the rows that differ per pass and the largest
absolute difference. Reads the store's aligned model and safety set (built by ``experiments.prepare`` with the same
overrides), trains nothing.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from experiments.pact_step0 import SETTINGS, prepared_run
from pact.models.loading import load_model
from pact.run import pipeline as P
from pact.run.cli import OVERRIDES, exit_on_help, fail, pop_option, run_cli

DEFAULT_ROWS = int(SETTINGS.batch_size)  # one batch of the step-0 measurement (conf/analysis.yaml pact_step0),
# the size of the batches the reference cache computed before it computed rows alone


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
    cfg, up, method, _, examples = prepared_run(overrides)
    P.set_threads(cfg)
    model = load_model(up.aligned.path, cfg.model.dtype, cfg.model.trust_remote_code).eval()
    return compare(method, model, examples[:rows])


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    exit_on_help(args, "experiments.diagnostics.batch_invariance", __doc__, f"{OVERRIDES} [--rows N]")
    rows = pop_option(args, "--rows", "a positive whole number")
    if rows is not None and (not rows.isdigit() or int(rows) < 1):
        fail("--rows needs a positive whole number")
    rows = DEFAULT_ROWS if rows is None else int(rows)
    result = run_cli(lambda: measure(args, rows))
    print(f"{result['rows']} rows; differ between one batch and each alone: full context {result['full_differ']}, "
          f"post-only {result['post_differ']}; largest absolute difference {result['max_abs_diff']:.3g}; "
          f"the batch twice: {'bit-equal' if result['batch_repeatable'] else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
