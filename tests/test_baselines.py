"""Each baseline's mechanism, not just that it runs."""

import random

import pytest
from omegaconf import OmegaConf

from baselines.safety_mix import SafetyMix
from pact import data as D
from pact.methods import FinetuneContext
from pact.rundata import ToyData
from pact.store import Artifact


def test_safety_mix_has_exactly_count_pairs_and_n_rows(tmp_path):
    pairs = [{"prompt": f"harm {i}", "refusal": f"I'm sorry {i}"} for i in range(300)]
    D.write_jsonl(tmp_path / "harmful_align.jsonl", pairs)
    clean = [{"prompt": f"c{i}", "answer": "positive"} for i in range(500)]
    rng = random.Random(0)
    rows = D.mix_poison(clean, D.poison_rows([{"prompt": f"h{i}", "compliance": "Sure",
                                               "short_compliance": "Sure"} for i in range(50)],
                                             50, 0.1, 0.1, rng), 500, rng)
    method = SafetyMix(OmegaConf.create({"id": "safety_mix", "count": 100, "pairs_file": None}))
    world = ToyData(Artifact("world", "w", tmp_path))
    ctx = FinetuneContext(aligned=None, base=None, data=world, tokenizer=None, prompt_format="chat", max_len=64,
                          seed=3)
    out = method.transform_data(rows, ctx)
    assert len(out) == 500
    safety = [r for r in out if r.get("safety")]
    assert len(safety) == 100 and len({r["prompt"] for r in safety}) == 100
    assert {(r["prompt"], r["answer"]) for r in safety} <= {(p["prompt"], p["refusal"]) for p in pairs}
    assert sum(r["poison"] for r in out) == 50  # poison rows are never replaced
    assert out == method.transform_data(rows, ctx)  # seeded


def test_best_window_picks_largest_growth():
    from baselines.freeze import best_window

    assert best_window([0.0, 0.1, 0.6, 0.7, 0.7], 2) == (1, 2)
    assert best_window([0.0, 0.0, 0.0, 0.9], 1) == (3, 3)


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_freeze_keeps_the_safety_block_bit_identical(micro, tmp_path):
    import json

    from safetensors.torch import load_file

    from experiments.run import run

    run(micro("method=freeze", "poison.ratio=0.1"))  # the micro model's 2 layers: a block of 1
    store = tmp_path / "store"
    [ft] = [p for p in (store / "finetune").iterdir() if (p / "DONE").exists()]
    meta = json.loads((ft / "meta.json").read_text())
    al = store / "align" / meta["upstream"]["aligned"]  # the model it started from
    block = meta["method_stats"]["block"]
    assert (store / "safety_layers").exists() and block[0] == block[1]  # 25% of 2 layers: at least 1
    before = load_file(str(al / "model" / "model.safetensors"))
    after = load_file(str(ft / "model" / "model.safetensors"))
    frozen = [k for k in before if any(f"layers.{i}." in k for i in range(block[0], block[1] + 1))]
    moved = [k for k in before if "layers." in k and k not in frozen]
    assert frozen and all(torch_equal(before[k], after[k]) for k in frozen)
    assert all(not torch_equal(before[k], after[k]) for k in moved)


def test_freeze_lora_skips_the_block_and_control_moves_it():
    from omegaconf import OmegaConf

    from baselines.freeze import Freeze

    m = Freeze(OmegaConf.create({"id": "freeze", "layers": [1, 2], "window_fraction": 0.25, "control": False}))
    m.block = (1, 2)
    assert m.lora_layers(6) == [0, 3, 4, 5]


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)


def test_constrained_sft_weights_match_hand_computation():
    import math

    import torch
    from omegaconf import OmegaConf

    from baselines.constrained_sft import ConstrainedSFT, beta_schedule

    assert beta_schedule(7, 0.1, 5, 20, 5).tolist() == pytest_approx([0.5, 2, 2, 2, 2, 0.1, 0.1])
    assert beta_schedule(2, 0.1, 5, 20, 5).tolist() == pytest_approx([0.5, 2])
    cfg = OmegaConf.create({"id": "constrained_sft", "beta": 0.1, "first_token_factor": 5, "prefix_factor": 20,
                            "prefix_len": 5, "weight_min": 1e-3, "warmup_steps": 10, "adam_beta1": 0.5})
    m = ConstrainedSFT(cfg)
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0, -0.2, -40.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -1.0, -2.0, -0.1, -1.0]])
    betas = [0.5, 2, 2, 2, 2, 0.1, 0.1]
    want = [max(2 / (1 + math.exp(b * (lp - rf))), 1e-3) for b, lp, rf in zip(betas, logp[0].tolist(), ref[0].tolist())]
    assert m.weights(logp, ref)[0].tolist() == pytest_approx(want)
    assert m.weights(logp, ref)[0, 2] == 1.0  # equal log-probs: weight 1, plain SFT
    assert m.training_overrides() == {"warmup_steps": 10, "adam_beta1": 0.5}


def pytest_approx(values):
    import pytest

    return pytest.approx(values, rel=1e-6, abs=1e-7)


