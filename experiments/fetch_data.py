"""Fetch the real data's sources into ``data.root``: the first step of every real-data run.

``python -m experiments.fetch_data [SOURCE ...] [--root DIR]`` brings each source (default: every one that is not
gated) at the commit or revision ``conf/data/real.yaml`` pins and records it in ``<root>/MANIFEST.json``:
- a file of a Git repository (``git:``) is downloaded from its raw URL at the pinned commit (plain HTTPS, no
  login) or, with ``--git-dir DIR [DIR ...]``, read from local clones or git directories at that commit (a clone
  at another HEAD gives the same bytes; a byte-identical copy the config lists is accepted where the canonical
  repository is not at hand, and the manifest names the canonical source). Its bytes must match the pinned git
  blob id and sha256; it is kept as ``<root>/<source>.<format>``. With ``--git-dir`` the default is every Git source.
- a Hugging Face dataset (``hub:``) is downloaded with ``datasets`` where the hub is reachable and written as
  ``<root>/<source>.jsonl`` in its upstream schema.
Runs with ``data=real`` or ``data=pact_official`` read only these files and stop before any model loads when one
is missing, altered or malformed. ``--list`` shows each source, where it comes from and what the manifest holds.

Gated sources (HEx-PHI): accept the terms on the dataset's hub page, download its CSV files, then
``python -m experiments.fetch_data hexphi --from <folder>`` imports them (one prompt per row, one file per category).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pact.data.rows import DataFileError, write_jsonl
from pact.data.sources import (
    MANIFEST,
    DataSourceError,
    check_bytes,
    check_source,
    describe,
    git_blob_id,
    is_git,
    normalise_rows,
    read_manifest,
    read_rows,
    select_rows,
    sha256_file,
    source_file,
)
from pact.run.cli import fail, run_cli
from pact.run.config import compose_config
from pact.runtime.fileio import atomic_path, write_atomic

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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_manifest_entry(root: Path, name: str, entry: dict[str, Any]) -> None:
    manifest = read_manifest(root)
    manifest[name] = entry
    write_atomic(root / MANIFEST, json.dumps({"sources": dict(sorted(manifest.items()))}, indent=2) + "\n")


def store_source(root: Path, name: str, spec: Any, rows: list[dict[str, Any]], commit: str) -> dict[str, Any]:
    """Write one hub source's file and its manifest entry (rows are checked against the schema first)."""
    normalise_rows(rows, spec.schema, f"{spec.hub} ({name})")
    path = source_file(root, name, spec)
    write_jsonl(path, rows)
    entry = {"kind": "hub", "hub": spec.hub, "config": spec.get("config"), "split": spec.split,
             "revision": spec.revision, "commit": commit, "rows": len(rows), "sha256": sha256_file(path),
             "file": path.name, "fetched": _now()}
    if spec.get("rows") and int(spec.rows) != len(rows):
        log.warning("%s: %d rows, conf/data/real.yaml expects %d", name, len(rows), int(spec.rows))
    _write_manifest_entry(root, name, entry)
    return entry


# ---- files of Git repositories -------------------------------------------------------------------------------
def git_candidates(spec: Any) -> list[tuple[str, str, str]]:
    """(repo, commit, path) of the canonical file, then of each byte-identical copy the config lists."""
    g = spec.git
    return [(g.repo, g.commit, g.path)] + [(c.repo, c.commit, c.path) for c in (g.get("copies") or [])]


def check_git_dirs(dirs: list[Path]) -> None:
    """Each ``--git-dir`` must be a clone or a git directory."""
    for d in dirs:
        done = subprocess.run(["git", "-C", str(d), "rev-parse", "--git-dir"], capture_output=True, text=True)
        if done.returncode != 0:
            raise FileNotFoundError(f"--git-dir {d}: not a git clone or git directory")


def git_file_from_dirs(name: str, spec: Any, dirs: list[Path]) -> tuple[bytes, dict[str, str]]:
    """(bytes, origin) of a Git source read at its pinned commit from the first of ``dirs`` that holds it (or one
    of its copies)."""
    listed = []
    for repo, commit, path in git_candidates(spec):
        for d in dirs:
            git = ["git", "-C", str(d)]
            done = subprocess.run([*git, "cat-file", "blob", f"{commit}:{path}"], capture_output=True)
            if done.returncode == 0:
                return done.stdout, {"repo": repo, "commit": commit, "path": path, "via": f"git directory {d}"}
            if subprocess.run([*git, "rev-parse", "--verify", "--quiet", f"{commit}:{path}"],
                              capture_output=True).returncode == 0:
                listed.append(str(d))
    wanted = "; ".join(f"{r}@{c} {p}" for r, c, p in git_candidates(spec))
    if listed:
        raise DataSourceError(f"source {name}: {', '.join(listed)} lists {wanted} but lacks its bytes (a partial or "
                              f"shallow clone); download it, or pass a full clone of {spec.git.repo} with --git-dir")
    raise DataSourceError(f"source {name}: no --git-dir holds {wanted} (a clone without that commit, or another "
                          f"repository); clone https://github.com/{spec.git.repo} and pass it with --git-dir")


