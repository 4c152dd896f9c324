"""Build the shared upstream artifacts of a study before its sweep: ``python -m experiments.prepare [overrides]``.

World, base and aligned model (and, for an alignment-stage defence named by ``method=``, its aligned model),
with all of torch's threads (unless ``threads=N`` is given): a parallel sweep runs one thread per job, and its first jobs would otherwise build
these serial stages on one thread while the others wait on the lock.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from pact import pipeline as P
from pact.config import validate
from pact.store import Store

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(sys.argv[1:] if argv is None else argv)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = validate(compose("config", overrides=["threads=0", *overrides]))  # threads=N still wins
    P.set_threads(cfg)
    store = Store(cfg.store_dir)
    world = P.world_stage(store, cfg.world)
    base, aligned = P.model_refs(store, cfg, world)
    P.defended_alignment(store, cfg, base, world)
    print(f"ready: world {world.key}, aligned {aligned.key}")


if __name__ == "__main__":
    main()
