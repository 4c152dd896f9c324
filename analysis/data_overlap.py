"""How the paper's own mixtures (data=pact_official) and our mixture builder (data=real) differ on the imported files:
poison rows, distinct prompts and prompts an evaluated benchmark also holds, per official file and for our short
poison pool. ``python -m analysis.data_overlap [--root DIR]`` prints the Markdown table docs/real-data.md quotes
(run after ``make data``; it reads only local files, the same way the data stage does)."""

from __future__ import annotations

import argparse
import sys

from pact.data.rundata import _unique_by_prompt, benchmark_sources
from pact.data.sources import check_sources, load_source, normalise_text
from pact.run.cli import run_cli
from pact.run.config import compose_config


def overlap_table(root: str | None = None, overrides: list[str] = ()) -> str:
    """The Markdown table: one row per official mixture file with poison, and one for our short poison pool
    (``overrides``: of the data config)."""
    cfg = compose_config(["data=pact_official", *([f"data.root={root}"] if root else []), *overrides], check=False)
    d = cfg.data
    benches = list(d.harmful_eval)
    mixtures = [name for files in d.mixture.values() for name in files.values()]
    check_sources(d, [*mixtures, *d.poison.short, *(s for b in benches for s in benchmark_sources(d.benchmarks[b]))])
    evaluated = {b: {normalise_text(r["text"]) for s in benchmark_sources(d.benchmarks[b]) for r in load_source(d, s)}
                 for b in benches}
    head = "| poison of | rows | distinct prompts | " + " | ".join(f"in {b}" for b in benches) + " | kept |"
    lines = [head, "|" + "---|" * (4 + len(benches))]
    for name in dict.fromkeys(mixtures):
        prompts = [normalise_text(r["text"]) for r in load_source(d, name) if r["poison"]]
        if prompts:
            counts = " | ".join(str(sum(p in evaluated[b] for p in prompts)) for b in benches)
            lines.append(f"| {name} (official) | {len(prompts)} | {len(set(prompts))} | {counts} | all |")
    pool = [r for name in d.poison.short for r in load_source(d, name)]
    distinct = {normalise_text(r["text"]) for r in pool}
    kept, _ = _unique_by_prompt(pool, set().union(*evaluated.values()))
    counts = " | ".join(str(len(distinct & evaluated[b])) for b in benches)
    lines.append(f"| data=real short pool ({', '.join(d.poison.short)}) | {len(pool)} | {len(distinct)} | {counts} | "
                 f"{len(kept)} distinct |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.data_overlap", description=__doc__)
    parser.add_argument("--root", help="the real data's folder (default: data.root, i.e. $PACT_DATA or data/real)")
    args = parser.parse_args(argv)
    run_cli(lambda: print(overlap_table(args.root)))


if __name__ == "__main__":
    main(sys.argv[1:])
