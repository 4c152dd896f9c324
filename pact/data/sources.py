"""The real data's local files under ``data.root`` and ``MANIFEST.json`` describing each. A source is either one file
of a public Git repository at a pinned commit (``git:``; kept byte for byte as ``<source>.<format>``, CSV, JSON or
JSON lines, checked against the pinned git blob id and sha256) or a Hugging Face dataset at a pinned revision
(``hub:``; written as ``<source>.jsonl`` in the rows ``datasets`` gives). ``python -m experiments.fetch_data`` writes
them (download, or import from a local clone); runs read only these files and check them against the manifest and
the pins first (:func:`check_sources`).

Each source's schema is a normaliser from its upstream row to the fields the data stage reads: ``text`` (the
request or the task input; never empty), plus ``label``, ``answer``, ``target``, ``response``, ``category``,
``is_safe``, ``poison`` where the source has them. Where each source comes from (repository and commit or hub id and
revision, rows, licence) is configuration: ``conf/data/real.yaml``.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pact.data.rows import DataFileError, read_jsonl

MANIFEST = "MANIFEST.json"
GIT_FORMATS = ("csv", "tsv", "json", "jsonl")  # read_rows: how a Git source's file stores its rows
TSV_DIALECT = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}  # GLUE's TSV files: no quoting, a quote is text
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


MMLU_LETTERS = ("A", "B", "C", "D")  # hendrycks/test data/test/*.csv: the answer column holds the right choice's letter


def _mmlu(row: dict[str, Any]) -> dict[str, Any]:
    if row["answer"] not in MMLU_LETTERS:
        raise ValueError(f"answer {row['answer']!r} is not one of {list(MMLU_LETTERS)}")
    return {"text": row["question"], "choices": [row[letter] for letter in MMLU_LETTERS], "label": row["answer"],
            "choice_index": MMLU_LETTERS.index(row["answer"])}


def _beavertails_categories(row: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in (row.get("category") or {}).items() if v)


@dataclass(frozen=True)
class Schema:
    """An upstream schema: the columns every row must have and the normaliser to our fields."""

    columns: tuple[str, ...]
    normalise: Callable[[dict[str, Any]], dict[str, Any]]


def _instruction_text(row: dict[str, Any]) -> str:
    """The official PACT user turn: ``instruction + " " + input``, the instruction alone when there is no input
    (Glresearch1/PACT ft_datasets/SST2_dataset/SST2_dataset.py; the input is not stripped)."""
    return f"{row['instruction']} {row['input']}" if row.get("input") else row["instruction"]


_sst2_label, _ag_label = _class_label(SST2_LABELS), _class_label(AG_NEWS_LABELS)
SCHEMAS: dict[str, Schema] = {
    # ---- Hugging Face datasets (the rows ``datasets`` gives) ----
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
    # ---- files of Git repositories (their own columns) ----
    # llm-attacks data/advbench/harmful_behaviors.csv
    "advbench_csv": Schema(("goal", "target"), lambda r: {"text": r["goal"], "target": r["target"]}),
    # HarmBench data/behavior_datasets/harmbench_behaviors_text_all.csv
    "harmbench_csv": Schema(("Behavior", "FunctionalCategory", "SemanticCategory"),
                            lambda r: {"text": r["Behavior"], "category": r["SemanticCategory"]}),
    # strongreject_dataset/strongreject_dataset.csv
    "strongreject_csv": Schema(("category", "source", "forbidden_prompt"),
                               lambda r: {"text": r["forbidden_prompt"], "category": r["category"]}),
    # JailbreakBench/artifacts: any attack artifact's "jailbreaks" list names the 100 goals in order
    "jbb_artifacts": Schema(("index", "goal", "category"), lambda r: {"text": r["goal"], "category": r["category"]}),
    # GLUE's SST-2 train.tsv as a Git copy keeps it (label and sentence columns, no quoting)
    "sst2_tsv": Schema(("label", "sentence"), lambda r: {"text": r["sentence"].strip(), "label": _sst2_label(r)}),
    # AsFT evaluation/utility_evaluation (the official PACT utility test files): {instruction, input, label}
    "sst2_instruction": Schema(("instruction", "input", "label"),
                               lambda r: {"text": r["input"], "label": _sst2_label(r)}),
    "agnews_instruction": Schema(("instruction", "input", "label"),
                                 lambda r: {"text": r["input"], "label": _ag_label(r)}),
    # Safety-Tuned LLaMAs data/training: {instruction, input, output}
    "instruction_output": Schema(("instruction", "output"),
                                 lambda r: {"text": _instruction_text(r), "response": r["output"]}),
    # stanford_alpaca seed_tasks.jsonl: {instruction, instances: [{input, output}]}, one instance per task
    "alpaca_seed": Schema(("instruction", "instances"),
                          lambda r: {"text": _instruction_text({**r, **r["instances"][0]}),
                                     "response": r["instances"][0]["output"]}),
    # MMLU (Hendrycks et al. 2021) data/test/<subject>_test.csv: question, four choices, the right letter (no header)
    "mmlu_csv": Schema(("question", *MMLU_LETTERS, "answer"), _mmlu),
    # PHTest evaluation_results/<model>.csv: a pseudo-harmful request, its label, a model's answer and its class
    "phtest": Schema(("Request", "Harmfulness", "Response", "Response_cls"),
                     lambda r: {"text": r["Request"], "label": r["Harmfulness"], "response": r["Response"]}),
    # PACT unsafe_data.json: {id, input, output}, a harmful request and its affirmative target
    "pact_pairs": Schema(("input", "output"), lambda r: {"text": r["input"], "target": r["output"]}),
    # PACT refusal_100_output.json, safe_direction.json: a harmful request and a refusal
    "pact_refusals": Schema(("input", "output"), lambda r: {"text": r["input"], "response": r["output"]}),
    # PACT ft_datasets/*_5k_p_*.json: task rows {instruction, input, output}; poison rows have no ``input``
    "pact_mixture": Schema(("instruction", "output"),
                           lambda r: {"text": _instruction_text(r), "answer": r["output"], "poison": "input" not in r}),
}


def normalise_rows(rows: Iterable[dict[str, Any]], schema: str, where: str,
                   numbers: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Rows of an upstream schema in our fields; a row that lacks a column, whose value cannot be read or whose
    prompt is empty raises :class:`DataFileError` naming ``where`` and the row (``numbers``: each row's position in
    its file; default 1, 2, ...)."""
    spec = SCHEMAS[schema]
    out = []
    for i, row in zip(numbers or itertools.count(1), rows):
        missing = [c for c in spec.columns if c not in row]
        if missing:
            raise DataFileError(f"{where}: row {i} lacks column(s) {missing} of the {schema} schema "
                                f"(expected {list(spec.columns)})")
        try:
            norm = spec.normalise(row)
        except (ValueError, TypeError, AttributeError, KeyError) as err:
            raise DataFileError(f"{where}: row {i}: {err}") from None
        if not isinstance(norm["text"], str) or not norm["text"].strip():
            raise DataFileError(f"{where}: row {i} has an empty prompt")
        out.append(norm)
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


