"""Every command-line entry point answers ``-h``/``--help`` with its usage and exit status 0."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = [
    "experiments.prepare", "experiments.pact_step0", "experiments.safety_tokens", "experiments.bench",
    "experiments.bench_variant", "experiments.judge", "experiments.fetch_data",
    "experiments.diagnostics.seeded", "experiments.diagnostics.check_vllm", "experiments.diagnostics.gpu_check",
    "experiments.diagnostics.batch_invariance", "experiments.diagnostics.protocol_check",
    "analysis.compare", "analysis.report", "analysis.store_profile", "analysis.token_confidence",
    "analysis.world_stats", "analysis.data_overlap", "analysis.readme", "analysis.judge_check", "analysis.mixtures",
    "analysis.corpus", "analysis.attack", "analysis.provenance",
]
HYDRA_MAIN = "experiments.run"  # Hydra answers its --help itself


def test_every_entry_point_is_listed():
    found = {".".join(f.relative_to(ROOT).with_suffix("").parts)
             for d in ("experiments", "experiments/diagnostics", "analysis") for f in (ROOT / d).glob("*.py")
             if "\ndef main(" in f.read_text()}
    assert found == {*ENTRY_POINTS, HYDRA_MAIN}


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_entry_point_answers_help(module, flag, capsys):
    mod = importlib.import_module(module)
    with pytest.raises(SystemExit) as exit_:
        mod.main([flag])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage" in out or mod.__doc__.splitlines()[0] in out


def test_bare_override_entry_points_print_usage_and_docstring(capsys):
    from experiments import prepare

    with pytest.raises(SystemExit) as exit_:
        prepare.main(["world=small", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m experiments.prepare [--evaluate] [key=value ...]\n")
    assert prepare.__doc__.strip() in out


def test_seeded_leaves_help_after_the_module_to_the_module(capsys):
    from experiments.diagnostics import seeded

    # the --help belongs to experiments.prepare: seeded's own parser runs first and objects to the missing --from
    with pytest.raises(SystemExit) as exit_:
        seeded.main(["-m", "experiments.prepare", "--help"])
    assert exit_.value.code == 2


@pytest.mark.slow
def test_hydra_entry_point_answers_help():
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([sys.executable, "-m", HYDRA_MAIN, "--help"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Powered by Hydra" in done.stdout


def test_an_entry_points_own_option_is_taken_out_of_the_overrides(capsys):
    from pact.run.cli import pop_option

    args = ["experiment=smoke", "--out", "x.csv", "seed=1"]
    assert pop_option(args, "--out", "a CSV path") == "x.csv" and args == ["experiment=smoke", "seed=1"]
    assert pop_option(args, "--out", "a CSV path") is None and args == ["experiment=smoke", "seed=1"]
    with pytest.raises(SystemExit) as exit_:
        pop_option(["experiment=smoke", "--rows"], "--rows", "a positive whole number")
    assert exit_.value.code == 2 and "error: --rows needs a positive whole number" in capsys.readouterr().err
