"""Cost of each method relative to SFT on the same data and steps: ``python -m experiments.bench`` (``make bench``).

Every variant fine-tunes the same aligned model on the same rows in a fresh subprocess (so peak memory is its
own) with a private store that links the shared upstream artifacts (world, base, align, tokens) but nothing
fine-tuning made, so the PACT reference cache is built inside the measured run. Reported: the Trainer's
per-step time, the whole stage's wall time (cache build included) and the process's peak RSS, each relative to
SFT with the same adapter. A benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from analysis.provenance import recording
from experiments.bench_variant import PREFIX
from pact.run import pipeline as P
from pact.run.cli import fail, run_cli
from pact.run.config import CONF_DIR, compose_config
from pact.runtime.fileio import write_atomic
from pact.tokens_stage import tokens_stage

ROOT = CONF_DIR.parent
SHARED_STAGES = ("world", "data", "import", "base", "align", "tokens", "safety_pairs", "safety_layers")
ANALYSIS = OmegaConf.load(CONF_DIR / "analysis.yaml")
TITLE = "# Cost of PACT relative to SFT"


def prepare_upstream(overrides: list[str]) -> Path:
    """Build (or reuse) the shared artifacts in the main store; return its root."""
    cfg = compose_config(["method=pact", *overrides])
    up = P.start(cfg)
    tokens_stage(up.store, cfg.method.tokens, up.aligned, up.base, up.data, cfg.model.dtype)
    (up.store.root / "safety_layers").mkdir(exist_ok=True)
    return up.store.root.resolve()


def run_variant(main_store: Path, overrides: list[str], shared: tuple[str, ...] = SHARED_STAGES,
                mode: str = "finetune") -> dict:
    with tempfile.TemporaryDirectory(prefix="pact-bench-") as tmp:
        for stage in shared:
            os.symlink(main_store / stage, Path(tmp) / stage)
        cmd = [sys.executable, "-m", "experiments.bench_variant", mode, *overrides, f"store_dir={tmp}"]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if done.returncode != 0:
            raise RuntimeError(f"bench variant {overrides} failed:\n{done.stderr[-3000:]}")
        line = next(x for x in done.stdout.splitlines() if x.startswith(PREFIX))
        return json.loads(line[len(PREFIX):])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/bench.md")
    parser.add_argument("--settings", default="bench", help="the block of conf/analysis.yaml to run (bench, "
                        "bench_smollm2): its variants become one section of --out, replacing the same section")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides shared by all variants")
    args = parser.parse_args(argv)
    if args.settings not in ANALYSIS or "variants" not in ANALYSIS[args.settings]:
        run_cli(lambda: fail(f"--settings {args.settings}: no such bench block in conf/analysis.yaml"))
    settings = ANALYSIS[args.settings]
    overrides = [*settings.overrides, *args.overrides]
    main_store = run_cli(lambda: prepare_upstream(overrides))
    rows = []
    for variant in settings.variants:
        res = run_variant(main_store, [*overrides, *variant.overrides])
        label, adapter = variant.label, res["adapter"]
        steps = res["train"]["train_runtime"] * res["train"]["train_steps_per_second"]
        res.update(label=label, steps=round(steps),
                   step_s=res["train"]["train_runtime"] / max(steps, 1))
        rows.append(res)
        print(f"{adapter:5s} {label:32s} step {res['step_s'] * 1000:7.1f} ms  stage {res['wall']:6.1f} s  "
              f"peak RSS {res['max_rss_mb']:7.0f} MB", flush=True)
    # Alignment-stage defences (Vaccine) change the alignment stage: time align_steps steps with and without.
    align_steps = int(settings.align_steps)
    align_rows = []
    for variant in settings.align_variants:
        res = run_variant(main_store, [*overrides, *variant.overrides,
                                       f"model.align_train.max_steps={align_steps}"], ("world", "base"), mode="align")
        label = variant.label
        res.update(label=label, step_s=res["train"]["train_runtime"] / align_steps)
        align_rows.append(res)
        print(f"align {label:32s} step {res['step_s'] * 1000:7.1f} ms  peak RSS {res['max_rss_mb']:7.0f} MB",
              flush=True)
    sft = {r["adapter"]: r for r in rows if r["label"] == "SFT"}
    command = " ".join(["python -m experiments.bench", f"--settings {args.settings}", *args.overrides])
    lines = [f"Command: `{command}` (conf/analysis.yaml `{args.settings}`: {' '.join(overrides) or 'defaults'}). "
             "Same aligned model, same rows, "
             "same steps; each variant in a fresh process with no fine-tuning artifacts cached (the PACT "
             "reference cache is built inside the measured stage). Step = the Trainer's mean step time; stage = "
             "the whole fine-tuning stage (loading, cache build, training, saving); peak = the process's peak RSS "
             "(includes ~0.5 GB of Python and torch). Ratios are against SFT with the same adapter.", "",
             "| adapter | method | steps | step (ms) | step / SFT | stage (s) | stage / SFT | cache build (s) | "
             "peak RSS (MB) | peak / SFT |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = sft[r["adapter"]]
        cache = r["method_stats"].get("ref_cache_seconds", "–")
        lines.append(f"| {r['adapter']} | {r['label']} | {r['steps']} | {1000 * r['step_s']:.1f} | "
                     f"{r['step_s'] / s['step_s']:.2f}x | {r['wall']:.1f} | {r['wall'] / s['wall']:.2f}x | "
                     f"{cache} | {r['max_rss_mb']:.0f} | {r['max_rss_mb'] / s['max_rss_mb']:.2f}x |")
    if align_rows:
        plain = align_rows[0]
        lines += ["", f"Alignment stage, {align_steps} steps from the same base model (Vaccine's two passes per "
                  "step):", "", "| stage | step (ms) | step / plain | peak RSS (MB) | peak / plain |",
                  "|---|---|---|---|---|"]
        for r in align_rows:
            lines.append(f"| {r['label']} | {1000 * r['step_s']:.1f} | {r['step_s'] / plain['step_s']:.2f}x | "
                         f"{r['max_rss_mb']:.0f} | {r['max_rss_mb'] / plain['max_rss_mb']:.2f}x |")
    out = Path(args.out)
    with recording(out.parent, "experiments.bench", argv):
        write_section(out, settings.title, lines)
    print(f"wrote section {settings.title!r} of {out}")


def write_section(path: Path, title: str, lines: list[str]) -> None:
    """Write ``lines`` as the ``## title`` section of ``path``, keeping its other sections (a file from before
    sections, or any text above the first section, is replaced by the file's title)."""
    sections: dict[str, str] = {}
    if path.exists():
        for part in re.split(r"(?m)^## ", path.read_text())[1:]:
            sections[part.split("\n", 1)[0]] = "## " + part.rstrip("\n")
    sections[title] = "\n".join([f"## {title}", "", *lines]).rstrip("\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n\n".join([TITLE, *sections.values()]) + "\n")


if __name__ == "__main__":
    main()
