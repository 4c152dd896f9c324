"""The docs' generated parts: README's results table, from ``results/summary.csv``, and its list of make targets with
their times, from the Makefile's ``##`` help lines (the one place those times are written); docs/usage.md's list of
config groups and their options, from ``conf/``; results/README.md's utility tables, from the studies' interval
tables, and its table of the toy study's sweep, from ``results/summary.csv``. Each part sits between
``<!-- name:begin -->`` and ``<!-- name:end -->`` markers. The numbers in the docs' prose come from files under
results/ by their value markers (analysis.docvalues). ``python -m analysis.readme`` rewrites them (``make
figures`` runs it); ``--check`` exits 1 when a doc differs from what the sources give (a fast test runs it).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from analysis.docvalues import DocValueError, render_values
from analysis.intervals import UTILITY, intervals_markdown

REPO = Path(__file__).resolve().parents[1]
SETTINGS = OmegaConf.load(REPO / "conf" / "analysis.yaml").readme
HELP_LINE = re.compile(r"^([a-z0-9-]+):.*## (.*)$")


def at_ratio(rows: pd.DataFrame, p: float) -> pd.DataFrame:
    """The rows fine-tuned at poison ratio ``p`` (float-safe)."""
    return rows[(rows["poison_ratio"] - p).abs() < 1e-9]


def results_table(summary: pd.DataFrame) -> str:
    """HS / refusal / Fine-tune Accuracy (percent, mean over seeds, one decimal as the study tables) of the rows
    of conf/analysis.yaml ``readme`` at its ratios; the reference models (no fine-tune) in the p = 0 column's place."""
    df = summary[summary["variant"].isna()] if "variant" in summary else summary
    ratios = [float(p) for p in SETTINGS.ratios]
    head = "| model: method | " + " | ".join(f"p = {p:g}" for p in ratios) + " |"
    lines = [head, "|---" * (1 + len(ratios)) + "|"]
    for row in SETTINGS.rows:
        label, exp, model, method = row.label, row.experiment, row.model, row.method
        rows = df[(df["experiment"] == exp) & (df["model"] == model) & (df["method"] == method)]
        if rows.empty:
            raise ValueError(f"results/summary.csv has no rows for {exp} / {model} / {method}")
        cells = []
        for p in ratios:
            at = rows[rows["poison_ratio"].isna()] if p == 0 and rows["poison_ratio"].isna().all() else \
                at_ratio(rows, p)
            if at.empty:
                cells.append("")
                continue
            m = at[["harmful_score", "refusal_rate", "finetune_accuracy"]].mean()
            cells.append(" / ".join(f"{v:.1f}" for v in m))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_table(summary: pd.DataFrame, spec=SETTINGS.sweep) -> str:
    """One study's methods (rows, in the order of its experiment's sweep) by poison ratio (columns,
    ``spec.ratios``): each cell the means over seeds of ``spec.metrics`` (percent, one decimal, joined by " / ")."""
    df = summary[(summary["experiment"] == spec.experiment) & (summary["model"] == spec.model)
                 & (summary["task"] == spec.task) & summary["poison_ratio"].notna()]
    if "variant" in df:
        df = df[df["variant"].isna()]
    if df.empty:
        raise ValueError(f"results/summary.csv has no fine-tuned rows of {spec.experiment} / {spec.model} / "
                         f"{spec.task}")
    ratios = [float(p) for p in spec.ratios]
    lines = ["| method | " + " | ".join(f"p = {p:g}" for p in ratios) + " |", "|---" * (1 + len(ratios)) + "|"]
    swept = str(OmegaConf.load(REPO / "conf" / "experiment" / f"{spec.experiment}.yaml").hydra.sweeper.params.method)
    order = [m.strip() for m in swept.split(",")]
    for method in sorted(df["method"].unique(), key=lambda m: (order.index(m) if m in order else len(order), m)):
        cells = []
        for p in ratios:
            at = at_ratio(df[df["method"] == method], p)
            cells.append(" / ".join(f"{v:.1f}" for v in at[list(spec.metrics)].mean()) if len(at) else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_list(makefile: Path) -> str:
    """One line per make target with a ``##`` help text, as ``make help`` prints them."""
    found = [m.groups() for m in map(HELP_LINE.match, makefile.read_text().splitlines())
             if m and m.group(1) != "help"]
    width = max(len(name) for name, _ in found) + 1   # the help texts start in one column
    return "```\n" + "\n".join(f"make {name:<{width}s}# {text}" for name, text in found) + "\n```"


def config_groups(conf: Path) -> str:
    """One line per config group of ``conf/`` (nested groups as ``hydra/launcher``): its options, the root config's
    default first and marked."""
    defaults = {}
    for entry in OmegaConf.load(conf / "config.yaml").defaults:
        if isinstance(entry, dict) or OmegaConf.is_dict(entry):
            defaults.update({str(k): v for k, v in entry.items()})
    groups = sorted({str(f.parent.relative_to(conf)) for f in conf.rglob("*.yaml")
                     if f.parent != conf and f.parent.name not in SETTINGS.not_groups})
    width = max(map(len, groups)) + 1
    lines = []
    for group in groups:
        options = sorted(f.stem for f in (conf / group).glob("*.yaml"))
        default = defaults.get(group)
        if default in options:
            options = [f"{default} (default)", *(o for o in options if o != default)]
        lines.append(f"{group:<{width}s}{' · '.join(options)}")
    return "```\n" + "\n".join(lines) + "\n```"


def utility_tables(results: Path) -> str:
    """Each study's interval table (``tables/<study>_intervals.csv``, written by analysis.report), in summary.csv's
    order, whose runs measured the utility (``utility=assistant``): harmful refusal beside ordinary instructions and
    knowledge, 95% intervals."""
    summary = pd.read_csv(results / "summary.csv")
    studies = summary[["experiment", "model", "task"]].drop_duplicates().itertuples(index=False)
    parts = []
    for study in studies:
        path = results / "tables" / f"{'_'.join(study)}_intervals.csv"
        table = pd.read_csv(path) if path.exists() else pd.DataFrame()
        if any(m in table and table[m].notna().any() for m in UTILITY):
            parts.append(f"`tables/{path.stem}.md`:\n\n{intervals_markdown(table)}")
    if not parts:
        raise ValueError(f"no interval table under {results / 'tables'} has the utility columns "
                         f"({', '.join(UTILITY)})")
    return "\n".join(parts).rstrip("\n")


def blocks(repo: Path = REPO) -> dict[str, str]:
    """README's generated parts by marker name."""
    return {"results": results_table(pd.read_csv(repo / "results" / "summary.csv")),
            "targets": targets_list(repo / "Makefile")}


def doc_blocks(repo: Path = REPO) -> dict[str, dict[str, str]]:
    """Every doc's generated parts: {path relative to the repository: {marker name: body}}."""
    return {"README.md": blocks(repo), "docs/usage.md": {"groups": config_groups(repo / "conf")},
            "results/README.md": {"utility": utility_tables(repo / "results"),
                                  "poison_ratio": sweep_table(pd.read_csv(repo / "results" / "summary.csv"))}}


def value_docs(repo: Path = REPO) -> list[str]:
    """The user docs whose prose numbers are value markers: README.md, docs/*.md but the reproducibility log (a
    dated record of what runs measured then), results/README.md."""
    docs = ["README.md", *(f"docs/{p.name}" for p in sorted((repo / "docs").glob("*.md"))
                           if p.name != "reproducibility.md"), "results/README.md"]
    return [d for d in docs if (repo / d).is_file()]


def render(text: str, parts: dict[str, str]) -> str:
    """``text`` with each marked part replaced; a marker pair that is missing is an error naming it."""
    for name, body in parts.items():
        begin, end = f"<!-- {name}:begin -->\n", f"\n<!-- {name}:end -->"
        if begin not in text or end not in text:
            raise ValueError(f"the doc lacks the markers of its {name!r} part ({begin.strip()} ... {end.strip()})")
        head, rest = text.split(begin, 1)
        text = head + begin + body + end + rest.split(end, 1)[1]
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.readme", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a doc differs from its sources")
    args = parser.parse_args(argv)
    stale = []
    parts_of = doc_blocks()
    for name in dict.fromkeys([*parts_of, *value_docs()]):
        path = REPO / name
        text = path.read_text()
        try:
            new = render_values(render(text, parts_of.get(name, {})), REPO / "results")
        except DocValueError as err:
            sys.exit(f"{name}: {err}")
        if new == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(new)
            print(f"rewrote the generated parts of {name}")
    if args.check and stale:
        print(f"{', '.join(stale)}: a generated part differs from its source; run python -m analysis.readme",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
