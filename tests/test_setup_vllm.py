"""``make setup-vllm EXTRAS=...`` installs the extras' requirements through the filter that keeps vLLM's own torch,
transformers, tokenizers and safetensors in .venv-vllm (the Makefile's requirements command, run here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_OWN = ("torch", "transformers", "tokenizers", "safetensors")  # what .venv-vllm keeps from vLLM


def vllm_requirements(extras: str) -> list[str]:
    """The requirements ``make setup-vllm EXTRAS=<extras>`` installs after vLLM: its command, as ``make -n`` shows
    it, run with this Python."""
    shown = subprocess.run(["make", "-n", "setup-vllm", f"EXTRAS={extras}"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    code = re.search(r'-c "(import tomllib.*?)" > ', shown, re.S).group(1).replace("\\\n", "")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_setup_vllm_installs_extras_without_this_packages_transformers():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    plain = vllm_requirements("")
    assert set(plain) == {r for r in project["dependencies"] + extras["dev"] if r.split("=")[0] not in VLLM_OWN}
    with_slurm = vllm_requirements("slurm")
    assert set(with_slurm) == set(plain) | set(extras["slurm"])
    assert not [r for r in with_slurm if re.split(r"[=<>!~ ]", r)[0] in VLLM_OWN]
