"""Build the shared upstream artifacts of a study before its sweep: ``python -m experiments.prepare [overrides]``.

The data (toy world or real sources), base and aligned model (and, for an alignment-stage defence named by
``method=``, its aligned model; for a PACT method, its safety tokens; with ``--evaluate``, the base and aligned
model's evaluations and records too), with all of torch's threads (unless ``threads=N`` is given): a parallel sweep
runs one thread per job, and its first jobs would otherwise build these serial stages on one thread while the others
wait on the lock. The two reference evaluations run side by side on a CPU, one thread each
(:func:`evaluate_references`).
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor

import torch

from pact.run import pipeline as P
from pact.run.cli import OVERRIDES, exit_on_help, run_cli
from pact.run.config import compose_config
from pact.runtime import dist
from pact.runtime.store import Artifact, Store
from pact.tokens_stage import intra_op_threads, tokens_stage

log = logging.getLogger("experiments.prepare")


def prepare(overrides: list[str], evaluate: bool = False) -> None:
    """Build the upstream artifacts of the config made of ``overrides`` (with ``evaluate``, also the evaluations
    of the base and aligned model, the sweep's reference rows)."""
    cfg = compose_config(["threads=0", *overrides])  # threads=N still wins
    up = P.start(cfg)
    P.defended_alignment(up.store, cfg, up.base, up.aligned, up.data)
    if "tokens" in cfg.method:  # PACT: the safety set (both models' passes side by side, one thread each)
        tokens_stage(up.store, cfg.method.tokens, up.aligned, up.base, up.data, cfg.model.dtype,
                     bool(cfg.model.trust_remote_code))
    if evaluate:
        evaluate_references(overrides, cfg, up)
        from experiments.run import reference_records

        reference_records(cfg, up)  # their records, as a sweep's first run writes them
    print(f"ready: {up.data.kind} data {up.data.artifact.key}, aligned {up.aligned.key}")


def evaluate_references(overrides: list[str], cfg, up: P.Upstream) -> None:
    """The base and aligned model's evaluations (the sweep's reference rows). On a CPU with two threads or more and
    the HF engine each runs on one thread, the two side by side in two processes: the answers of a one-thread
    sweep job whatever is cached, in less time than one model after the other on both threads, since greedy
    decoding of one batch barely gains from a second thread (SmolLM2, slower machine type: 270 s -> ~170 s;
    docs/reproducibility.md). Processes, not threads: transformers' model loading patches torch.nn.Module for the
    whole process."""
    refs = {name: ref for name, ref in (("base", up.base), ("aligned", up.aligned)) if ref is not None}
    if cfg.engine.name != "hf" or dist.compute_device().type != "cpu" or torch.get_num_threads() < 2:
        for ref in refs.values():
            P.evaluate_stage(up.store, cfg, ref, up.data)
        return
    missing = [name for name, ref in refs.items() if not evaluated(up.store, cfg, ref, up.data)]
    if len(missing) < 2:
        with intra_op_threads(1):
            for name in missing:
                P.evaluate_stage(up.store, cfg, refs[name], up.data)
        return
    log.info("evaluating %s side by side, one thread each", " and ".join(missing))
    with ProcessPoolExecutor(len(missing), mp_context=multiprocessing.get_context("spawn")) as pool:
        for job in [pool.submit(evaluate_one, overrides, name) for name in missing]:
            job.result()


class _ReuseOnly(Store):
    """A view of a store that reuses what it holds and builds nothing (LookupError instead)."""

    def build(self, stage, config, upstream, builder) -> Artifact:
        key = self.key(stage, config, upstream)
        if not self.done(stage, key):
            raise LookupError(f"{stage} {key}")
        return Artifact(stage, key, self.path(stage, key))


def evaluated(store: Store, cfg, ref, data) -> bool:
    """Whether ``store`` holds the evaluation of ``ref`` (and every stage under it)."""
    try:
        P.evaluate_stage(_ReuseOnly(store.root), cfg, ref, data)
    except LookupError:
        return False
    return True


def evaluate_one(overrides: list[str], name: str) -> None:
    """The evaluation of the ``name`` (base or aligned) model of the config made of ``overrides``, on one thread
    (a process of :func:`evaluate_references`; its upstream stages are in the store by then)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = compose_config(["threads=0", *overrides, "threads=1"])
    up = P.start(cfg)
    P.evaluate_stage(up.store, cfg, getattr(up, name), up.data)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    exit_on_help(args, "experiments.prepare", __doc__, f"[--evaluate] {OVERRIDES}")
    evaluate = "--evaluate" in args
    run_cli(lambda: prepare([a for a in args if a != "--evaluate"], evaluate))


if __name__ == "__main__":
    main()
