"""``experiments.run`` under ``torchrun --nproc_per_node 2`` (gloo on CPU) trains with the Trainer's data
parallelism and gives what one process gives, within the tolerances stated in the README."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import MICRO

pytestmark = pytest.mark.slow  # torchrun subprocesses

ROOT = Path(__file__).resolve().parents[1]
# Max |weight difference| after fine-tuning, DDP x2 vs one process (README, "Several processes"): SFT's loss is
# a token mean over the global batch and only the summation order differs; PACT's KL term is a mean per rank,
# averaged over ranks, so it weighs tokens slightly differently from one process.
TOLERANCE = {"sft": 1e-4, "pact": 1e-2}
METRIC_TOLERANCE = 100 / 24 + 1e-6   # one of the micro config's 24 evaluation prompts, in percent


def _run(tmp_path: Path, name: str, method: str, nproc: int) -> dict:
    overrides = [*MICRO, "threads=1", f"method={method}", f"store_dir={tmp_path / name / 'store'}",
                 f"runs_dir={tmp_path / name / 'runs'}", f"hydra.run.dir={tmp_path / name / 'hydra'}"]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                 "--standalone"] if nproc > 1 else [sys.executable])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([*launcher, "-m", "experiments.run", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    [record] = (tmp_path / name / "runs" / "default").glob(f"*-{method}-*.json")
    return json.loads(record.read_text())


def _weights(record: dict) -> dict:
    return load_file(Path(record["model_path"]) / "model.safetensors")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Path:
    """One folder for both methods: the second reuses the first's world, base and aligned model in each store (one
    process's, two processes')."""
    return tmp_path_factory.mktemp("ddp")


@pytest.mark.parametrize("method", ["sft", "pact"])
def test_torchrun_two_processes_matches_one(stores, method):
    tmp_path = stores
    one = _run(tmp_path, "one", method, 1)
    two = _run(tmp_path, "two", method, 2)
    meta = json.loads((Path(two["model_path"]).parent / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["ranks"] == 2  # really trained by two processes
    store = tmp_path / "two" / "store"
    # generation, judging and the safety tokens ran once, on rank 0; the training stages on both ranks
    ranks = {(m.parent.parent.name, json.loads(m.read_text())["ranks"]) for m in store.glob("*/*/meta.json")}
    assert {s for s, n in ranks if n == 2} == {"base", "align", "finetune"}
    assert {s for s, n in ranks if n == 1} >= {"world", "generate", "evaluate"} and len(ranks) == len(dict(ranks))
    assert not list(store.glob("*/*.partial-*"))  # the non-zero rank's private build dirs are cleaned up
    mine = [p for p in (tmp_path / "two" / "runs" / "default").glob("*.json")
            if p.name.split("-")[1] in {"base", "aligned", method}]
    assert len(mine) == 3  # base, aligned, tuned: once
    a, b = _weights(one), _weights(two)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < TOLERANCE[method], diff  # without DDP each rank would take twice the steps: diff ~0.1
    for metric in ("harmful_score", "refusal_rate", "finetune_accuracy", "helpfulness"):
        assert abs(one[metric] - two[metric]) <= METRIC_TOLERANCE, (metric, one[metric], two[metric])