def git_file_download(name: str, spec: Any, url: str, timeout: float) -> tuple[bytes, dict[str, str]]:
    """(bytes, origin) of a Git source downloaded from ``url`` (a template with {repo}, {commit}, {path}), the
    canonical repository first, then its copies; ``timeout``: seconds per request."""
    errors = []
    for repo, commit, path in git_candidates(spec):
        address = url.format(repo=repo, commit=commit, path=path)
        try:
            with urllib.request.urlopen(address, timeout=timeout) as response:
                return response.read(), {"repo": repo, "commit": commit, "path": path, "via": address}
        except urllib.error.HTTPError as err:
            errors.append(f"{address}: HTTP {err.code}")
        except (urllib.error.URLError, OSError) as err:
            errors.append(f"{address}: {getattr(err, 'reason', err)}")
    raise DataSourceError(f"source {name}: could not download it ({'; '.join(errors)}); where the network is not "
                          f"reachable, clone {spec.git.repo} elsewhere and import it with --git-dir <clone>")


def store_git_source(root: Path, name: str, spec: Any, data: bytes, origin: dict[str, str]) -> dict[str, Any]:
    """Check a Git source's bytes against the pins and its rows against the schema, then write the file (as
    upstream has it) and its manifest entry; a file that fails a check is not written."""
    g = spec.git
    digest, blob = hashlib.sha256(data).hexdigest(), git_blob_id(data)
    wrong = check_bytes(spec, digest, blob)
    if wrong:
        raise DataSourceError(f"source {name}: {origin['repo']}@{origin['commit']} {origin['path']} ({origin['via']}) "
                              f"is not the pinned file: {wrong}")
    path = source_file(root, name, spec)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        try:
            raw = read_rows(tmp, spec)
            select_rows(raw, name, spec, tmp, root)  # every row the run would read passes the schema
            rows = len(raw)
        except DataFileError as err:  # named as upstream names it; nothing is written
            where = f"{origin['repo']}@{origin['commit'][:12]} {origin['path']} ({origin['via']})"
            raise DataFileError(str(err).replace(str(tmp), where)) from None
        if spec.get("rows") is not None and int(spec.rows) != rows:
            raise DataSourceError(f"source {name}: {rows} rows in {origin['path']}, conf/data pins {int(spec.rows)}")
    entry = {"kind": "git", "repo": g.repo, "commit": g.commit, "path": g.path, "format": g.format, "blob": blob,
             "sha256": digest, "rows": rows, "file": path.name, "fetched": _now()}
    if origin["repo"] != g.repo:
        entry["copy"] = {k: origin[k] for k in ("repo", "commit", "path")}
    entry["via"] = origin["via"]
    _write_manifest_entry(root, name, entry)
    return entry


def fetch(dcfg: DictConfig, names: list[str], from_dir: Path | None = None,
          git_dirs: list[Path] | None = None) -> dict[str, dict[str, Any]]:
    """Fetch (or, with ``from_dir``, import a gated download; with ``git_dirs``, import Git files from local
    clones) the named sources into ``dcfg.root``."""
    root = Path(dcfg.root)
    root.mkdir(parents=True, exist_ok=True)
    if git_dirs:
        check_git_dirs(git_dirs)
    out, failed = {}, []
    for name in names:
        spec = dcfg.sources[name]
        try:
            out[name] = fetch_one(root, name, spec, dcfg, from_dir, git_dirs)
        except DataSourceError as err:  # the others still come; what came is kept
            if len(names) == 1:
                raise
            failed.append(str(err))
            continue
        log.info("%s: %d rows -> %s", name, out[name]["rows"], source_file(root, name, spec))
    if failed:
        raise DataSourceError(f"{len(failed)} of {len(names)} source(s) not fetched (the other {len(out)} are): "
                              + " | ".join(failed))
    return out


def fetch_one(root: Path, name: str, spec: Any, dcfg: DictConfig, from_dir: Path | None,
              git_dirs: list[Path] | None) -> dict[str, Any]:
    """Fetch or import one source (see :func:`fetch`); returns its manifest entry."""
    if is_git(spec):
        data, origin = (git_file_from_dirs(name, spec, git_dirs) if git_dirs
                        else git_file_download(name, spec, dcfg.git_raw_url, float(dcfg.download_timeout_s)))
        return store_git_source(root, name, spec, data, origin)
    if git_dirs:
        raise DataSourceError(f"source {name} ({describe(spec)}) comes from the hub, not a Git repository: "
                              "fetch it without --git-dir where the hub is reachable")
    if from_dir is not None:
        return store_source(root, name, spec, local_csv_rows(from_dir), f"local import of {from_dir}")
    if spec.get("gated"):
        raise FileNotFoundError(f"source {name} ({spec.hub}) is gated: accept its terms at {spec.get('access')}, "
                                "download its files and import them with --from <folder>")
    return store_source(root, name, spec, *hub_rows(spec))


