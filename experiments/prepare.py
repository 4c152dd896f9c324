"""Build the shared upstream artifacts of a study before its sweep: ``python -m experiments.prepare [overrides]``.

The data (toy world or real sources), base and aligned model (and, for an alignment-stage defence named by
``method=``, its aligned model; for a PACT method, its safety tokens; with ``--evaluate``, the base and aligned
model's evaluations too), with all of torch's threads (unless ``threads=N`` is given): a parallel sweep runs one
thread per job, and its first jobs would otherwise build these serial stages on one thread while the others wait on
the lock.
"""

from __future__ import annotations

import logging
import sys

from pact import pipeline as P
from pact.cli import run_cli
from pact.config import compose_config
from pact.tokens_stage import tokens_stage


def prepare(overrides: list[str], evaluate: bool = False) -> None:
    """Build the upstream artifacts of the config made of ``overrides`` (with ``evaluate``, also the evaluations
    of the base and aligned model, the sweep's reference rows)."""
    cfg = compose_config(["threads=0", *overrides])  # threads=N still wins
    up = P.start(cfg)
    P.defended_alignment(up.store, cfg, up.base, up.data)
    if "tokens" in cfg.method:  # PACT: the safety set (both models' passes side by side, one thread each)
        tokens_stage(up.store, cfg.method.tokens, up.aligned, up.base, up.data, cfg.model.dtype,
                     bool(cfg.model.trust_remote_code))
    if evaluate:
        for ref in (up.base, up.aligned):
            if ref is not None:
                P.evaluate_stage(up.store, cfg, ref, up.data)
    print(f"ready: {up.data.kind} data {up.data.artifact.key}, aligned {up.aligned.key}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    evaluate = "--evaluate" in args
    run_cli(lambda: prepare([a for a in args if a != "--evaluate"], evaluate))


if __name__ == "__main__":
    main()