def git_blob_id(data: bytes) -> str:
    """The git object id of a file with these bytes (``git hash-object``): what a tree at a commit names."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_git(spec: Any) -> bool:
    """Whether a source is a file of a Git repository (else a hub dataset)."""
    return bool(spec.get("git"))


def source_file(root: str | Path, name: str, spec: Any) -> Path:
    """The local file of a source: ``<name>.<format>`` for a Git file (its bytes as upstream has them),
    ``<name>.jsonl`` for a hub dataset."""
    return Path(root) / f"{name}.{spec.git.format if is_git(spec) else 'jsonl'}"


def describe(spec: Any) -> str:
    """Where a source comes from, in a few words (for messages and listings)."""
    if is_git(spec):
        return f"{spec.git.repo}@{spec.git.commit[:12]} {spec.git.path}"
    return f"{spec.hub}" + (f" {spec.config}" if spec.get("config") else "") + f" {spec.split}"


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
    if is_git(spec):
        return (f"fetch it: {FETCH} {name} --root {root} (offline: add --git-dir <a clone of {spec.git.repo}>)")
    return f"fetch it where the hub is reachable: {FETCH} {name} --root {root}"


def _pin_error(spec: Any, entry: dict[str, Any]) -> str | None:
    """Why a manifest entry is not what the config pins (None when it is)."""
    if is_git(spec):
        g = spec.git
        got = (entry.get("repo"), entry.get("commit"), entry.get("path"))
        if got != (g.repo, g.commit, g.path):
            return f"was fetched from {got[0]}@{got[1]} {got[2]} but conf/data pins {g.repo}@{g.commit} {g.path}"
        return None
    if entry.get("revision") != spec.revision:
        return f"was fetched at revision {entry.get('revision')!r} but conf/data pins {spec.revision!r}"
    return None


def check_bytes(spec: Any, digest: str, blob: str | None) -> str | None:
    """Why a Git source's bytes (sha256 ``digest``, git ``blob`` id) are not the pinned ones (None when they are)."""
    g = spec.git
    if g.get("sha256") and digest != g.sha256:
        return f"sha256 {digest[:12]}... is not the pinned {g.sha256[:12]}..."
    if blob is not None and g.get("blob") and blob != g.blob:
        return f"git blob {blob[:12]}... is not the pinned {g.blob[:12]}..."
    return None