def listing(dcfg: DictConfig, names: list[str] | None = None) -> list[str]:
    """One line per source (all, or ``names``): name, where it comes from, and what the local file and manifest
    hold (checked)."""
    manifest = read_manifest(dcfg.root)
    lines = []
    for name in names or list(dcfg.sources):
        spec = dcfg.sources[name]
        have = manifest.get(name)
        if not have:
            state = "not fetched"
        else:
            try:
                check_source(dcfg.root, name, spec, manifest)
                expected = f" of {int(spec.rows)}" if spec.get("rows") is not None else ""
                state = f"ok, {have['rows']}{expected} rows, sha256 {have['sha256'][:16]}"
                if have.get("copy"):
                    state += f", imported from the copy {have['copy']['repo']}@{have['copy']['commit'][:12]}"
                elif not is_git(spec):
                    state += f", commit {have['commit']}"
            except (DataSourceError, FileNotFoundError) as err:
                state = f"PROBLEM: {str(err).split(';')[0]}"
        lines.append(f"{name:20s} {'git' if is_git(spec) else 'hub'}  {describe(spec)}: {state}")
    return lines


def sources_table(dcfg: DictConfig) -> str:
    """The sources of the config as a Markdown table: name, kind, where from (repository, commit, path or hub id,
    split, revision), the file's rows (before a ``where`` selects some), licence."""
    lines = ["| source | kind | from | file rows | licence |", "|---|---|---|---|---|"]
    for name, spec in dcfg.sources.items():
        if is_git(spec):
            g = spec.git
            where = f"`{g.repo}` @ `{g.commit[:12]}` `{g.path}`"
            if g.get("copies"):
                where += " (copies: " + ", ".join(f"`{c.repo}`" for c in g.copies) + ")"
            if spec.get("where"):
                where += " where " + ", ".join(f"{k} = {v}" for k, v in spec.where.items())
        else:
            where = f"`{spec.hub}` {spec.get('config') or ''} {spec.split} @ `{spec.revision[:12]}`".replace("  ", " ")
            if spec.get("gated"):
                where += " (**gated**)"
        rows = f"{int(spec.rows):,}" if spec.get("rows") is not None else "?"
        lines.append(f"| {name} | {'git' if is_git(spec) else 'hub'} | {where} | {rows} | {spec.get('license', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.fetch_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", help="source names of conf/data/real.yaml (default: every one "
                        "that is not gated), and overrides of the data config as key=value, e.g. "
                        "\"data.git_raw_url='https://<a mirror>/{repo}/{commit}/{path}'\" (quoted: braces)")
    parser.add_argument("--root", help="where the files go (default: data.root, i.e. $PACT_DATA or data/real)")
    parser.add_argument("--from", dest="from_dir", type=Path, help="import a gated source from downloaded files")
    parser.add_argument("--git-dir", dest="git_dirs", type=Path, nargs="+", metavar="DIR",
                        help="import Git sources from these local clones or git directories (read at the pinned "
                        "commit) instead of downloading them")
    parser.add_argument("--kind", choices=("git", "hub"), help="without source names: every source of this kind "
                        "(git: the files of Git repositories; hub: the Hugging Face datasets that are not gated)")
    parser.add_argument("--list", action="store_true", help="list the sources and what the manifest holds")
    parser.add_argument("--table", action="store_true", help="print the sources of conf/data/real.yaml as a Markdown "
                        "table (docs/real-data.md quotes it)")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def go() -> None:
        overrides = [a for a in args.sources if "=" in a]
        sources = [a for a in args.sources if "=" not in a]
        cfg = compose_config(["data=real", *([f"data.root={args.root}"] if args.root else []), *overrides],
                             check=False)
        dcfg = cfg.data
        unknown = [s for s in sources if s not in dcfg.sources]
        if unknown:
            fail(f"unknown source(s) {unknown}; known: {sorted(dcfg.sources)}")
        kind = args.kind or ("git" if args.git_dirs else None)
        if args.table:
            print(sources_table(dcfg))
            return
        if args.list:
            shown = [n for n, s in dcfg.sources.items() if (not sources or n in sources)
                     and kind in (None, "git" if is_git(s) else "hub")]
            print("\n".join(listing(dcfg, shown)))
            return
        names = sources or [n for n, s in dcfg.sources.items() if not s.get("gated")
                            and kind in (None, "git" if is_git(s) else "hub")]
        if args.from_dir is not None and len(names) != 1:
            fail("--from imports one source at a time: name it (e.g. hexphi)")
        fetch(dcfg, names, args.from_dir, args.git_dirs)
        print(f"wrote {len(names)} source(s) and {Path(dcfg.root) / MANIFEST}")

    run_cli(go)

if __name__ == "__main__":
    main(sys.argv[1:])
