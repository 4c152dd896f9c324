"""Shared fixtures: a micro config of the toy world that runs end to end in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pact.run.config import compose_config, validate

# A micro world and model: every stage runs, nothing is meant to be learnt well.
MICRO = [
    "world=small", "model=toy_small", "world.base_harmful_prompts=400", "world.base_benign_prompts=200",
    "world.align_benign_prompts=100", "world.task_train=200", "world.task_test=40", "world.task_pretrain=60",
    "world.vocab_size=600", "world.benign_eval_prompts=20", "world.tokens_pairs=64",
    "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_heads=2",
    "model.base_train.max_steps=20", "model.align_train.max_steps=15",
    "model.base_train.batch_size=16", "model.align_train.batch_size=16",
    "finetune.n=80", "finetune.optim.epochs=1", "eval.limit=24", "engine.batch_size=32",
    "eval.harmful_max_new_tokens=24", "eval.benign_max_new_tokens=24",
]


def micro_cfg(tmp_path: Path, *overrides: str):
    """The micro config rooted in ``tmp_path`` (composed, not yet validated: ``run`` validates)."""
    return compose_config([*MICRO, f"store_dir={tmp_path / 'store'}", f"runs_dir={tmp_path / 'runs'}", *overrides],
                          check=False)


@pytest.fixture(scope="session")
def micro_upstream(tmp_path_factory) -> Path:
    """A store holding the micro config's world, base and aligned model, their evaluations and PACT's safety set,
    built once per test session."""
    from pact.run import pipeline as P
    from pact.tokens_stage import tokens_stage

    root = tmp_path_factory.mktemp("micro_upstream")
    cfg = validate(micro_cfg(root, "method=pact"))
    up = P.start(cfg)
    for ref in (up.base, up.aligned):
        P.evaluate_stage(up.store, cfg, ref, up.data)
    tokens_stage(up.store, cfg.method.tokens, up.aligned, up.base, up.data, cfg.model.dtype)
    return root / "store"


@pytest.fixture
def micro(tmp_path, micro_upstream):
    """A function making micro configs rooted in this test's tmp dir, whose store starts with a copy of the
    micro world, base and aligned model (configs that change them build their own)."""
    shutil.copytree(micro_upstream, tmp_path / "store", ignore=shutil.ignore_patterns(".locks"))
    return lambda *o: micro_cfg(tmp_path, *o)
