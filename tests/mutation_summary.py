"""Summary of the last ``make mutate`` (mutmut's records under mutants/): per module, each mutant status's count,
and the score = (killed + timeout) / all mutants (a mutant no test reaches counts as not killed).

    python -m tests.mutation_summary [--min-score 85]   # exit 1 when the score is below --min-score
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

# mutmut 3.8's exit codes (mutmut.stats.status_by_exit_code); any other code is "suspicious"
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault",
          -9: "segfault", 2: "interrupted", None: "not checked"}
COLUMNS = ("killed", "timeout", "survived", "no tests", "suspicious", "skipped", "segfault", "not checked")


def counts(mutants: Path) -> dict[str, Counter]:
    out = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            out[str(meta.relative_to(mutants))[: -len(".meta")]] = Counter(STATUS.get(c, "suspicious")
                                                                          for c in codes.values())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutants", type=Path, default=Path("mutants"))
    ap.add_argument("--min-score", type=float, default=0.0, help="percent; exit 1 below it")
    args = ap.parse_args(argv)
    by_file = counts(args.mutants)
    if not by_file:
        print(f"no mutmut records under {args.mutants}/: run `make mutate` first")
        return 1
    total = Counter()
    print(f"{'module':28s} {'all':>5s} " + " ".join(f"{c:>11s}" for c in COLUMNS) + "   score")
    for name, c in [*by_file.items(), ("all", None)]:
        c = c if c is not None else total
        n = sum(c.values())
        score = 100 * (c["killed"] + c["timeout"]) / n
        print(f"{name:28s} {n:5d} " + " ".join(f"{c[k]:11d}" for k in COLUMNS) + f"  {score:5.1f}%")
        if name != "all":
            total.update(c)
    n = sum(total.values())
    score = 100 * (total["killed"] + total["timeout"]) / n
    print(f"mutation score: {score:.1f}% ({total['killed'] + total['timeout']}/{n} killed)")
    return 0 if score >= args.min_score else 1


if __name__ == "__main__":
    raise SystemExit(main())
