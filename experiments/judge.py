"""Judge the run records' answers with a guard model: ``python -m experiments.judge --guard llama_guard3
[--runs DIR] [--experiment NAME ...] [key=value ...]``.

For each run record (of the named experiments) whose evaluation is in the store, the guard of
``conf/guard/<name>.yaml`` (``key=value`` overrides it, e.g. ``model=/path/to/Llama-Guard-3-8B``) judges the
harmful and benign answers of the record's generations: the ``judge`` stage (pact/evaluation/guard.py), built once per
generations and guard. Prints the guard's Harmful Score per benchmark; the report then carries the guard as one more
judge in its agreement tables (analysis/agreement.py).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from pact.evaluation.guard import generations_of, judge_stage, load_judgments
from pact.run.cli import fail, run_cli
from pact.run.config import compose_config
from pact.run.hub import check_model
from pact.runtime.records import read_records
from pact.runtime.store import Store


def guard_config(name: str, overrides: list[str]) -> Any:
    """conf/guard/<name>.yaml with ``key=value`` overrides, composed and checked by the run config's own schema
    (pact.run.config.GuardConfig): an unknown guard, setting or value ends in one line naming it."""
    return compose_config([f"guard={name}", *(f"guard.{o}" for o in overrides)]).guard


def judge_records(gcfg: Any, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the guard over every record's generations; one summary row per record and harmful benchmark."""
    rows = []
    for record in records:
        gen = generations_of(record["evaluation_path"]) if record.get("evaluation_path") else None
        if gen is None:
            logging.warning("skipping %s/%s %s p=%s seed %s: its evaluation is not in the store",
                            record.get("experiment"), record.get("model"), record.get("method"),
                            record.get("poison_ratio"), record.get("seed"))
            continue
        art = judge_stage(Store(gen.path.parent.parent), gcfg, gen)
        harmful: dict[str, list[bool]] = {}
        for j in load_judgments(art):
            if j["set"] == "harmful":
                harmful.setdefault(j.get("benchmark") or "harmful", []).append(j["unsafe"])
        for bench, flags in harmful.items():
            rows.append({k: record.get(k) for k in ("experiment", "method", "poison_ratio", "seed")} |
                        {"benchmark": bench, "n": len(flags), "hs": 100.0 * sum(flags) / len(flags)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", required=True, help="a guard of conf/guard/ (e.g. llama_guard3)")
    parser.add_argument("--runs", default="outputs/runs", help="run records directory")
    parser.add_argument("--experiment", action="append", help="only these experiments (repeatable)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the guard's settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def go() -> list[dict[str, Any]]:
        gcfg = guard_config(args.guard, args.overrides)
        records = read_records(args.runs, args.experiment)
        if not records:
            fail(f"no run records under {args.runs}" + (f" for {args.experiment}" if args.experiment else ""))
        if gcfg.model:  # a missing, gated or unreachable guard: one line before any answer is read
            check_model("guard.model", str(gcfg.model), gcfg.get("revision") or None)
        return judge_records(gcfg, records)

    for row in run_cli(go):
        print(f"{row['experiment']} {row['method']} p={row['poison_ratio']} seed {row['seed']} {row['benchmark']}: "
              f"HS ({args.guard}) {row['hs']:.1f} of {row['n']}")


if __name__ == "__main__":
    main()
