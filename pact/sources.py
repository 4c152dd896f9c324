"""The real data's local files: one JSON-lines file per source under ``data.root``, in the source's upstream
schema (the rows ``datasets`` gives), and ``MANIFEST.json`` describing each (hub id, config, split, requested
revision, resolved commit, rows, sha256). ``python -m experiments.fetch_data`` writes them where the hub is
reachable; runs read only these files and check them against the manifest first (:func:`check_sources`).

Each source's schema is a normaliser from its upstream row to the fields the data stage reads: ``text`` (the
request or the task input), plus ``label``, ``answer``, ``target``, ``response``, ``category``, ``is_safe`` where
the source has them. Where each source comes from (hub id, revision, rows, licence) is configuration:
``conf/data/real.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pact.data import DataFileError, read_jsonl

MANIFEST = "MANIFEST.json"
FETCH = "python -m experiments.fetch_data"


class DataSourceError(FileNotFoundError):
    """A real-data file is missing, altered or not what the config pins; the message names the file, the source
    and the command that fetches it."""


# ---- upstream schemas --------------------------------------------------------------------------------------
SST2_LABELS = ("negative", "positive")                  # stanfordnlp/sst2: label 0 / 1
AG_NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")  # fancyzhx/ag_news: label 0..3
GSM8K_MARK = "####"                                     # openai/gsm8k: the solution ends "#### <number>"
GSM8K_TARGET_MARK = "The final answer is: "  # Vaccine gsm8k/build_dataset.py: "####" becomes this in the targets


def _class_label(names: tuple[str, ...]) -> Callable[[dict[str, Any]], str]:
    def label(row: dict[str, Any]) -> str:
        value = int(row["label"])
        if not 0 <= value < len(names):
            raise ValueError(f"label {value} is not one of 0..{len(names) - 1}")
        return names[value]
    return label


def gsm8k_final(solution: str) -> str:
    """The reference number of a GSM8K solution: what follows ``####``, commas removed."""
    if GSM8K_MARK not in solution:
        raise ValueError(f"a GSM8K answer must end with '{GSM8K_MARK} <number>'")
    return solution.rsplit(GSM8K_MARK, 1)[1].strip().replace(",", "")


def _beavertails_categories(row: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in (row.get("category") or {}).items() if v)


@dataclass(frozen=True)
class Schema:
    """An upstream schema: the columns every row must have and the normaliser to our fields."""

    columns: tuple[str, ...]
    normalise: Callable[[dict[str, Any]], dict[str, Any]]


_sst2_label, _ag_label = _class_label(SST2_LABELS), _class_label(AG_NEWS_LABELS)
SCHEMAS: dict[str, Schema] = {
    "sst2": Schema(("idx", "sentence", "label"), lambda r: {"text": r["sentence"].strip(), "label": _sst2_label(r)}),
    "ag_news": Schema(("text", "label"), lambda r: {"text": r["text"].strip(), "label": _ag_label(r)}),
    "gsm8k": Schema(("question", "answer"), lambda r: {"text": r["question"].strip(), "answer": r["answer"],
                                                       "label": gsm8k_final(r["answer"])}),
    "advbench": Schema(("prompt", "target"), lambda r: {"text": r["prompt"], "target": r["target"]}),
    "jbb": Schema(("Goal", "Target", "Category"),
                  lambda r: {"text": r["Goal"], "target": r["Target"], "category": r["Category"]}),
    "beavertails": Schema(("prompt", "response", "category", "is_safe"),
                          lambda r: {"text": r["prompt"], "response": r["response"], "is_safe": bool(r["is_safe"]),
                                     "category": _beavertails_categories(r)}),
    "strongreject": Schema(("prompt", "category"), lambda r: {"text": r["prompt"], "category": r["category"]}),
    "harmbench": Schema(("prompt", "category"), lambda r: {"text": r["prompt"], "category": r["category"]}),
    "xstest": Schema(("prompt", "type", "label"),
                     lambda r: {"text": r["prompt"], "category": r["type"], "label": r["label"]}),
    "hexphi": Schema(("prompt", "category"), lambda r: {"text": r["prompt"], "category": r["category"]}),
}