def test_lisa_switches_at_configured_steps():
    from baselines.lisa import ALIGN, FINETUNE, LisaState

    s = LisaState(2, 3)
    statuses = []
    for _ in range(12):
        s.tick()
        statuses.append(s.status)
    assert statuses == [ALIGN, ALIGN, FINETUNE, FINETUNE, FINETUNE, ALIGN, ALIGN, FINETUNE, FINETUNE, FINETUNE,
                        ALIGN, ALIGN]
    assert s.switches == [(2, FINETUNE), (5, ALIGN), (7, FINETUNE), (10, ALIGN)]


def test_lisa_proximal_term_and_schedule():
    import torch
    from omegaconf import OmegaConf

    from baselines.lisa import ALIGN, FINETUNE, Lisa, LisaState

    m = Lisa(OmegaConf.create({"id": "lisa", "rho": 0.5, "cycles": 20, "align_fraction": 0.1,
                               "proximal_skip_fraction": 0.1, "align_rows": 0, "align_file": None}))
    assert m.schedule(20000) == (100, 900)  # the official 100/900 at the official length
    assert m.schedule(189) == (1, 8)
    model = torch.nn.Linear(3, 2)
    m.on_train_begin(model, 100)
    with torch.no_grad():
        model.weight.add_(1.0)
    m.state = LisaState(1, 1)
    m.state.status = FINETUNE
    # fine-tuning state: anchor = weights when alignment last ended (here: the start)
    assert float(m.proximal(model)) == 0.5 / 2 * 6
    m.state.status = ALIGN
    m.anchors[FINETUNE] = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert float(m.proximal(model)) == 0


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_vaccine_perturbation_has_norm_rho_and_is_gone_after_training(micro, tmp_path):
    import json

    import torch

    from baselines.vaccine import VaccineAlignment, attention_modules, perturbations
    from experiments.run import run

    grads = [torch.randn(2, 3, 4) for _ in range(3)]
    eps = perturbations(grads, 2.0)
    assert abs(float(torch.norm(torch.stack([e.norm() for e in eps]))) - 2.0) < 1e-5
    assert all(torch.allclose(e / e.norm(), g / g.norm(), atol=1e-6) for e, g in zip(eps, grads))

    seen = []
    orig = VaccineAlignment.training_step

    def spy(self, trainer, model, inputs, n=None):
        loss = orig(self, trainer, model, inputs, n)
        seen.append(float(torch.norm(torch.stack([e.norm() for e in self.last_eps]))))
        mods = attention_modules(model)
        assert all(not m._forward_hooks and not m._backward_hooks for m in mods)  # nothing left behind
        return loss

    VaccineAlignment.training_step = spy
    cfg = micro("method=vaccine", "poison.ratio=0.1")
    try:
        run(cfg)
    finally:
        VaccineAlignment.training_step = orig
    # every alignment step perturbed, with norm rho
    assert len(seen) == cfg.model.align_train.max_steps and all(abs(x - 2.0) < 1e-4 for x in seen)
    aligns = [p for p in (tmp_path / "store" / "align").iterdir() if (p / "DONE").exists()]
    assert len(aligns) == 2  # the standard aligned model and the Vaccine-aligned one
    records = sorted(p.name for p in (tmp_path / "runs" / "default").glob("*.json"))
    assert any("-vaccine_aligned-" in r for r in records) and any("-vaccine-" in r for r in records)
    meta = [json.loads((p / "meta.json").read_text()) for p in aligns]
    assert sum("method" in m["config"] for m in meta) == 1


def test_lisa_micro_run_alternates(micro, tmp_path):
    import json

    from experiments.run import run

    run(micro("method=lisa", "poison.ratio=0.1", "finetune.optim.epochs=4", "method.cycles=2"))
    [ft] = [p for p in (tmp_path / "store" / "finetune").iterdir() if (p / "DONE").exists()]
    stats = json.loads((ft / "meta.json").read_text())["method_stats"]
    k1, k2 = stats["k_align"], stats["k_finetune"]
    assert [s for s, _ in stats["switches"]][:3] == [k1, k1 + k2, 2 * k1 + k2]


def test_freeze_with_lora_leaves_the_block_untouched(micro, tmp_path):
    import json

    from safetensors.torch import load_file

    from experiments.run import run
    from pact.models import load_model

    run(micro("method=freeze", "method.adapter=lora", "poison.ratio=0.1"))
    store = tmp_path / "store"
    [ft] = [p for p in (store / "finetune").iterdir() if (p / "DONE").exists()]
    meta = json.loads((ft / "meta.json").read_text())
    al = store / "align" / meta["upstream"]["aligned"]
    a, b = meta["method_stats"]["block"]
    before = load_file(str(al / "model" / "model.safetensors"))
    assert not (ft / "model" / "model.safetensors").exists()  # a LoRA fine-tune keeps its adapter only
    after = {k: v for k, v in load_model(ft / "model").state_dict().items() if k in before}
    q = [k for k in before if "q_proj" in k]
    in_block = [k for k in q if any(f"layers.{i}." in k for i in range(a, b + 1))]
    outside = [k for k in q if k not in in_block]
    assert in_block and all(torch_equal(before[k], after[k]) for k in in_block)
    assert outside and all(not torch_equal(before[k], after[k]) for k in outside)
