"""Run an entry point with its upstream models copied from another store:
``python -m experiments.diagnostics.seeded --from SRC_STORE [--pick STAGE=KEY ...] -m MODULE [ARGS ...]``.

For checking that a code change moves no number on a machine whose numbers differ from the committed ones (torch's
CPU kernels round differently on other instruction sets): run the old and the new checkout with this, from one
source store, so both start from bit-identical base, aligned and imported models, then compare what they build
(``python -m analysis.compare``). When MODULE's store would build a ``base``, ``align`` or ``import`` artifact, the
artifact of SRC_STORE whose config equals the one asked for (code hashes and unset values aside) and whose ``init``
is what was seeded before is copied in instead; the artifact with the very same key wins, ``--pick`` settles the
rest, and anything else is an error. Only this process is seeded (a sweep's workers reuse what it built:
``experiments.prepare`` first). Each copied artifact's meta.json names its source (``seeded_from``), so a later
process finds what an earlier one seeded (Vaccine's alignment from a base seeded by the first ``prepare``).
"""

from __future__ import annotations

import argparse
import json
import runpy
import shutil
import sys
from pathlib import Path
from typing import Any

from pact.run.cli import exit_on_help
from pact.runtime import store as S

SEEDED_STAGES = ("base", "align", "import")
IGNORED_KEYS = ("code", "method_code")  # the code that built an artifact: what a seeded comparison varies


def comparable(config: Any) -> Any:
    """A stage config without its code hashes and unset (None) values, for matching across code versions."""
    if isinstance(config, dict):
        return {k: comparable(v) for k, v in config.items() if v is not None and k not in IGNORED_KEYS}
    if isinstance(config, list):
        return [comparable(v) for v in config]
    return config


class Seeder:
    """Replaces the builders of :data:`SEEDED_STAGES` with a copy from ``source`` (a store root)."""

    def __init__(self, source: Path, pick: dict[str, str]):
        self.source, self.pick = source, pick

    @staticmethod
    def source_of(store: S.Store, key: str) -> str:
        """The source key a seeded artifact of ``store`` was copied from (its meta.json names the copy's source,
        whichever process seeded it), else ``key`` itself."""
        for stage in SEEDED_STAGES:
            meta = store.path(stage, key) / "meta.json"
            source = json.loads(meta.read_text()).get("seeded_from") if meta.exists() else None
            if source:
                return Path(source).name
        return key

    def match(self, store: S.Store, stage: str, key: str, config: Any, upstream: dict[str, str] | None) -> Path:
        want = comparable(json.loads(json.dumps(config, default=str)))
        init = (upstream or {}).get("init")
        init_source = None if init is None else self.source_of(store, init)
        found = []
        for meta_file in sorted((self.source / stage).glob(f"*/{S.DONE}")):
            meta = json.loads((meta_file.parent / "meta.json").read_text())
            if comparable(meta["config"]) != want:
                continue
            if init is not None and meta["upstream"].get("init") != init_source:
                continue
            found.append(meta_file.parent)
        same = [p for p in found if p.name == key]
        picked = [p for p in found if p.name == self.pick.get(stage)]
        found = same or picked or found
        if len(found) != 1:
            raise SystemExit(f"seeded: {len(found)} artifacts of stage {stage} in {self.source} match "
                             f"{[p.name for p in found]}; choose one with --pick {stage}=KEY")
        return found[0]

    def install(self) -> None:
        original = S.Store._run_builder
        seeder = self

        def run_builder(store, stage, key, config, upstream, builder, publish):
            if stage not in SEEDED_STAGES:
                return original(store, stage, key, config, upstream, builder, publish)
            src = seeder.match(store, stage, key, config, upstream)
            print(f"seeded: stage {stage} {key} <- {src}", flush=True)

            def copy(tmp: Path) -> dict[str, str]:
                for f in src.iterdir():
                    if f.name not in ("meta.json", S.DONE):
                        (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
                return {"seeded_from": str(src)}

            return original(store, stage, key, config, upstream, copy, publish)

        S.Store._run_builder = run_builder


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    usage = "--from SRC_STORE [--pick STAGE=KEY ...] -m MODULE [ARGS ...]"
    cut = args.index("-m") if "-m" in args else len(args)
    exit_on_help(args[:cut], "experiments.diagnostics.seeded", __doc__, usage)  # a --help after -m MODULE is MODULE's
    if cut == len(args):
        raise SystemExit(f"usage: python -m experiments.diagnostics.seeded {usage}")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, help="the store to copy upstream models from")
    parser.add_argument("--pick", action="append", default=[], help="STAGE=KEY when several artifacts match")
    opts = parser.parse_args(args[:cut])
    if cut + 1 >= len(args):
        raise SystemExit("seeded: -m needs a module")
    Seeder(Path(opts.source), dict(p.split("=", 1) for p in opts.pick)).install()
    module, sys.argv = args[cut + 1], [args[cut + 1], *args[cut + 2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
