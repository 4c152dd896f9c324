"""Compare two ``summary.csv`` files cell by cell on the rows they share, as text (to the last written digit):
``python -m analysis.compare REFERENCE CANDIDATE``. Exit status 0 when every row of CANDIDATE is in REFERENCE
with the same value in every column both files have, 1 otherwise (each difference is printed).

Use it to show that a refactor or a speed-up changes no number: rebuild some runs, report them into another
directory, and compare that summary with the committed ``results/summary.csv``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pact.run.cli import run_cli
from pact.runtime.records import IDENTITY

KEY = [*IDENTITY, "variant"]


def read_text_table(path: str | Path) -> pd.DataFrame:
    """A summary.csv with every cell kept as the text written (no float parsing, empty cells as "")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such summary.csv")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in IDENTITY if c not in df]
    if missing:
        raise FileNotFoundError(f"{path}: not a summary.csv (no column(s) {missing})")
    if "variant" not in df:
        df["variant"] = ""
    return df


def same(a: str, b: str) -> bool:
    """Two cells as written are the same value: equal text, or the same number written two ways ("0" and "0.0",
    as a column gains empty cells and pandas writes it as float)."""
    if a == b:
        return True
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def compare(reference: pd.DataFrame, candidate: pd.DataFrame) -> dict:
    """Rows of ``candidate`` matched to ``reference`` by identity and variant; the cells that differ."""
    columns = [c for c in candidate.columns if c in reference.columns and c not in KEY]
    ref = {tuple(r[k] for k in KEY): r for r in reference.to_dict("records")}
    matched, missing, diffs = 0, [], []
    for row in candidate.to_dict("records"):
        key = tuple(row[k] for k in KEY)
        if key not in ref:
            missing.append(key)
            continue
        matched += 1
        diffs += [(key, c, ref[key][c], row[c]) for c in columns if not same(ref[key][c], row[c])]
    return {"matched": matched, "missing": missing, "diffs": diffs, "columns": columns}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", help="e.g. results/summary.csv")
    parser.add_argument("candidate", help="the summary.csv of the rebuilt runs")
    args = parser.parse_args(argv)
    result = run_cli(lambda: compare(read_text_table(args.reference), read_text_table(args.candidate)))
    for key in result["missing"]:
        print(f"not in {args.reference}: {dict(zip(KEY, key))}")
    for key, column, want, got in result["diffs"]:
        print(f"differs: {dict(zip(KEY, key))} {column}: {want!r} -> {got!r}")
    print(f"{result['matched']} rows matched on {len(KEY)} identity columns; {len(result['columns'])} other "
          f"columns compared: {len(result['diffs'])} cells differ, {len(result['missing'])} rows not in the reference")
    sys.exit(1 if result["diffs"] or result["missing"] or not result["matched"] else 0)


if __name__ == "__main__":
    main()
