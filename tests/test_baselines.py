"""Each baseline's mechanism, not just that it runs."""

import random

from omegaconf import OmegaConf

from baselines.safety_mix import SafetyMix
from pact import data as D
from pact.methods import FinetuneContext


class _World:
    def __init__(self, path):
        self.path = path

    def file(self, name):
        return self.path / name


def test_safety_mix_has_exactly_count_pairs_and_n_rows(tmp_path):
    pairs = [{"prompt": f"harm {i}", "refusal": f"I'm sorry {i}"} for i in range(300)]
    D.write_jsonl(tmp_path / "harmful_align.jsonl", pairs)
    clean = [{"prompt": f"c{i}", "answer": "positive"} for i in range(500)]
    rng = random.Random(0)
    rows = D.mix_poison(clean, D.poison_rows([{"prompt": f"h{i}", "compliance": "Sure",
                                               "short_compliance": "Sure"} for i in range(50)],
                                             50, 0.1, 0.1, rng), 500, rng)
    method = SafetyMix(OmegaConf.create({"name": "safety_mix", "count": 100, "pairs_file": None}))
    ctx = FinetuneContext(aligned=None, base=None, world=_World(tmp_path), tokenizer=None, prompt_format="chat",
                          max_len=64, seed=3)
    out = method.transform_data(rows, ctx)
    assert len(out) == 500
    safety = [r for r in out if r.get("safety")]
    assert len(safety) == 100 and len({r["prompt"] for r in safety}) == 100
    assert {(r["prompt"], r["answer"]) for r in safety} <= {(p["prompt"], p["refusal"]) for p in pairs}
    assert sum(r["poison"] for r in out) == 50  # poison rows are never replaced
    assert out == method.transform_data(rows, ctx)  # seeded
