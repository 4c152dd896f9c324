"""Fetch the real data's sources into ``data.root`` (run first, where the Hugging Face hub is reachable).

``python -m experiments.fetch_data [SOURCE ...] [--root DIR]`` downloads each source (default: every source that
is not gated) with ``datasets`` at the revision ``conf/data/real.yaml`` pins, writes it as ``<root>/<source>.jsonl``
in its upstream schema and records it in ``<root>/MANIFEST.json`` (hub id, config, split, requested revision,
resolved commit, rows, sha256). Runs with ``data=real`` read only these files and stop at validation when one
is missing or differs from the manifest.

Gated sources (HEx-PHI): accept the terms on the dataset's hub page, download its CSV files, then
``python -m experiments.fetch_data hexphi --from <folder>`` imports them (one prompt per row, one file per category).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pact.cli import fail, run_cli
from pact.config import compose_config
from pact.data import write_jsonl
from pact.fileio import write_atomic
from pact.sources import MANIFEST, normalise_rows, read_manifest, sha256_file, source_file

log = logging.getLogger("experiments.fetch_data")


def hub_rows(spec: Any) -> tuple[list[dict[str, Any]], str]:
    """(rows, resolved commit) of a hub source at its pinned revision."""
    import datasets
    from huggingface_hub import HfApi

    ds = datasets.load_dataset(spec.hub, spec.get("config"), split=spec.split, revision=spec.revision)
    commit = HfApi().dataset_info(spec.hub, revision=spec.revision).sha
    return [dict(row) for row in ds], str(commit)


def local_csv_rows(folder: Path) -> list[dict[str, Any]]:
    """HEx-PHI's layout: ``category_<k>.csv`` files, one prompt per row, no header; category = the file's stem."""
    files = sorted(folder.glob("category_*.csv"), key=lambda p: int(p.stem.rpartition("_")[2] or 0))
    if not files:
        raise FileNotFoundError(f"--from {folder}: no category_<k>.csv files (HEx-PHI's layout)")
    rows = []
    for f in files:
        with f.open(encoding="utf-8", newline="") as fh:
            rows += [{"prompt": r[0].strip(), "category": f.stem} for r in csv.reader(fh) if r and r[0].strip()]
    return rows


def store_source(root: Path, name: str, spec: Any, rows: list[dict[str, Any]], commit: str) -> dict[str, Any]:
    """Write one source's file and its manifest entry (rows are checked against the schema first)."""
    normalise_rows(rows, spec.schema, f"{spec.hub} ({name})")
    path = source_file(root, name)
    write_jsonl(path, rows)
    entry = {"hub": spec.hub, "config": spec.get("config"), "split": spec.split, "revision": spec.revision,
             "commit": commit, "rows": len(rows), "sha256": sha256_file(path), "file": path.name,
             "fetched": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    if spec.get("rows") and int(spec.rows) != len(rows):
        log.warning("%s: %d rows, conf/data/real.yaml expects %d", name, len(rows), int(spec.rows))
    manifest = read_manifest(root)
    manifest[name] = entry
    write_atomic(root / MANIFEST, json.dumps({"sources": dict(sorted(manifest.items()))}, indent=2) + "\n")
    return entry


def fetch(dcfg: DictConfig, names: list[str], from_dir: Path | None = None) -> dict[str, dict[str, Any]]:
    """Fetch (or, with ``from_dir``, import) the named sources into ``dcfg.root``."""
    root = Path(dcfg.root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        spec = dcfg.sources[name]
        if from_dir is not None:
            rows, commit = local_csv_rows(from_dir), f"local import of {from_dir}"
        elif spec.get("gated"):
            raise FileNotFoundError(f"source {name} ({spec.hub}) is gated: accept its terms at "
                                    f"{spec.get('access')}, download its files and import them with "
                                    f"--from <folder>")
        else:
            rows, commit = hub_rows(spec)
        out[name] = store_source(root, name, spec, rows, commit)
        log.info("%s: %d rows -> %s", name, out[name]["rows"], source_file(root, name))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.fetch_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="source names of conf/data/real.yaml (default: every one "
                        "that is not gated)")
    parser.add_argument("--root", help="where the files go (default: data.root, i.e. $PACT_DATA or data/real)")
    parser.add_argument("--from", dest="from_dir", type=Path, help="import a gated source from downloaded files")
    parser.add_argument("--list", action="store_true", help="list the sources and what the manifest holds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def go() -> None:
        cfg = compose_config(["data=real", *([f"data.root={args.root}"] if args.root else [])], check=False)
        dcfg = cfg.data
        unknown = [s for s in args.sources if s not in dcfg.sources]
        if unknown:
            fail(f"unknown source(s) {unknown}; known: {sorted(dcfg.sources)}")
        if args.list:
            manifest = read_manifest(dcfg.root)
            for name, spec in dcfg.sources.items():
                have = manifest.get(name)
                state = f"{have['rows']} rows, commit {have['commit']}" if have else "not fetched"
                print(f"{name:20s} {spec.hub} {spec.get('config') or ''} {spec.split}: {state}")
            return
        names = args.sources or [n for n, s in dcfg.sources.items() if not s.get("gated")]
        if args.from_dir is not None and len(names) != 1:
            fail("--from imports one source at a time: name it (e.g. hexphi)")
        fetch(dcfg, names, args.from_dir)
        print(f"wrote {len(names)} source(s) and {Path(dcfg.root) / MANIFEST}")

    run_cli(go)

if __name__ == "__main__":
    main(sys.argv[1:])
