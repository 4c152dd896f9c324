"""Content-keyed artifact store: ``<root>/<stage>/<key>/`` with a ``DONE`` marker written last.

A stage's key hashes exactly its config slice plus its upstream keys. Building happens in a private
``<key>.partial-<pid>`` directory that is renamed into place only after ``DONE`` is written, so a killed run
never leaves a directory that looks finished; a file lock makes concurrent jobs that need the same artifact
build it once.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from pact.runtime import dist

log = logging.getLogger("pact.runtime.store")
DONE = "DONE"
KEY_CHARS = 16
# How often a non-zero rank looks for the artifact rank 0 builds alone, and how often it says it still waits.
WAIT_POLL_SECONDS = 0.5
WAIT_LOG_SECONDS = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout holding pact/, baselines/, conf/


def stable_key(payload: Any) -> str:
    """A short hash of a JSON-serialisable payload (sorted keys: the same config gives the same key)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_CHARS]


def code_hash(*paths: str | os.PathLike) -> str:
    """A hash of source files (directories: their ``*.py``): a stage's key includes the code that builds it,
    so editing a generator or a trainer never reuses artifacts the old code made."""
    texts = []
    for p in sorted(Path(x) for x in paths):
        files = sorted(p.glob("*.py")) if p.is_dir() else [p]
        texts += [f"{f.name}\n{f.read_text()}" for f in files]
    return stable_key(texts)


