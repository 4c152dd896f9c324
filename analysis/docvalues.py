"""Numbers in the docs' prose, read from the files under ``results/``: each one is written between a marker that
says where it comes from and a closing marker, and ``python -m analysis.readme`` rewrites it from that file
(``--check`` fails when one differs). A marker is an HTML comment, so a rendered doc shows the number alone::

    <!--= summary.csv: experiment=poison_ratio method=sft poison_ratio=0.1 variant= :: harmful_score -->98.5<!--/-->

``FILE: FILTERS :: EXPR AGG FORMAT``: FILE is a CSV or JSON file under results/, or ``NAME.md#N``, the N-th markdown
table (from 1) of a markdown file there (a cell's trailing "x" or "%" dropped, "–" empty); FILTERS are ``column OP
value`` terms (OP one of ``= != < > <= >=``; ``column=`` keeps rows where the column is empty, ``column=a,b`` either
value; quote a value with spaces; a term ``"?QUERY"`` keeps the rows a pandas query keeps, e.g. ``"?not (method ==
'sft' and poison_ratio == 0.1)"``); EXPR is a column, several columns ``a,b`` (their values pooled), or a pandas
expression of columns (a column whose name has a dot: between backticks); AGG is ``mean`` (default), ``std``,
``min``, ``max``, ``sum``, ``count``, ``one`` (every row must hold the same value), ``range`` ("lo-hi", or the one
value when lo = hi) or ``range–`` (en dash); ``by=COL[,COL]`` after AGG first averages EXPR within each group of
those columns (e.g. over seeds: ``harmful_score range by=poison_ratio`` is the range of the per-p means);
``pivot=COL:VALUE`` (after AGG and ``by=``) first turns the mean of VALUE per COL value (and per ``by`` group) into
columns named by those values, and EXPR is a pandas expression of them (``"sft_lora - pact_lora" range
by=poison_ratio pivot=method:finetune_accuracy``: SFT-LoRA's accuracy minus PACT-LoRA's, per p); FORMAT is a Python
format spec (default ``.1f``). For a JSON file, EXPR is a dotted path into it (list items by index) and AGG/FILTERS
are left out.

A context saves repeating a file and filters: ``<!--= with summary.csv: experiment=poison_ratio variant= -->``
sets them for the doc's following markers up to the next ``with``; a marker that names no file (``<!--= method=sft
:: harmful_score -->``) takes the context's file and adds its filters to the context's (a marker's own term on the
same column wins). A marker whose rows are none is an error naming the marker, so a rebuilt file that lost a row
cannot leave an old number standing.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pandas as pd

MARKER = re.compile(r"<!--=\s*(?P<spec>.*?)\s*-->(?:(?P<value>[^<]*?)<!--/-->)?", re.S)
TERM = re.compile(r"^(?P<col>[^!<>=]+?)(?P<op>!=|<=|>=|=|<|>)(?P<val>.*)$")
AGGS = ("mean", "std", "min", "max", "sum", "count", "one", "range", "range–")


class DocValueError(ValueError):
    """A value marker that cannot be read or whose rows do not exist."""


@dataclass
class Context:
    """The file and filters a ``with`` marker set for the markers after it."""

    file: str | None = None
    terms: list[str] = field(default_factory=list)


@lru_cache(maxsize=64)
def _read_csv(path: Path, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


@lru_cache(maxsize=64)
def _read_md_table(path: Path, mtime: float, index: int) -> pd.DataFrame:
    tables, current = [], []
    for line in [*path.read_text().splitlines(), ""]:
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if not 1 <= index <= len(tables):
        raise DocValueError(f"{path.name} has {len(tables)} markdown tables, not a table {index}")
    head, *rows = tables[index - 1]
    rows = [r for r in rows if not all(set(c) <= set("-: ") for c in r)]

    def cell(text: str):
        text = text.replace("**", "").strip()
        if text in ("", "–", "-"):
            return float("nan")
        try:
            return float(text.rstrip("x%").replace(",", ""))
        except ValueError:
            return text
    return pd.DataFrame([[cell(c) for c in r] for r in rows], columns=head)


def _table(results: Path, name: str) -> pd.DataFrame:
    file, _, index = name.partition("#")
    path = results / file
    if not path.is_file():
        raise DocValueError(f"{file}: no such file under {results}")
    if file.endswith(".md"):
        if not index.isdigit():
            raise DocValueError(f"{name}: name the markdown table by its number, as {file}#1")
        return _read_md_table(path, path.stat().st_mtime, int(index))
    return _read_csv(path, path.stat().st_mtime)


def _parse_value(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _mask(df: pd.DataFrame, term: str) -> pd.Series:
    if term.startswith("?"):
        return df.eval(term[1:])
    m = TERM.match(term)
    if not m:
        raise DocValueError(f"filter {term!r} is not `column OP value`")
    col, op, raw = m.group("col").strip(), m.group("op"), m.group("val").strip()
    if col not in df:
        raise DocValueError(f"filter {term!r}: no column {col!r}")
    series = df[col]
    if raw == "":
        return series.isna() if op == "=" else series.notna()
    values = [_parse_value(v) for v in raw.split(",")] if op in ("=", "!=") else [_parse_value(raw)]
    numeric = all(isinstance(v, float) for v in values) and pd.api.types.is_numeric_dtype(series)
    if op in ("=", "!="):
        if numeric:
            hit = pd.Series(False, index=df.index)
            for v in values:
                hit |= (series - v).abs() < 1e-9
        else:
            # a string value may itself hold a comma ("PACT, live reference"): the whole value matches too
            hit = series.astype(str).isin([raw, *(v.strip() for v in raw.split(","))])
        return hit if op == "=" else ~hit
    value = values[0]
    return {"<": series < value, ">": series > value, "<=": series <= value, ">=": series >= value}[op]


def _split_spec(spec: str, ctx: Context) -> tuple[str, list[str], str]:
    """(file, filter terms, the part after ``::``) of a marker, the context filled in."""
    if "::" not in spec:
        raise DocValueError(f"marker {spec!r} has no `::` before its expression")
    head, tail = (s.strip() for s in spec.split("::", 1))
    file, _, terms_text = head.partition(":") if re.match(r"^[\w./-]+\.(csv|json|md#\d+)\s*:", head + ":") else \
        (None, "", head)
    own = shlex.split(terms_text) if terms_text.strip() else []
    if file is None:
        if ctx.file is None:
            raise DocValueError(f"marker {spec!r} names no file and no `with` marker is above it")
        own_cols = {TERM.match(t).group("col").strip() for t in own if not t.startswith("?") and TERM.match(t)}
        inherited = [t for t in ctx.terms if t.startswith("?") or TERM.match(t).group("col").strip() not in own_cols]
        return ctx.file, inherited + own, tail
    return file.strip(), own, tail


def _format(value: float, fmt: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isnan(value):
        raise DocValueError("the value is not a number (NaN)")
    return format(value, fmt)


def evaluate(spec: str, results: Path, ctx: Context) -> str:
    """The text a marker's spec gives from the files under ``results``."""
    file, terms, tail = _split_spec(spec, ctx)
    words = shlex.split(tail)
    if not words:
        raise DocValueError(f"marker {spec!r} has no expression")
    if file.endswith(".json"):
        path = results / file
        if not path.is_file():
            raise DocValueError(f"{file}: no such file under {results}")
        node = json.loads(path.read_text())
        for key in words[0].split("."):
            node = node[int(key)] if isinstance(node, list) else node[key]
        fmt = words[1] if len(words) > 1 else ("" if isinstance(node, (int, str)) else ".1f")
        return _format(node, fmt)
    expr, rest = words[0], words[1:]
    agg = rest.pop(0) if rest and rest[0] in AGGS else "mean"
    by = rest.pop(0)[3:].split(",") if rest and rest[0].startswith("by=") else None
    pivot = rest.pop(0)[6:].partition(":") if rest and rest[0].startswith("pivot=") else None
    fmt = rest.pop(0) if rest else (".0f" if agg == "count" else ".1f")
    if rest:
        raise DocValueError(f"marker {spec!r}: unread words {rest}")
    df = _table(results, file)
    mask = pd.Series(True, index=df.index)
    for term in terms:
        mask &= _mask(df, term)
    rows = df[mask]
    if rows.empty:
        raise DocValueError(f"marker {spec!r}: no row of {file} matches {terms}")
    pooled = expr.split(",")
    if pivot is not None:
        key, _, value = pivot
        missing = [c for c in [key, value, *(by or [])] if c not in rows]
        if missing:
            raise DocValueError(f"marker {spec!r}: no column {missing} to pivot")
        means = rows.groupby([*(by or []), key], dropna=False)[value].mean()
        table = means.unstack(key) if by else means.to_frame().T
        column = table.eval(expr)
        by = None   # the groups are the pivoted table's rows
    elif expr in rows:
        column = rows[expr]
    elif len(pooled) > 1 and all(c in rows for c in pooled):
        column = pd.concat([rows[c] for c in pooled], ignore_index=True)
        if by:
            raise DocValueError(f"marker {spec!r}: pooled columns cannot be grouped (by=)")
    else:
        column = rows.eval(expr)
    if agg == "count":
        return _format(float(len(rows)), fmt)
    if by:
        missing = [c for c in by if c not in rows]
        if missing:
            raise DocValueError(f"marker {spec!r}: no column {missing} to group by")
        column = column.groupby([rows[c] for c in by], dropna=False).mean()
    column = column.dropna()
    if column.empty:
        raise DocValueError(f"marker {spec!r}: {expr} is empty in every matching row")
    if agg == "one":
        if column.nunique() != 1:
            raise DocValueError(f"marker {spec!r}: `one` but the rows hold {sorted(column.unique())}")
        return _format(column.iloc[0], fmt)
    if agg.startswith("range"):
        lo, hi = _format(column.min(), fmt), _format(column.max(), fmt)
        return lo if lo == hi else f"{lo}{'–' if agg == 'range–' else '-'}{hi}"
    return _format(getattr(column, agg)(), fmt)


