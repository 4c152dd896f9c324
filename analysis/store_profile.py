"""Where a study's time goes, from its store: ``python -m analysis.store_profile [--store DIR] [--wall SECONDS]``.

Every artifact's ``meta.json`` records how long its builder ran (``seconds``, pact/runtime/store.py). Per stage: how
many artifacts, their mean and total seconds and, given the study's wall time (``--wall``), the total's share of it.
What no stage accounts for (process start, imports, Hydra, records, reports) is the wall time minus the stages'
total, shown when the stages leave some; under a sweep of parallel jobs the stages' total can exceed the wall time
(``--jobs`` multiplies the wall time by the workers it had).
Artifacts are read as they are: a store shared by several studies profiles all of them together.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from pact.runtime.store import DONE


def stage_times(store: Path) -> pd.DataFrame:
    """One row per finished artifact: stage, key and builder seconds."""
    rows = []
    for meta in sorted(store.glob(f"*/*/{DONE}")):
        info = json.loads((meta.parent / "meta.json").read_text())
        rows.append({"stage": info["stage"], "key": info["key"], "seconds": float(info["seconds"])})
    return pd.DataFrame(rows, columns=["stage", "key", "seconds"])


def profile(times: pd.DataFrame, wall: float | None = None, jobs: int = 1) -> pd.DataFrame:
    """Per stage: count, mean and total seconds, and (with ``wall``) the total's share of ``wall * jobs`` seconds of
    worker time, plus a row for what the stages leave unaccounted."""
    table = (times.groupby("stage")["seconds"].agg(count="count", mean="mean", total="sum")
             .sort_values("total", ascending=False).reset_index())
    if wall:
        capacity = wall * jobs
        table["share"] = table["total"] / capacity
        rest = capacity - table["total"].sum()
        if rest >= 0:  # with stages in parallel beyond ``jobs``, their sum says nothing about the rest
            table.loc[len(table)] = {"stage": "(outside stages)", "count": None, "mean": None, "total": rest,
                                     "share": rest / capacity}
    return table


def markdown(table: pd.DataFrame) -> str:
    """The profile as a Markdown table (seconds to one decimal, shares in percent)."""
    has_share = "share" in table
    head = "| stage | artifacts | mean s | total s |" + (" share |" if has_share else "")
    lines = [head, "|---|---|---|---|" + ("---|" if has_share else "")]
    for r in table.itertuples():
        count = "" if pd.isna(r.count) else f"{int(r.count)}"
        mean = "" if pd.isna(r.mean) else f"{r.mean:.1f}"
        share = f" {100 * r.share:.1f}% |" if has_share else ""
        lines.append(f"| {r.stage} | {count} | {mean} | {r.total:.1f} |{share}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="outputs/store", help="the store to profile")
    parser.add_argument("--wall", type=float, help="the study's wall time in seconds (adds each stage's share)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel workers the wall time had (the sweep's n_jobs)")
    args = parser.parse_args(argv)
    times = stage_times(Path(args.store))
    if times.empty:
        raise SystemExit(f"no finished artifacts under {args.store}")
    print(markdown(profile(times, args.wall, args.jobs)))


if __name__ == "__main__":
    main()
