"""Run records: one JSON file per evaluated model under ``runs_dir/<experiment>/``, the only input of the report.

A record holds its identity (:data:`IDENTITY`: the columns that name a row of ``summary.csv``), the metrics,
the sweep ``variant``, how it was made (dtype, engine, judge, store keys) and where its artifacts are
(:data:`INTERNAL`: paths and keys, dropped from the summary). Its identity decides its file name, so a rerun
overwrites it; it is written atomically, and under torchrun by rank 0 only.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from pact.runtime import dist
from pact.runtime.fileio import write_atomic
from pact.runtime.store import REPO_ROOT, stable_key

IDENTITY = ("experiment", "model", "method", "task", "poison_ratio", "seed")
INTERNAL = ("keys", "model_path", "evaluation_path", "world_path", "data_path", "tokens_meta", "utility_path")
# Overrides that are identity columns already (or only say where and how a run executes); any other override
# of a run is its `variant` (e.g. ``method.lambda_kl=2.0``), which keeps ablation runs apart.
NOT_VARIANT = ("experiment", "experiment_name", "method", "model", "task", "poison", "poison.ratio", "seed",
               "store_dir", "runs_dir", "threads", "logger", "data", "data.root", "cell", "utility")
REFERENCE_TAG = "ref"  # file-name tag of reference rows (base and aligned models: no poison ratio)


@lru_cache(maxsize=4)
def code_commit(repo: Path = REPO_ROOT) -> str:
    """The code's commit (7 hex digits), "-dirty" when a tracked file outside results/ differs from it; "unknown"
    outside a git checkout. A record carries it (its stages may come from the store, keyed by their own code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        sha = git("rev-parse", "--short=7", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def variant_of(overrides: list[str]) -> str:
    """The overrides that distinguish runs beyond the identity columns (e.g. ``method.lambda_kl=2.0``)."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in NOT_VARIANT
            and not o.startswith("hydra")]
    return ",".join(sorted(keep))


def variant_tag(variant: str) -> str:
    """The short name of a variant in its records' file names (``v8af42608``) and in figures' cut labels."""
    return f"v{stable_key(variant)[:8]}"


def record_path(runs_dir: str | os.PathLike, identity: dict[str, Any], variant: str = "") -> Path:
    """Where the record with this identity (and variant) lives."""
    p = identity["poison_ratio"]
    p_tag = REFERENCE_TAG if p is None else f"p{p:g}"
    v_tag = f"-{variant_tag(variant)}" if variant else ""
    name = f"{identity['model']}-{identity['method']}-{identity['task']}-{p_tag}-s{identity['seed']}{v_tag}.json"
    return Path(runs_dir) / identity["experiment"] / name


def write_record(cfg: Any, method: str, poison_ratio: float | None, seed: int, metrics: dict[str, Any],
                 keys: dict[str, str], paths: dict[str, str], variant: str = "") -> Path:
    """Write the record of one evaluated model of the run configured by ``cfg``; returns its path."""
    identity = {"experiment": cfg.experiment_name, "model": cfg.model.name, "method": method,
                "task": cfg.task.name, "poison_ratio": poison_ratio, "seed": seed}
    record = {**identity, **metrics, "variant": variant, "dtype": cfg.model.dtype, "engine": cfg.engine.name,
              "judge": cfg.judge.name, "code_commit": code_commit(), "keys": keys, **paths}
    path = record_path(cfg.runs_dir, identity, variant)
    if dist.is_main():
        write_atomic(path, json.dumps(record, indent=2, sort_keys=True, default=str))
    return path


def read_records(runs_dir: str | os.PathLike, experiments: list[str] | None = None) -> list[dict[str, Any]]:
    """Every record under ``runs_dir`` (of ``experiments`` only, if given), in file-name order."""
    rows = []
    for path in sorted(Path(runs_dir).glob("*/*.json")):
        record = json.loads(path.read_text())
        if not experiments or record.get("experiment") in experiments:
            rows.append(record)
    return rows