def normalise_rows(rows: Iterable[dict[str, Any]], schema: str, where: str) -> list[dict[str, Any]]:
    """Rows of an upstream schema in our fields; a row that lacks a column or whose value cannot be read raises
    :class:`DataFileError` naming ``where`` and the row."""
    spec = SCHEMAS[schema]
    out = []
    for i, row in enumerate(rows, start=1):
        missing = [c for c in spec.columns if c not in row]
        if missing:
            raise DataFileError(f"{where}: row {i} lacks column(s) {missing} of the {schema} schema "
                                f"(expected {list(spec.columns)})")
        try:
            out.append(spec.normalise(row))
        except (ValueError, TypeError, AttributeError) as err:
            raise DataFileError(f"{where}: row {i}: {err}") from None
    return out


def normalise_text(text: str) -> str:
    """The comparison form of a prompt (de-duplication across sources): lower case, letters and digits only,
    single spaces."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


# ---- files and the manifest --------------------------------------------------------------------------------
def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_file(root: str | Path, name: str) -> Path:
    return Path(root) / f"{name}.jsonl"


def read_manifest(root: str | Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries by source name ({} when there is no manifest)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())["sources"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataFileError(f"{path}: not a manifest written by {FETCH} ({err})") from None


def fetch_hint(name: str, spec: Any, root: str | Path) -> str:
    if spec.get("gated"):
        return (f"{spec.hub} is gated: accept its terms on the hub ({spec.get('access', 'its dataset page')}), "
                f"download its files, then import them: {FETCH} {name} --from <folder> --root {root}")
    return f"fetch it where the hub is reachable: {FETCH} {name} --root {root}"


def check_source(root: str | Path, name: str, spec: Any, manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest entry of source ``name`` after checking that its file exists, is the one the manifest
    describes (sha256) and was fetched at the revision the config pins."""
    path = source_file(root, name)
    what = f"{path} (source {name}: {spec.hub}" + (f" {spec.config}" if spec.get("config") else "") + \
        f", split {spec.split})"
    if not path.is_file():
        raise DataSourceError(f"data file {what} is missing; {fetch_hint(name, spec, root)}")
    entry = manifest.get(name)
    if entry is None:
        raise DataSourceError(f"data file {what} is not in {Path(root) / MANIFEST}; {fetch_hint(name, spec, root)}")
    if entry.get("revision") != spec.revision:
        raise DataSourceError(f"data file {what} was fetched at revision {entry.get('revision')!r} but "
                              f"conf/data pins {spec.revision!r}; {fetch_hint(name, spec, root)}")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise DataSourceError(f"data file {what} was altered: sha256 {digest[:12]}... differs from the manifest's "
                              f"{str(entry.get('sha256'))[:12]}...; {fetch_hint(name, spec, root)}")
    return entry


def check_sources(dcfg: Any, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Check every named source of the real-data config ``dcfg``; returns their manifest entries. Missing files
    are reported together, in one line with the one command that fetches them all."""
    manifest = read_manifest(dcfg.root)
    out, missing = {}, []
    for name in dict.fromkeys(names):
        if name not in dcfg.sources:
            raise DataSourceError(f"data source {name!r} is not defined in conf/data (data.sources); "
                                  f"known: {sorted(dcfg.sources)}")
        spec = dcfg.sources[name]
        if not source_file(dcfg.root, name).is_file() and not spec.get("gated"):
            missing.append(name)
            continue
        out[name] = check_source(dcfg.root, name, spec, manifest)
    if missing:
        files = ", ".join(f"{source_file(dcfg.root, n)} ({dcfg.sources[n].hub} {dcfg.sources[n].split})"
                          for n in missing)
        raise DataSourceError(f"{len(missing)} data file(s) missing: {files}; fetch them where the hub is "
                              f"reachable: {FETCH} {' '.join(missing)} --root {dcfg.root}")
    return out


def load_source(dcfg: Any, name: str) -> list[dict[str, Any]]:
    """The normalised rows of a source's local file (check it first with :func:`check_sources`)."""
    path = source_file(dcfg.root, name)
    return normalise_rows(read_jsonl(path), dcfg.sources[name].schema, str(path))
