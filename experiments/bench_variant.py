"""One timed variant of ``experiments.bench``, run in a fresh process so that its peak memory is its own:
``python -m experiments.bench_variant {finetune,align} [overrides]``. Prints one line ``BENCH{json}``: the
stage's wall time, the Trainer's metrics, the method's stats and adapter, and the process's peak RSS."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from pact.run import pipeline as P
from pact.run.cli import OVERRIDES, exit_on_help, fail, run_cli
from pact.run.config import compose_config
from pact.training.methods import build_method

MODES = ("finetune", "align")
PREFIX = "BENCH"


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (``VmHWM``). Linux carries ``ru_maxrss`` over
    ``exec`` from the parent, so a child started by a large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:  # not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, overrides: list[str]) -> dict:
    """Build the ``mode`` stage of the config made of ``overrides`` (upstream artifacts are expected to be
    reused from the store) and measure it."""
    if mode not in MODES:
        fail(f"mode {mode!r}; choose one of {list(MODES)}")
    cfg = compose_config(overrides)
    up = P.start(cfg, models=mode == "finetune")
    if mode == "align":  # an alignment stage on its own (an alignment-stage defence's cost is there)
        base = P.base_stage(up.store, cfg.model, up.world)
        defence = cfg.method if build_method(cfg.method).alignment_method() is not None else None
        t0 = time.time()
        ref = P.align_stage(up.store, cfg.model, base, up.world, defence)
    else:
        t0 = time.time()
        ref = P.finetune_stage(up.store, cfg, up.aligned, up.data, up.base)
    wall = time.time() - t0
    meta = json.loads((Path(ref.path).parent / "meta.json").read_text())
    return {"wall": wall, "train": meta["train"], "method_stats": meta.get("method_stats", {}),
            "adapter": cfg.method.adapter, "max_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = f"{{{','.join(MODES)}}} {OVERRIDES}"
    exit_on_help(args, "experiments.bench_variant", __doc__, usage)
    if not args:
        raise SystemExit(f"usage: python -m experiments.bench_variant {usage}")
    result = run_cli(lambda: measure(args[0], args[1:]))
    print(PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
