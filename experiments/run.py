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
import sys
import time
from contextlib import nullcontext, redirect_stderr
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from pact.data.rows import read_jsonl
from pact.run import pipeline as P
from pact.run.cli import run_cli, user_errors
from pact.run.config import compose_config, toy_settings_warning, validate
from pact.runtime import dist
from pact.runtime.records import variant_of, write_record
from pact.runtime.store import Artifact

log = logging.getLogger("experiments.run")


def run(cfg: DictConfig, variant: str = "") -> dict[str, Any]:
    """Run all stages for one config; returns the fine-tuned model's metrics. ``variant`` names the overrides
    that set this run apart beyond the summary's identity columns (part of its record's name)."""
    cfg = validate(cfg)
    start = time.time()
    up = P.start(cfg)  # torchrun: every rank trains, rank 0 alone generates, judges and writes (pact/runtime/store.py)
    store, data, base, aligned = up.store, up.data, up.base, up.aligned
    data_path = {f"{next(iter(data.upstream))}_path": str(data.path)}  # world_path (toy) or data_path (real)
    logger = start_logger(cfg, variant)
    reference_records(cfg, up)
    defended = P.defended_alignment(store, cfg, base, aligned, data)
    if defended is not None:  # alignment-stage defence: its aligned model is a reference row too
        evaluation = P.evaluate_stage(store, cfg, defended, data)
        metrics, paths = with_utility(cfg, up, defended, P.load_metrics(evaluation),
                                      {"model_path": defended.path, "evaluation_path": evaluation.path, **data_path})
        write_record(cfg, f"{cfg.method.id}_aligned", None, int(cfg.model.seed), metrics,
                     {"model": defended.key, **data.upstream}, paths)
        aligned = defended
    tuned = P.finetune_stage(store, cfg, aligned, data, base)
    dist.release_memory()  # the fine-tune's memory is not the evaluation's
    evaluation = P.evaluate_stage(store, cfg, tuned, data)
    metrics, paths = with_utility(cfg, up, tuned, P.load_metrics(evaluation),
                                  {"model_path": tuned.path, "evaluation_path": evaluation.path, **data_path})
    ft_meta = json.loads((Path(tuned.path).parent / "meta.json").read_text())
    tokens_dir = ft_meta.get("method_stats", {}).get("tokens_dir")
    if tokens_dir:
        paths["tokens_meta"] = str(Path(tokens_dir) / "meta.json")
    path = write_record(cfg, cfg.method.id, float(cfg.poison.ratio), int(cfg.seed), metrics,
                        {"model": tuned.key, "aligned": aligned.key, **data.upstream}, paths, variant)
    if logger is not None:
        logger.log({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        if cfg.logger.log_generations:
            logger.log({"eval/generations": generations_table(cfg, evaluation)})
        logger.finish()
    shown = ("harmful_score", "refusal_rate", "other_rate", "finetune_accuracy", "helpfulness")
    log.info("run %s done in %.1fs: HS %.1f  refusal %.1f  other %.1f  FA %.1f  helpful %.1f -> %s",
             P.run_name(cfg), time.time() - start, *(metrics.get(k, math.nan) for k in shown), path)
    return metrics


def reference_records(cfg: DictConfig, up: P.Upstream) -> None:
    """The records of the models before fine-tuning (base and aligned: the study's reference rows), from their
    evaluations (built here when the store lacks them)."""
    data_path = {f"{next(iter(up.data.upstream))}_path": str(up.data.path)}
    for name, ref in (("base", up.base), ("aligned", up.aligned)):
        if ref is None:
            continue
        evaluation = P.evaluate_stage(up.store, cfg, ref, up.data)
        metrics, paths = with_utility(cfg, up, ref, P.load_metrics(evaluation),
                                      {"model_path": ref.path, "evaluation_path": evaluation.path, **data_path})
        write_record(cfg, name, None, int(cfg.model.seed), metrics, {"model": ref.key, **up.data.upstream}, paths)


def with_utility(cfg: DictConfig, up: P.Upstream, ref, metrics: dict[str, Any],
                 paths: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """A record's metrics and paths with the model's utility measures added when ``utility`` is on
    (pact.evaluation.utility: built here, or reused from the store)."""
    if not cfg.utility.enabled:
        return metrics, paths
    from pact.evaluation.utility import load_utility, utility_stage

    art = utility_stage(up.store, cfg, ref, up.data)
    return {**metrics, **load_utility(art)}, {**paths, "utility_path": str(art.path)}


def generations_table(cfg: DictConfig, evaluation: Artifact):
    """A wandb Table of the first ``logger.generations_per_set`` judged generations of each evaluation set, with
    the stored verdict of the configured judge (task rows: the parsed answer and whether it is right). Opt-in:
    ``logger.log_generations``."""
    import wandb

    table = wandb.Table(columns=["set", "prompt", "response", "verdict"])
    shown: dict[str, int] = {}
    for rec in read_jsonl(evaluation.file("generations.jsonl"), ("set", "prompt", "response")):
        if shown.get(rec["set"], 0) >= int(cfg.logger.generations_per_set):
            continue
        shown[rec["set"]] = shown.get(rec["set"], 0) + 1
        if rec["set"] == "task":
            verdict = f"{rec['parsed']} ({'right' if rec['correct'] else 'wrong'})"
        else:
            verdict = rec["verdicts"][cfg.judge.name]
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
def hydra_main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    # one run: a bad value ends in one line here (Hydra would print its job report around it); in a sweep
    # the launcher reports the failed job and the other jobs keep what they built
    with user_errors() if hydra_cfg.mode == RunMode.RUN else nullcontext():
        metrics = run(cfg, variant_of(list(hydra_cfg.overrides.task)))
    hs = metrics["harmful_score"]
    return hs if not math.isnan(hs) else 0.0


SHOW_CONFIG_FLAGS = ("--cfg", "-c")  # Hydra's flags that print the composed config instead of running


def warn_shown_config(argv: list[str]) -> None:
    """Hydra's ``--cfg`` prints the composed config and exits without calling the task function, so validation's
    warnings never run: the hub model's toy-settings warning (pact.run.config.toy_settings_warning) is printed here, to
    stderr beside the config. Anything Hydra would refuse (a bad override, a sweep) is left for Hydra to report."""
    if not any(a in SHOW_CONFIG_FLAGS or a.startswith("--cfg=") for a in argv):
        return
    from hydra._internal.utils import get_args_parser  # Hydra's own command line: the overrides, as it reads them

    try:
        with open(os.devnull, "w") as quiet, redirect_stderr(quiet):
            args, _ = get_args_parser().parse_known_args(argv)
        if args.config_path or args.config_name or args.config_dir:  # another config than conf/config.yaml
            return
        message = toy_settings_warning(compose_config(args.overrides, check=False))
    except (Exception, SystemExit):  # noqa: BLE001 - Hydra reports it in its own words next
        return
    if message:
        print(f"warning: {message}", file=sys.stderr)


def main() -> None:
    """``python -m experiments.run [overrides]``: bad input ends in one line and exit status 2."""
    warn_shown_config(sys.argv[1:])
    run_cli(hydra_main)


if __name__ == "__main__":
    main()
