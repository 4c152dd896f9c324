"""The paper's table dry-run on CPU: ``python -m tests.paper_dry_run OUT`` (``make paper-dry-run``).

``experiment=paper_llama31`` exactly as a GPU user runs it (its whole multirun: every cell of the official grid times
every method it lists; then the full-parameter methods and Vaccine's route, its own alignment of the aligned model
then the fine-tune, on one cell), with four changes that keep its code path and
make it run in minutes on a CPU: tiny random Llama-3-shaped models (Llama 3's BOS, added to text as Llama 3's
tokenizer does, and a Llama-3-shaped chat template) stand in for the aligned, base and guard models; fixture files in
the official schemas stand in for the data (tests/realdata.py); one optimiser step, two prompts per benchmark, a few
new tokens, ``engine=hf``; two cells at a time, one thread each (Hydra's joblib launcher, as the CPU studies run),
where a GPU box runs them one by one. Then ``analysis.report`` on its records. Every cell must leave a record: the
script checks and exits non-zero naming the missing ones.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from tests.realdata import data_overrides, tiny_guard, tiny_hub_model, write_sources

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "conf" / "experiment" / "paper_llama31.yaml"
DRY_RUN = "paper_dry_run"   # experiment_name of the dry run's records
# The full-parameter methods of the table (an FSDP launch on GPUs: docs/gpu.md), dry-run on one cell
FULL_METHODS = ("constrained_sft", "pact", "sft")
FULL_CELL = "sst2_p01"
# Vaccine's route (method.align: its alignment of the aligned model, then the LoRA fine-tune), on the same cell, its
# alignment as small as the fine-tunes: four alignment pairs, one step
VACCINE = "vaccine_lora"
VACCINE_SMALL = ["method.align.rows=4", "++method.align.optim.max_steps=1", "method.align.optim.batch_size=4"]
# What makes the dry run small; everything else is the experiment's own
SMALL = ["++finetune.optim.max_steps=1", "finetune.optim.batch_size=4", "model.max_len=128", "eval.limit=2",
         "eval.harmful_max_new_tokens=4", "eval.benign_max_new_tokens=4", "task.max_new_tokens=3",
         "guard.max_new_tokens=3", "engine.batch_size=16"]
# Two cells at a time on a 2-core CPU: the same jobs as the experiment's basic launcher (the sweeper expands the grid
# before any launcher sees it), in half the wall time; the stages they share are built once (the store's file locks)
PARALLEL = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "threads=1"]


def standins(out: Path) -> dict[str, Path]:
    """The fixture data and the tiny aligned, base and guard models under ``out`` (written once)."""
    paths = {"data": out / "data", "aligned": out / "aligned", "base": out / "base", "guard": out / "guard"}
    if not (paths["data"] / "MANIFEST.json").exists():
        write_sources(paths["data"])
    for name, seed in (("aligned", 0), ("base", 1)):
        if not (paths[name] / "config.json").exists():
            tiny_hub_model(paths[name], seed=seed, text_bos=True)
    if not (paths["guard"] / "config.json").exists():
        tiny_guard(paths["guard"], text_bos=True)
    return paths


def standin_overrides(out: Path, data: str = "pact_official") -> list[str]:
    """Overrides that swap the hub models for the tiny stand-ins and the data for the fixtures (nothing else)."""
    p = standins(out)
    return [*data_overrides(p["data"], data), "model.name=tiny-llama3", f"model.aligned={p['aligned']}",
            f"model.base={p['base']}", f"guard.model={p['guard']}", f"store_dir={out / 'store'}",
            f"runs_dir={out / 'runs'}"]


def dry_overrides(out: Path) -> list[str]:
    """The stand-ins, the small sizes, engine=hf and two jobs at a time, with the records under the dry run's own
    experiment name."""
    return [*standin_overrides(out), "engine=hf", *SMALL, *PARALLEL, f"experiment_name={DRY_RUN}"]


def grid() -> list[tuple[str, str]]:
    """Every (cell, method) of the experiment's multirun, read from its sweep."""
    params = OmegaConf.load(EXPERIMENT).hydra.sweeper.params
    return list(itertools.product(str(params["+cell"]).split(","), str(params.method).split(",")))


def cell_identity(cell: str) -> tuple[str, float]:
    """(task, poison ratio) of a cell of conf/cell/."""
    conf = OmegaConf.load(ROOT / "conf" / "cell" / f"{cell}.yaml")
    return conf.defaults[0]["override /task"], float(conf.poison.ratio)


def run(args: list[str], log: Path) -> None:
    """``python -m experiments.run args``, its output in ``log``; a failure ends the dry run naming the log."""
    with log.open("w") as fh:
        done = subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=ROOT, stdout=fh,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"error: python -m experiments.run experiment=paper_llama31 ... failed: see {log}")


def missing_records(out: Path) -> list[str]:
    """The grid's (and the full-parameter methods') cells without a record."""
    have = set()
    for path in (out / "runs" / DRY_RUN).glob("*.json"):
        r = json.loads(path.read_text())
        if r["poison_ratio"] is not None:
            have.add((r["method"], r["task"], float(r["poison_ratio"])))
    want = [(m, *cell_identity(c)) for c, m in grid()]
    want += [(m, *cell_identity(FULL_CELL)) for m in (*FULL_METHODS, VACCINE)]
    return [f"{m} {t} p={p:g}" for m, t, p in want if (m, t, p) not in have]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m tests.paper_dry_run OUT")
    out = Path(args[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    overrides = dry_overrides(out)
    run(["experiment=paper_llama31", *overrides, f"hydra.sweep.dir={out / 'multirun'}"], out / "grid.log")
    run(["experiment=paper_llama31", *overrides, f"hydra.sweep.dir={out / 'multirun_full'}",
         f"+cell={FULL_CELL}", f"method={','.join(FULL_METHODS)}"], out / "full.log")
    run(["experiment=paper_llama31", *overrides, f"hydra.sweep.dir={out / 'multirun_vaccine'}",
         f"+cell={FULL_CELL}", f"method={VACCINE}", *VACCINE_SMALL], out / "vaccine.log")
    missing = missing_records(out)
    if missing:
        raise SystemExit(f"error: {len(missing)} cells have no record: {', '.join(missing)}")
    done = subprocess.run([sys.executable, "-m", "analysis.report", "--runs", str(out / "runs"), "--out",
                           str(out / "report")], cwd=ROOT)
    if done.returncode:
        raise SystemExit("error: analysis.report failed on the dry run's records")
    cells = len(grid()) + len(FULL_METHODS) + 1
    print(f"paper dry run: {cells} cells, every one with a record, in {time.time() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