def render_values(text: str, results: Path) -> str:
    """``text`` with every value marker's number rewritten from the files under ``results``."""
    ctx = Context()
    out, pos = [], 0
    for m in MARKER.finditer(text):
        spec = m.group("spec")
        out.append(text[pos:m.start()])
        pos = m.end()
        if spec.startswith("with ") or spec == "with":
            body = spec[4:].strip()
            file, _, terms = body.partition(":")
            ctx = Context(file.strip() or None, shlex.split(terms) if terms.strip() else [])
            out.append(m.group(0))
            continue
        if m.group("value") is None:
            raise DocValueError(f"marker {spec!r} has no closing <!--/-->")
        try:
            value = evaluate(spec, results, ctx)
        except DocValueError:
            raise
        except Exception as err:  # a pandas or JSON error: name the marker
            raise DocValueError(f"marker {spec!r}: {type(err).__name__}: {err}") from err
        out.append(f"<!--= {spec} -->{value}<!--/-->")
    out.append(text[pos:])
    return "".join(out)


def strip_values(text: str) -> str:
    """``text`` as a reader sees it: each value marker replaced by its number, ``with`` markers dropped."""
    return MARKER.sub(lambda m: m.group("value") or "", text)


# What a prose number looks like to the lint: a percentage, a "±" spread, or a decimal. Exempt: a number after a
# setting's name (p, lr, lambda, ...: a config value the sentence names, not a measurement), versions and names
# ("torch 2.13.0", "Llama-3.1-8B", "arXiv 2603.07445").
NUMBER = re.compile(r"(?<![\w.-])(?:\d+(?:\.\d+)?\s*%|±\s*\d+(?:\.\d+)?|\d+\.\d+(?![\w.]))")
SETTING = re.compile(r"(?:\b(?:p|lr|lambda|λ|alpha|α|T|c|t|c_t|K|top_k|top-p|ratio|ratios|epsilon|ε|rho|ρ|beta|β|"
                     r"gamma|dropout|clip|threshold|temperature|r|Python|torch|transformers|arXiv|vLLM|numpy|pandas)"
                     r"\s*(?:=|≤|<=|<|>|>=|≥|∈\s*\{)?\s*|\{)(?:[\d.e-]+\s*(?:,|and|or|/|to|-|–)\s*)*$")
LEVEL = re.compile(r"\s*(?:bootstrap|interval|confidence|CI\b)")   # "95% bootstrap intervals": a setting
HIDDEN = re.compile(r"```.*?```|`[^`\n]*`|<!-- (\w+):begin -->.*?<!-- \1:end -->|<!--.*?-->|\]\([^)]*\)|"
                    r"https?://\S+", re.S)


def unmarked_numbers(text: str) -> list[str]:
    """The measured-looking numbers of ``text``'s prose and hand-written tables that no value marker or generated
    part writes: each as "line N: <number> in <context>"."""
    text = MARKER.sub(lambda m: "#" * len(m.group(0)), text)   # a marked number is no digit to the lint
    text = HIDDEN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)
    found = []
    for m in NUMBER.finditer(text):
        before = text[max(0, m.start() - 40):m.start()]
        if not m.group(0).startswith("±") and "%" not in m.group(0) and SETTING.search(before):
            continue
        if LEVEL.match(text[m.end():m.end() + 30]):
            continue
        line = text.count("\n", 0, m.start()) + 1
        found.append(f"line {line}: {m.group(0)} in '{text[max(0, m.start() - 30):m.end() + 10].strip()}'")
    return found
