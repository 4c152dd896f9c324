"""Shared fixtures: a micro config of the toy world that runs end to end in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")

# A micro world and model: every stage runs, nothing is meant to be learnt well.
MICRO = [
    "world=small", "model=toy_small", "world.base_harmful_prompts=400", "world.base_benign_prompts=200",
    "world.align_benign_prompts=100", "world.task_train=200", "world.task_test=40", "world.task_pretrain=60",
    "world.vocab_size=600", "world.benign_eval_prompts=20",
    "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "model.arch.num_heads=2",
    "model.base_train.max_steps=40", "model.align_train.max_steps=30",
    "model.base_train.batch_size=16", "model.align_train.batch_size=16",
    "finetune.n=80", "finetune.optim.epochs=1", "eval.limit=24", "engine.batch_size=32",
]


def micro_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=[*MICRO, f"store_dir={tmp_path / 'store'}",
                                            f"runs_dir={tmp_path / 'runs'}", *overrides])


@pytest.fixture
def micro(tmp_path):
    """A function making micro configs rooted in this test's tmp dir."""
    return lambda *o: micro_cfg(tmp_path, *o)
