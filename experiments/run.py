"""One run through the stages: ``python -m experiments.run [overrides]`` (Hydra; ``-m`` sweeps).

Every stage's artifact is reused when it exists (outputs/store); the run writes one JSON record per evaluated
model (base and aligned reference rows, and the fine-tuned model) under ``runs_dir/<experiment>/``, which
``python -m analysis.report`` collects into summary.csv.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pact import dist
from pact import pipeline as P
from pact.config import validate
from pact.store import Store, stable_key

log = logging.getLogger("experiments.run")


# Overrides that are already columns of summary.csv; any other override of a run is its `variant`.
IDENTITY_KEYS = ("experiment", "experiment_name", "method", "model", "task", "poison", "poison.ratio", "seed",
                 "store_dir", "runs_dir", "threads", "logger")


def variant_of(overrides: list[str]) -> str:
    """The overrides that distinguish runs beyond the identity columns (e.g. ``method.lambda_kl=2.0``)."""
    keep = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in IDENTITY_KEYS
            and not o.startswith("hydra")]
    return ",".join(sorted(keep))


def write_record(cfg: DictConfig, method: str, poison_ratio: float | None, seed: int, metrics: dict[str, Any],
                 keys: dict[str, str], paths: dict[str, str], variant: str = "") -> Path:
    """Write the run record atomically; its identity decides its file name (a rerun overwrites it). Under
    torchrun only rank 0 writes."""
    record = {"experiment": cfg.experiment_name, "model": cfg.model.name, "method": method,
              "task": cfg.task.name, "poison_ratio": poison_ratio, "seed": seed, **metrics,
              "variant": variant, "dtype": cfg.model.dtype, "engine": cfg.engine.name, "judge": cfg.judge.name,
              "keys": keys, **paths}
    p_tag = "ref" if poison_ratio is None else f"p{poison_ratio:g}"
    v_tag = f"-v{stable_key(variant)[:8]}" if variant else ""
    path = (Path(cfg.runs_dir) / cfg.experiment_name /
            f"{cfg.model.name}-{method}-{cfg.task.name}-{p_tag}-s{seed}{v_tag}.json")
    if not dist.is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)
    return path


def run(cfg: DictConfig, variant: str = "") -> dict[str, Any]:
    """Run all stages for one config; returns the fine-tuned model's metrics. ``variant`` names the overrides
    that set this run apart beyond the summary's identity columns (part of its record's name)."""
    cfg = validate(cfg)
    dist.init()  # torchrun: all ranks run every stage, rank 0 writes (pact/dist.py)
    P.set_threads(cfg)
    start = time.time()
    store = Store(cfg.store_dir)
    logger = start_logger(cfg, variant)
    world = P.world_stage(store, cfg.world)
    base, aligned = P.model_refs(store, cfg, world)
    for name, ref in (("base", base), ("aligned", aligned)):
        if ref is None:
            continue
        metrics = P.evaluate_stage(store, cfg, ref, world)
        write_record(cfg, name, None, int(cfg.model.seed), metrics, {"model": ref.key, "world": world.key},
                     {"model_path": ref.path, "world_path": str(world.path)})
    defended = P.defended_alignment(store, cfg, base, world)
    if defended is not None:  # alignment-stage defence: its aligned model is a reference row too
        metrics = P.evaluate_stage(store, cfg, defended, world)
        write_record(cfg, f"{cfg.method.id}_aligned", None, int(cfg.model.seed), metrics,
                     {"model": defended.key, "world": world.key},
                     {"model_path": defended.path, "world_path": str(world.path)})
        aligned = defended
    tuned = P.finetune_stage(store, cfg, aligned, world, base)
    metrics = P.evaluate_stage(store, cfg, tuned, world)
    paths = {"model_path": tuned.path, "world_path": str(world.path)}
    ft_meta = json.loads((Path(tuned.path).parent / "meta.json").read_text())
    tokens_dir = ft_meta.get("method_stats", {}).get("tokens_dir")
    if tokens_dir:
        paths["tokens_meta"] = str(Path(tokens_dir) / "meta.json")
    path = write_record(cfg, cfg.method.id, float(cfg.poison.ratio), int(cfg.seed), metrics,
                        {"model": tuned.key, "aligned": aligned.key, "world": world.key}, paths, variant)
    if logger is not None:
        logger.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        if cfg.logger.log_generations:
            logger.log({"eval/generations": generations_table(cfg, P.generate_stage(store, cfg, tuned, world))})
        logger.finish()
    log.info("run %s done in %.1fs: HS %.1f  refusal %.1f  other %.1f  FA %.1f  helpful %.1f -> %s",
             P.run_name(cfg), time.time() - start, metrics["harmful_score"], metrics["refusal_rate"],
             metrics["other_rate"], metrics["finetune_accuracy"], metrics["helpfulness"], path)
    return metrics


def generations_table(cfg: DictConfig, generations: Any):
    """A wandb Table of the first ``logger.generations_per_set`` generations of each evaluation set with the
    judge's verdict (task rows: the parsed answer and whether it is right). Opt-in: ``logger.log_generations``."""
    import wandb

    from pact.data import read_jsonl
    from pact.judges import JUDGES
    from pact.metrics import parse_answer

    table = wandb.Table(columns=["set", "prompt", "response", "verdict"])
    shown: dict[str, int] = {}
    for rec in read_jsonl(generations.file("generations.jsonl"), ("set", "prompt", "response")):
        if shown.get(rec["set"], 0) >= int(cfg.logger.generations_per_set):
            continue
        shown[rec["set"]] = shown.get(rec["set"], 0) + 1
        if rec["set"] == "task":
            parsed = parse_answer(cfg.task.name, rec["response"])
            verdict = f"{parsed} ({'right' if parsed == rec['label'] else 'wrong'})"
        else:
            verdict = JUDGES[cfg.judge.name](rec, rec["response"])
        table.add_data(rec["set"], rec["prompt"], rec["response"], verdict)
    return table


def start_logger(cfg: DictConfig, variant: str = ""):
    """An active wandb run when ``logger=wandb`` (the Trainer's callback reuses it), else None. Runs are grouped
    by experiment and tagged by method, task, p, seed and sweep variant, so a dashboard can compare them."""
    if cfg.logger.name != "wandb" or not dist.is_main():
        return None
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    import wandb

    return wandb.init(project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode,
                      group=cfg.experiment_name, name=P.run_name(cfg) + (f"-{variant}" if variant else ""),
                      tags=[cfg.method.id, cfg.task.name, f"p={cfg.poison.ratio:g}", f"seed={cfg.seed}",
                            *([variant] if variant else [])],
                      config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    metrics = run(cfg, variant_of(list(HydraConfig.get().overrides.task)))
    hs = metrics["harmful_score"]
    return hs if not math.isnan(hs) else 0.0


if __name__ == "__main__":
    main()