def imported_modules(path: Path, module: str) -> set[str]:
    """Absolute names of the modules a source file imports anywhere in it (function-level imports too);
    ``from X import y`` yields X and X.y (one of them may not be a module: the caller resolves)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{anchor}.{base}" if base else anchor
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _local_origin(name: str, roots: tuple[Path, ...]) -> Path | None:
    """The source file of module ``name`` if it lives under one of ``roots`` (and not in an installed
    environment), else None."""
    parent = name.rpartition(".")[0]
    if parent:
        origin = _local_origin(parent, roots)
        # an installed library's parents are never imported; nor is a module asked for "module.name", which is an
        # attribute, not a submodule: finding its spec would import the module (the Trainer stack, for
        # pact.training.trainer)
        if origin is None or origin.name != "__init__.py":
            return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    origin = Path(spec.origin).resolve()
    if "site-packages" in origin.parts or not any(origin.is_relative_to(r) for r in roots):
        return None
    return origin


def module_sources(*modules: str) -> list[Path]:
    """Source files of ``modules`` and of every module they import, transitively, that lives in this repository
    or in the modules' own top-level packages (a plugin outside the repository): the code a stage runs, for its
    key. Installed libraries are not followed."""
    roots = {REPO_ROOT}
    for name in modules:
        origin = _local_origin(name.partition(".")[0], (Path("/"),))
        if origin is not None:
            roots.add(origin.parent)
    roots_t = tuple(roots)
    visited: set[str] = set()
    found: set[Path] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in visited:
            continue
        visited.add(name)
        origin = _local_origin(name, roots_t)
        if origin is None:
            if name in modules:
                raise ModuleNotFoundError(f"no source file for module {name!r}")
            continue
        found.add(origin)
        todo.extend(imported_modules(origin, name))
    return sorted(found)


@dataclass(frozen=True)
class Artifact:
    stage: str
    key: str
    path: Path

    def file(self, name: str) -> Path:
        return self.path / name


class Store:
    """The artifact store rooted at ``root``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def key(self, stage: str, config: Any, upstream: dict[str, str] | None = None) -> str:
        return stable_key({"stage": stage, "config": config, "upstream": upstream or {}})

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def done(self, stage: str, key: str) -> bool:
        return (self.path(stage, key) / DONE).is_file()

    @contextmanager
    def _lock(self, stage: str, key: str) -> Iterator[None]:
        lock_dir = self.root / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{stage}-{key}.lock")):
            yield

    def build(self, stage: str, config: Any, upstream: dict[str, str] | None,
              builder: Callable[[Path], dict[str, Any] | None], collective: bool = False) -> Artifact:
        """Return the artifact for (stage, config, upstream), running ``builder(tmp_dir)`` only if it is not
        already complete. ``builder`` writes its files into ``tmp_dir`` and may return metadata for
        ``meta.json``. Under torchrun a ``collective`` stage (training: every rank takes part) runs on every rank;
        any other (generation, judging, safety tokens, data) runs on rank 0 alone while the others wait for its
        artifact on the store."""
        key = self.key(stage, config, upstream)
        final = self.path(stage, key)
        if dist.is_distributed():
            if collective:
                return self._build_ranks(stage, key, config, upstream, builder)
            if not dist.is_main():
                return self._wait_for(stage, key)
        if self.done(stage, key):
            log.info("stage %s: reusing %s", stage, final)
            return Artifact(stage, key, final)
        with self._lock(stage, key):
            if self.done(stage, key):  # another job finished it while we waited
                return Artifact(stage, key, final)
            self._clear_stale(final, key)
            self._run_builder(stage, key, config, upstream, builder, publish=True)
        return Artifact(stage, key, final)

    def _build_ranks(self, stage: str, key: str, config: Any, upstream: dict[str, str] | None,
                     builder: Callable[[Path], dict[str, Any] | None]) -> Artifact:
        """The torchrun variant of :meth:`build`: every rank runs ``builder`` (training needs them all) in its
        own directory and rank 0 publishes. Only rank 0 takes the file lock (a peer waiting on it would leave
        rank 0 alone in the Trainer's collectives); rank 0 decides whether to build and tells the others."""
        final = self.path(stage, key)
        with self._lock(stage, key) if dist.is_main() else nullcontext():
            done = self.done(stage, key)
            if not done and dist.is_main():
                self._clear_stale(final, key)
            if not dist.broadcast(done):
                self._run_builder(stage, key, config, upstream, builder, publish=dist.is_main(), collective=True)
            dist.barrier()  # nobody reads the artifact before rank 0 has published it
        return Artifact(stage, key, final)

    def _wait_for(self, stage: str, key: str) -> Artifact:
        """A non-zero rank's share of a stage rank 0 builds alone: wait until its artifact is published (a failure
        on rank 0 ends the launch, so this never outlives it); no collective call, so a build longer than the
        process group's timeout (an 8B model's generation) does not break the group."""
        start, said = time.monotonic(), 0.0
        while not self.done(stage, key):
            waited = time.monotonic() - start
            if waited - said >= WAIT_LOG_SECONDS:
                log.info("rank %d: waiting %.0f s for rank 0's stage %s %s", dist.rank(), waited, stage, key)
                said = waited
            time.sleep(WAIT_POLL_SECONDS)
        return Artifact(stage, key, self.path(stage, key))

    @staticmethod
    def _clear_stale(final: Path, key: str) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        for stale in final.parent.glob(f"{key}.partial-*"):  # left by a killed run: never reused
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a directory without DONE is incomplete
            shutil.rmtree(final)

    def _run_builder(self, stage: str, key: str, config: Any, upstream: dict[str, str] | None,
                     builder: Callable[[Path], dict[str, Any] | None], publish: bool,
                     collective: bool = False) -> None:
        """Build into a private directory; with ``publish``, write meta.json (``ranks``: how many processes ran
        the builder) and DONE and move it into place."""
        final = self.path(stage, key)
        tmp = final.parent / f"{key}.partial-{os.getpid()}"
        tmp.mkdir(parents=True)
        start = time.time()
        meta = builder(tmp) or {}
        if not publish:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        ranks = dist.world_size() if collective else 1
        meta = {"stage": stage, "key": key, "config": config, "upstream": upstream or {},
                "seconds": round(time.time() - start, 2), "world_size": dist.world_size(), "ranks": ranks, **meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        (tmp / DONE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        os.replace(tmp, final)
        log.info("stage %s: built in %.1fs -> %s", stage, meta["seconds"], final)