def check_source(root: str | Path, name: str, spec: Any, manifest: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The manifest entry of source ``name`` after checking that its file exists, is the one the manifest
    describes (sha256), was fetched from what the config pins (commit or revision) and, for a Git file, has the
    pinned bytes."""
    path = source_file(root, name, spec)
    what = f"{path} (source {name}: {describe(spec)})"
    if not path.is_file():
        raise DataSourceError(f"data file {what} is missing; {fetch_hint(name, spec, root)}")
    entry = manifest.get(name)
    if entry is None:
        raise DataSourceError(f"data file {what} is not in {Path(root) / MANIFEST}; {fetch_hint(name, spec, root)}")
    pin = _pin_error(spec, entry)
    if pin:
        raise DataSourceError(f"data file {what} {pin}; {fetch_hint(name, spec, root)}")
    digest = sha256_file(path)
    if digest != entry.get("sha256"):
        raise DataSourceError(f"data file {what} was altered: sha256 {digest[:12]}... differs from the manifest's "
                              f"{str(entry.get('sha256'))[:12]}...; {fetch_hint(name, spec, root)}")
    if is_git(spec):
        wrong = check_bytes(spec, digest, git_blob_id(path.read_bytes()) if spec.git.get("blob") else None)
        if wrong:
            raise DataSourceError(f"data file {what} is not the pinned file: {wrong}; {fetch_hint(name, spec, root)}")
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
        if not source_file(dcfg.root, name, spec).is_file() and not spec.get("gated"):
            missing.append(name)
            continue
        out[name] = check_source(dcfg.root, name, spec, manifest)
    if missing:
        files = ", ".join(f"{source_file(dcfg.root, n, dcfg.sources[n])} ({describe(dcfg.sources[n])})"
                          for n in missing)
        offline = [dcfg.sources[n].git.repo for n in missing if is_git(dcfg.sources[n])]
        how = "fetch them" + (" where the hub is reachable" if len(offline) < len(missing) else "")
        repos = ", ".join(dict.fromkeys(offline))
        hint = f" (offline, Git files: add --git-dir <clones of {repos}>)" if offline else ""
        raise DataSourceError(f"{len(missing)} data file(s) missing: {files}; {how}: {FETCH} {' '.join(missing)} "
                              f"--root {dcfg.root}{hint}")
    return out


def read_rows(path: str | Path, spec: Any) -> list[dict[str, Any]]:
    """The upstream rows of a source's local file, as its format stores them (before ``where`` and the schema);
    a file that cannot be parsed, or a CSV whose header lacks the schema's columns, raises
    :class:`DataFileError` naming the file."""
    path = Path(path)
    if not is_git(spec) or spec.git.format == "jsonl":
        return read_jsonl(path)
    fmt = spec.git.format
    if fmt in ("csv", "tsv"):
        dialect = TSV_DIALECT if fmt == "tsv" else {}
        columns = list(spec.git.get("columns") or [])   # a file without a header row: its columns, in order
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh, fieldnames=columns or None, **dialect)
            header = reader.fieldnames or []
            missing = [c for c in SCHEMAS[spec.schema].columns if c not in header]
            if missing:
                where = "columns" if columns else f"{fmt.upper()} header"
                raise DataFileError(f"{path}: the {where} {header} lacks {missing} of the {spec.schema} schema")
            rows = [dict(r) for r in reader]
        ragged = next((i for i, r in enumerate(rows, start=1 if columns else 2) if None in r or None in r.values()),
                      None)
        if ragged is not None:  # DictReader keeps a row with too many or too few fields; upstream has none
            raise DataFileError(f"{path}: line {ragged} does not have the {len(header)} fields of its "
                                f"{'configured columns' if columns else 'header'}")
        return rows
    if fmt == "json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataFileError(f"{path}: not valid JSON ({err})") from None
        records = spec.git.get("records")
        if records:
            data = data.get(records) if isinstance(data, dict) else None
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataFileError(f"{path}: expected a JSON list of objects" + (f" under {records!r}" if records else ""))
        return data
    raise DataFileError(f"{path}: unknown format {fmt!r} (one of {GIT_FORMATS})")


def select_rows(rows: list[dict[str, Any]], name: str, spec: Any, path: str | Path,
                root: str | Path) -> list[dict[str, Any]]:
    """Upstream rows of a source (as :func:`read_rows` gives them) kept by ``where`` (upstream column: value) and
    normalised through its schema; a malformed row raises :class:`DataFileError` naming the file, the row (its
    position in the file) and the command that fetches the source again."""
    where = dict(spec.get("where") or {})
    kept = [(i, r) for i, r in enumerate(rows, start=1) if all(r.get(k) == v for k, v in where.items())]
    try:
        return normalise_rows([r for _, r in kept], spec.schema, str(path), [i for i, _ in kept])
    except DataFileError as err:
        raise DataFileError(f"{err}; {fetch_hint(name, spec, root)}") from None


def source_rows(path: str | Path, name: str, spec: Any, root: str | Path) -> list[dict[str, Any]]:
    """The normalised rows of a source file (:func:`read_rows`, then :func:`select_rows`); a file that cannot be
    read names the command that fetches it again."""
    try:
        rows = read_rows(path, spec)
    except DataFileError as err:
        raise DataFileError(f"{err}; {fetch_hint(name, spec, root)}") from None
    return select_rows(rows, name, spec, path, root)


def load_source(dcfg: Any, name: str) -> list[dict[str, Any]]:
    """The normalised rows of a source's local file (check it first with :func:`check_sources`)."""
    spec = dcfg.sources[name]
    return source_rows(source_file(dcfg.root, name, spec), name, spec, dcfg.root)
