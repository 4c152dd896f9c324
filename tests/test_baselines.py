"""Each baseline's mechanism, not just that it runs."""

import math
import random
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from baselines.safety_mix import SafetyMix
from pact.data import rows as D
from pact.data.labels import IGNORE_INDEX
from pact.data.rundata import ToyData
from pact.runtime.store import Artifact
from pact.training.methods import FinetuneContext


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


def test_booster_aligns_with_the_worlds_harmful_answers_and_then_fine_tunes_plainly(micro, tmp_path):
    """method=booster on the toy world: its own aligned model, every alignment step drawing the alignment prompts'
    harmful answers (harmful_align's compliance), a reference row for it and a fine-tune from it."""
    import json

    from baselines.booster import BoosterAlignment
    from experiments.run import run

    drawn = []
    orig = BoosterAlignment.harmful_batch

    def spy(self):
        batch = orig(self)
        drawn.append(len(batch))
        return batch

    BoosterAlignment.harmful_batch = spy
    cfg = micro("method=booster", "poison.ratio=0.1", "method.harmful_batch_size=3")
    try:
        run(cfg)
    finally:
        BoosterAlignment.harmful_batch = orig
    assert drawn == [3] * cfg.model.align_train.max_steps
    aligns = [p for p in (tmp_path / "store" / "align").iterdir() if (p / "DONE").exists()]
    meta = [json.loads((p / "meta.json").read_text()) for p in aligns]
    assert len(aligns) == 2 and sum(m["config"].get("method", {}).get("id") == "booster" for m in meta) == 1
    records = sorted(p.name for p in (tmp_path / "runs" / "default").glob("*.json"))
    assert any("-booster_aligned-" in r for r in records) and any("-booster-" in r for r in records)


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
    from pact.models.loading import load_model

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


def test_safelora_run_saves_sft_loras_adapter_projected_where_least_aligned(micro, tmp_path):
    """The same seed's SFT-LoRA and SafeLoRA train alike; SafeLoRA's saved adapter is SFT-LoRA's with B -> C B on
    the layers it chose (C from the store's aligned and base models), the other layers and every A unchanged."""
    import json

    from safetensors.torch import load_file

    from experiments.run import run
    from pact.models.loading import load_model

    run(micro("method=sft_lora", "poison.ratio=0.1"))
    run(micro("method=safelora", "poison.ratio=0.1", "method.num_proj_layers=2"))
    store = tmp_path / "store"
    tuned = {}
    for ft in (p for p in (store / "finetune").iterdir() if (p / "DONE").exists()):
        meta = json.loads((ft / "meta.json").read_text())
        tuned[meta["config"]["method"]["id"]] = (meta, load_file(str(ft / "model" / "adapter_model.safetensors")))
    (meta, projected), (_, plain) = tuned["safelora"], tuned["sft_lora"]
    stats = meta["method_stats"]
    aligned = load_model(store / "align" / meta["upstream"]["aligned"] / "model")
    base = load_model(store / "base" / meta["upstream"]["base"] / "model")
    assert len(stats["safelora_projected"]) == 2 < len(stats["safelora_similarity"])
    for name in stats["safelora_similarity"]:
        key = f"base_model.model.{name}.lora_B.weight"
        v = aligned.get_submodule(name).weight.double() - base.get_submodule(name).weight.double()
        c = v @ v.T / torch.linalg.norm(v)
        expect = c @ plain[key].double() if name in stats["safelora_projected"] else plain[key].double()
        assert torch.allclose(projected[key].double(), expect, atol=1e-6), name
        assert torch.equal(projected[key.replace("lora_B", "lora_A")], plain[key.replace("lora_B", "lora_A")])


# ==== the baselines at their edges (boundaries, the values they hand back, the state they record), each against
# its definition on tiny hand-made inputs; written where mutation testing (`make mutate`) found a behaviour no test
# checked ====
# ---- Lisa ---------------------------------------------------------------------------------------------------------
def lisa(**over):
    from baselines.lisa import Lisa

    cfg = {"id": "lisa", "rho": 0.5, "cycles": 2, "align_fraction": 0.5, "proximal_skip_fraction": 0.25,
           "align_rows": 0, "align_file": None, **over}
    return Lisa(OmegaConf.create(cfg))


def test_lisa_tick_reports_exactly_the_switching_steps():
    from baselines.lisa import LisaState

    s = LisaState(2, 3)
    switched = [s.tick() for _ in range(11)]
    assert [i for i, x in enumerate(switched) if x] == [step for step, _ in s.switches] == [2, 5, 7, 10]


@pytest.mark.parametrize("k_align,k_finetune,status", [(0, 3, "finetune"), (3, 0, "alignment"), (0, 0, "finetune")])
def test_lisa_with_one_empty_state_never_switches(k_align, k_finetune, status):
    from baselines.lisa import LisaState

    s = LisaState(k_align, k_finetune)
    assert not any(s.tick() for _ in range(10))
    assert s.status == status and s.switches == []


def test_lisa_align_fraction_must_be_inside_zero_one():
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="align_fraction"):
            lisa(align_fraction=bad)
    lisa(align_fraction=0.01)


def example(n_prompt: int, n_answer: int, first: int) -> dict[str, list[int]]:
    ids = list(range(first, first + n_prompt + n_answer))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]}


def test_lisa_before_step_anchors_the_state_just_left_and_swaps_in_alignment_rows():
    """On a switch, the weights at that moment become the anchor of the state just left; an alignment step gets a
    batch of alignment rows with as many rows as the user batch (not as many as its width)."""
    from baselines.lisa import ALIGN, FINETUNE

    m = lisa()
    m.align_examples = [example(2, 2, 100 + 10 * i) for i in range(6)]
    m.pad_id = 0
    model = torch.nn.Linear(2, 1)
    m.on_train_begin(model, 4)  # cycles=2 over 4 steps: K1 = K2 = 1
    user = {"input_ids": torch.ones(2, 5, dtype=torch.long), "attention_mask": torch.ones(2, 5, dtype=torch.long),
            "labels": torch.ones(2, 5, dtype=torch.long)}
    batch = m.before_step(model, user)  # step 0: alignment
    assert m.state.status == ALIGN and batch["input_ids"].shape == (2, 4)
    assert {tuple(r.tolist()) for r in batch["input_ids"]} <= {tuple(e["input_ids"]) for e in m.align_examples}
    with torch.no_grad():
        model.weight.add_(1.0)
    moved = model.weight.detach().clone()
    assert m.before_step(model, user) is user  # step 1: switched to fine-tuning, the user's batch as it is
    assert m.state.status == FINETUNE
    assert torch.equal(m.anchors[ALIGN]["weight"], moved)  # the state just left: alignment
    assert not torch.equal(m.anchors[FINETUNE]["weight"], moved)  # still the start
    with torch.no_grad():
        model.weight.add_(1.0)
    m.before_step(model, user)  # step 2: back to alignment
    assert torch.equal(m.anchors[FINETUNE]["weight"], model.weight)
    assert torch.equal(m.anchors[ALIGN]["weight"], moved)
    assert m.stats == {"k_align": 1, "k_finetune": 1, "total_steps": 4}


def test_lisa_short_runs_still_alternate_one_step_each():
    """Fewer steps than cycles: each cycle is still 2 steps, one alignment and one fine-tuning."""
    assert lisa(cycles=20, align_fraction=0.1).schedule(20) == (1, 1)
    assert lisa(cycles=20, align_fraction=0.1).schedule(10) == (1, 1)


def test_lisa_proximal_anchor_is_the_other_states_last_end():
    from baselines.lisa import ALIGN, FINETUNE, LisaState

    m = lisa(rho=2.0)
    model = torch.nn.Linear(1, 1, bias=False)
    m.on_train_begin(model, 10)
    with torch.no_grad():
        model.weight.fill_(3.0)
    m.anchors = {ALIGN: {"weight": torch.tensor([[1.0]])}, FINETUNE: {"weight": torch.tensor([[0.0]])}}
    m.state = LisaState(1, 1)
    m.state.status = FINETUNE
    assert float(m.proximal(model).detach()) == pytest.approx(2.0 / 2 * (3 - 1) ** 2)
    m.state.status = ALIGN
    assert float(m.proximal(model).detach()) == pytest.approx(2.0 / 2 * 3 ** 2)


class CharTokenizer:
    """Plain-format tokenizer: one id per character."""

    eos_token_id, pad_token_id = 1, 0

    def __call__(self, text: str, add_special_tokens: bool = False):
        return {"input_ids": [2 + ord(c) % 50 for c in text]}


def test_lisa_prepare_encodes_align_rows_at_the_runs_length_and_seeds_its_draws(tmp_path):
    from pact.training.methods import FinetuneContext

    D.write_jsonl(tmp_path / "align.jsonl", [{"prompt": f"harmful {i}", "refusal": "no"} for i in range(10)])
    m = lisa(align_rows=3, align_file=str(tmp_path / "align.jsonl"))
    ctx = FinetuneContext(aligned=None, base=None, data=None, tokenizer=CharTokenizer(), prompt_format="plain",
                          max_len=12, seed=5)
    m.prepare(ctx)
    assert len(m.align_examples) == 3 and all(len(e["input_ids"]) == 12 for e in m.align_examples)
    assert m.pad_id == 0
    assert m.rng.random() == random.Random(5).random()


def test_lisa_alignment_batches_follow_the_runs_seed():
    def batches(seed: int):
        m = lisa()
        m.align_examples = [example(1, 1, 10 * i) for i in range(20)]
        m.pad_id, m.rng = 0, random.Random(seed)
        m.on_train_begin(torch.nn.Linear(1, 1), 100)
        user = {"input_ids": torch.ones(3, 2, dtype=torch.long)}
        return [m.before_step(None, user)["input_ids"].tolist() for _ in range(3)]

    assert batches(3) == batches(3) != batches(4)


class Recorder(torch.nn.Module):
    """A "model" whose loss is a fixed number plus 0 * w, recording the inputs it was called with."""

    def __init__(self, loss: float):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))
        self.value, self.calls = loss, []

    def forward(self, **kwargs):
        self.calls.append(kwargs)
        return SimpleNamespace(loss=self.value + 0 * self.w.sum(), logits=kwargs.get("logits"))


def test_lisa_loss_is_ce_plus_the_proximal_term_after_the_skipped_steps():
    """loss = CE + rho/2 ||w - anchor||^2 once more than proximal_skip_fraction * total steps have run, plain CE
    before (and always when rho = 0); the attention mask and labels reach the model."""
    from baselines.lisa import LisaState

    inputs = {"input_ids": torch.ones(1, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0]]),
              "labels": torch.ones(1, 3, dtype=torch.long)}
    for rho, want_prox in ((0.5, 0.5 / 2 * 3 * 4.0), (0.0, 0.0)):
        m = lisa(rho=rho, proximal_skip_fraction=0.25)
        model = Recorder(1.5)
        m.on_train_begin(model, 8)  # skip = 0.25 * 8 = 2 steps
        with torch.no_grad():
            model.w.fill_(2.0)  # ||w - anchor||^2 = 3 * 2^2
        m.state = LisaState(100, 100)
        losses = []
        for _ in range(4):
            m.state.tick()
            loss, _ = m.compute_loss(None, model, inputs, return_outputs=True)
            losses.append(float(loss.detach()))
        assert losses == pytest.approx([1.5, 1.5, 1.5 + want_prox, 1.5 + want_prox])
        assert m.last_proximal == pytest.approx(want_prox if rho else 0.0)
        assert torch.equal(model.calls[-1]["attention_mask"], inputs["attention_mask"])
        assert float(m.compute_loss(None, model, inputs)) == pytest.approx(losses[-1])  # the loss alone


def test_lisa_small_rho_still_adds_the_proximal_term():
    """rho below 1 (the official 0.01-scale values) is a proximal term, not an off switch."""
    from baselines.lisa import LisaState

    m = lisa(rho=0.01, proximal_skip_fraction=0.0)
    model = Recorder(0.0)
    m.on_train_begin(model, 4)
    with torch.no_grad():
        model.w.fill_(1.0)
    m.state = LisaState(100, 100)
    m.state.tick()
    assert float(m.compute_loss(None, model, {"input_ids": None, "attention_mask": None, "labels": None})) == \
        pytest.approx(0.01 / 2 * 3)


# ---- safety-data mixing -------------------------------------------------------------------------------------------
class MixingData:
    """The run data's mixing_pairs, recording what it was asked for."""

    def __init__(self, path):
        self.path, self.asked = path, []

    def mixing_pairs(self, aligned, model, tokenizer):
        self.asked.append((aligned, model, tokenizer))
        return self.path


def mix(tmp_path, n_pairs: int, n_clean: int, n_poison: int, count: int | None, pairs_file: bool = False,
        share: float | None = None):
    from baselines.safety_mix import SafetyMix
    from pact.training.methods import FinetuneContext

    path = tmp_path / "pairs.jsonl"
    D.write_jsonl(path, [{"prompt": f"h{i}", "refusal": f"no {i}"} for i in range(n_pairs)])
    rows = [{"prompt": f"c{i}", "answer": "ok", "poison": False} for i in range(n_clean)]
    rows += [{"prompt": f"p{i}", "answer": "sure", "poison": True} for i in range(n_poison)]
    data = MixingData(tmp_path / "missing.jsonl" if pairs_file else path)
    method = SafetyMix(OmegaConf.create({"id": "safety_mix", "count": count, "share": share,
                                         "pairs_file": str(path) if pairs_file else None}))
    ctx = FinetuneContext(aligned="ALIGNED", base=None, data=data, tokenizer="TOK", prompt_format="chat",
                          max_len=8, seed=0, model="MODEL")
    return method, method.transform_data(rows, ctx), data


def test_safety_mix_may_use_every_pair_and_every_clean_row(tmp_path):
    method, out, data = mix(tmp_path, n_pairs=4, n_clean=4, n_poison=2, count=4)
    assert [r["prompt"] for r in out if r.get("safety")] and sum(bool(r.get("safety")) for r in out) == 4
    assert all(r["poison"] for r in out if not r.get("safety"))
    assert method.stats["safety_rows"] == 4
    assert data.asked == [("ALIGNED", "MODEL", "TOK")]  # the aligned model's own pairs when the data makes them


@pytest.mark.parametrize("n_pairs,n_clean", [(3, 10), (10, 3)])
def test_safety_mix_refuses_more_pairs_than_either_supply(tmp_path, n_pairs, n_clean):
    with pytest.raises(ValueError, match="count=4"):
        mix(tmp_path, n_pairs=n_pairs, n_clean=n_clean, n_poison=0, count=4)


@pytest.mark.parametrize("n_clean,n_poison,mixed", [(20, 0, 2), (24, 6, 3), (14, 0, 1)])
def test_safety_mix_share_takes_a_fraction_of_the_fine_tuning_rows(tmp_path, n_clean, n_poison, mixed):
    _, out, _ = mix(tmp_path, n_pairs=10, n_clean=n_clean, n_poison=n_poison, count=None, share=0.1)
    assert sum(bool(r.get("safety")) for r in out) == mixed and len(out) == n_clean + n_poison
    with pytest.raises(ValueError, match=r"method.share=0.1 of 40 rows: 4 safety pairs"):
        mix(tmp_path, n_pairs=3, n_clean=40, n_poison=0, count=None, share=0.1)


@pytest.mark.parametrize("count,share", [(None, None), (5, 0.1), (None, 1.5)])
def test_safety_mix_needs_exactly_one_valid_size(count, share):
    from baselines.safety_mix import SafetyMix

    with pytest.raises(ValueError, match="method"):
        SafetyMix(OmegaConf.create({"id": "safety_mix", "count": count, "share": share}))


def test_safety_mix_reads_a_configured_pairs_file(tmp_path):
    _, out, data = mix(tmp_path, n_pairs=5, n_clean=5, n_poison=0, count=2, pairs_file=True)
    assert data.asked == [] and sum(bool(r.get("safety")) for r in out) == 2


# ---- Vaccine ------------------------------------------------------------------------------------------------------
def test_vaccine_perturbation_never_exceeds_rho():
    """||(eps_1, ..., eps_L)|| = rho * G / (G + 1e-7) <= rho, finite even when the gradients are about 1e-7."""
    from baselines.vaccine import perturbations

    for scale in (1.0, 1e-7, 0.0):
        grads = [torch.full((2, 3), scale / math.sqrt(12)), torch.full((3,), -scale / math.sqrt(12))]
        eps = perturbations(grads, 2.0)
        total = math.sqrt(sum(float(e.norm()) ** 2 for e in eps))
        assert math.isfinite(total) and total <= 2.0
        g_total = math.sqrt(sum(float(g.norm()) ** 2 for g in grads))
        assert total == pytest.approx(2.0 * g_total / (g_total + 1e-7), rel=1e-5, abs=1e-12)


def test_vaccine_hooks_the_attention_blocks_of_a_lora_model_too():
    from transformers import LlamaConfig, LlamaForCausalLM

    from baselines.vaccine import attention_modules
    from pact.models.adapters import apply_lora

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    plain = attention_modules(model)
    assert plain == [layer.self_attn for layer in model.model.layers]
    lora = apply_lora(model, OmegaConf.create({"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]}))
    assert attention_modules(lora) == plain


# ---- constrained SFT ----------------------------------------------------------------------------------------------
def test_constrained_sft_loss_of_a_single_answer_token():
    """One labelled token: the loss is -w * log p(y) itself (the mean over one token), returned with the outputs
    when asked."""
    from baselines.constrained_sft import ConstrainedSFT

    m = ConstrainedSFT(OmegaConf.create({"id": "constrained_sft", "beta": 0.1, "first_token_factor": 5,
                                         "prefix_factor": 20, "prefix_len": 5, "weight_min": 1e-3}))
    logits = torch.log(torch.tensor([[[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.2, 0.5, 0.3]]]))
    inputs = {"input_ids": torch.tensor([[0, 2, 1]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
              "labels": torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX]]), "ref_logp": torch.tensor([[math.log(0.5)]])}

    class Fixed(torch.nn.Module):
        def forward(self, **kwargs):
            return SimpleNamespace(logits=logits)

    loss, out = m.compute_loss(None, Fixed(), inputs, return_outputs=True)
    w = 2 / (1 + math.exp(0.5 * (math.log(0.7) - math.log(0.5))))
    assert float(loss) == pytest.approx(-w * math.log(0.7), rel=1e-6)
    assert out.logits is logits


# ---- safety-layer freezing ----------------------------------------------------------------------------------------
def freeze(layers, control: bool):
    from baselines.freeze import Freeze

    return Freeze(OmegaConf.create({"id": "freeze", "layers": layers, "window_fraction": 0.25, "control": control,
                                    "localise_prompts": 4}))


def layered(depth: int):
    """A stand-in causal LM: only ``model.layers`` (what the method reads)."""
    return SimpleNamespace(model=SimpleNamespace(layers=[torch.nn.Linear(1, 1) for _ in range(depth)]))


@pytest.mark.parametrize("layers,control,block", [
    ([1, 2], False, (1, 2)),
    ([1, 2], True, (4, 5)),   # the control block: same width, as far away as the depth allows (the top)
    ([3, 4], True, (0, 1)),   # ... or the bottom
    ([2, 3], True, (0, 1)),   # as many layers below as above: the bottom
    ([1, 3], True, (3, 5)),
    ([5, 5], False, (5, 5)),
])
def test_freeze_prepare_places_the_block_and_its_control(layers, control, block):
    from pact.training.methods import FinetuneContext

    m = freeze(layers, control)
    ctx = FinetuneContext(aligned=None, base=None, data=None, tokenizer=None, prompt_format="chat", max_len=8,
                          seed=0, model=layered(6))
    m.prepare(ctx)
    assert m.block == block
    assert m.stats == {"block": list(block), "depth": 6, "control": control}


@pytest.mark.parametrize("layers", [[4, 6], [0, 9]])
def test_freeze_refuses_a_block_outside_the_model(layers):
    from pact.training.methods import FinetuneContext

    ctx = FinetuneContext(aligned=None, base=None, data=None, tokenizer=None, prompt_format="chat", max_len=8,
                          seed=0, model=layered(6))
    with pytest.raises(ValueError, match="outside the model's 6 layers"):
        freeze(layers, False).prepare(ctx)


def test_freeze_finds_the_layers_of_a_lora_model_too():
    from transformers import LlamaConfig, LlamaForCausalLM

    from baselines.freeze import decoder_layers
    from pact.models.adapters import apply_lora

    model = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    layers = model.model.layers
    lora = apply_lora(model, OmegaConf.create({"r": 2, "alpha": 4, "dropout": 0.0, "target_modules": ["q_proj"]}))
    assert decoder_layers(lora) is layers


def test_constrained_sft_reference_cache_is_keyed_by_the_aligned_model_and_dtype(tmp_path):
    """The reference log-probs are computed once per (aligned model, dtype) and reused: another aligned model or
    dtype computes its own."""
    from baselines.constrained_sft import ConstrainedSFT
    from pact.training.methods import FinetuneContext

    class CountingLM(torch.nn.Module):
        device = torch.device("cpu")

        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, input_ids, attention_mask):
            self.calls += 1
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 8))

    m = ConstrainedSFT(OmegaConf.create({"id": "constrained_sft"}))
    examples = [example(2, 2, 1), example(1, 3, 2)]
    lm = CountingLM()

    def prepare(key: str, dtype: str) -> int:
        before = lm.calls
        ctx = FinetuneContext(aligned=SimpleNamespace(key=key, path=None), base=None, data=None, tokenizer=None,
                              prompt_format="chat", max_len=8, seed=0, dtype=dtype,
                              store=SimpleNamespace(root=tmp_path), model=lm)
        out = m.prepare_examples(examples, ctx)
        assert [len(e["ref_logp"]) for e in out] == [2, 3]
        assert torch.allclose(out[0]["ref_logp"], torch.full((2,), -math.log(8)))
        return lm.calls - before

    assert prepare("a", "float32") == 2  # one forward per example: an entry depends on its example alone
    assert prepare("a", "float32") == 0
    assert prepare("b", "float32") == 2
    assert prepare("a", "bfloat16") == 2


def test_freeze_localises_the_window_of_largest_gap_growth_on_the_first_prompts(tmp_path):
    """layers: auto: the gaps of :func:`cosine_gap_by_layer` on the first ``localise_prompts`` prompts of each
    file, and the window of round(window_fraction * depth) layers where they grow the most."""
    import json
    from dataclasses import replace

    from transformers import LlamaConfig, LlamaForCausalLM

    from baselines.freeze import Freeze, best_window, cosine_gap_by_layer
    from pact.runtime.store import Store
    from pact.training.methods import FinetuneContext

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=60, hidden_size=8, intermediate_size=16, num_hidden_layers=8,
                                         num_attention_heads=2, num_key_value_heads=2, initializer_range=0.5))
    harmful, benign = [f"steal car {i}" for i in range(5)], [f"bake bread {i}{i}" for i in range(5)]
    D.write_jsonl(tmp_path / "harmful.jsonl", [{"prompt": p} for p in harmful])
    D.write_jsonl(tmp_path / "benign.jsonl", [{"prompt": p} for p in benign])
    data = SimpleNamespace(upstream={"world": "w"},
                           localisation_prompts=lambda: (tmp_path / "harmful.jsonl", tmp_path / "benign.jsonl"))
    m = Freeze(OmegaConf.create({"id": "freeze", "layers": "auto", "window_fraction": 0.25, "control": False,
                                 "localise_prompts": 2}))
    ctx = FinetuneContext(aligned=SimpleNamespace(key="al", path=None), base=None, data=data,
                          tokenizer=CharTokenizer(), prompt_format="plain", max_len=8, seed=0,
                          store=Store(tmp_path / "store"), model=model)
    m.prepare(ctx)
    gaps = cosine_gap_by_layer(model, CharTokenizer(), harmful[:2], benign[:2], "plain")
    assert gaps != cosine_gap_by_layer(model, CharTokenizer(), harmful, benign, "plain")
    assert m.block == best_window(gaps, 2) and m.block[1] - m.block[0] == 1
    [art] = [p for p in (tmp_path / "store" / "safety_layers").iterdir() if (p / "safety_layers.json").exists()]
    assert json.loads((art / "safety_layers.json").read_text())["gaps"] == pytest.approx(gaps)
    m.prepare(ctx)  # cached: no second block
    assert len(list((tmp_path / "store" / "safety_layers").iterdir())) == 1
    other_world = SimpleNamespace(upstream={"world": "v"}, localisation_prompts=data.localisation_prompts)
    for other in (replace(ctx, aligned=SimpleNamespace(key="al2", path=None)), replace(ctx, data=other_world)):
        m.prepare(other)  # another aligned model or world: its own localisation
    m.cfg.localise_prompts = 3
    m.prepare(ctx)
    assert len([p for p in (tmp_path / "store" / "safety_layers").iterdir() if not p.name.startswith(".")]) == 4


@pytest.mark.parametrize("layers", [[3, 1], [1, 2, 3], [2]])
def test_freeze_refuses_a_malformed_block(layers):
    with pytest.raises(ValueError, match="must be 'auto' or"):
        freeze(layers, False)
    freeze([2, 2], False)  # one layer is a block


def test_freeze_needs_at_least_one_localisation_prompt():
    from baselines.freeze import Freeze

    with pytest.raises(ValueError, match="localise_prompts=0"):
        Freeze(OmegaConf.create({"id": "freeze", "layers": "auto", "window_fraction": 0.25, "control": False,
                                 "localise_prompts": 0}))


@pytest.mark.parametrize("adapter,frozen", [("full", [1, 2, 3]), ("lora", [])])
def test_freeze_full_fine_tuning_stops_the_gradient_of_the_block_only(adapter, frozen):
    from pact.training.methods import FinetuneContext

    m = freeze([1, 3], False)
    m.block = (1, 3)
    model = layered(6)
    ctx = FinetuneContext(aligned=None, base=None, data=None, tokenizer=None, prompt_format="chat", max_len=8,
                          seed=0, adapter=adapter)
    assert m.configure_model(model, ctx) is model
    assert [i for i, layer in enumerate(model.model.layers)
            if not any(p.requires_grad for p in layer.parameters())] == frozen


def test_best_window_counts_the_first_layers_gap_as_growth_and_stays_inside():
    from baselines.freeze import best_window

    assert best_window([0.5, 0.0, 0.45], 1) == (0, 0)  # the first layer grows from 0 to its gap
    assert best_window([-0.25, -0.5, -0.75], 1) == (0, 0)  # every window shrinks: the first, never past the end
    assert best_window([-0.25, -0.5, -0.75], 2) == (0, 1)


def test_vaccine_fine_tunes_as_sft_after_its_own_alignment():
    from baselines.vaccine import Vaccine, VaccineAlignment

    cfg = OmegaConf.create({"id": "vaccine", "rho": 2.0})
    step = Vaccine(cfg).alignment_method()
    assert isinstance(step, VaccineAlignment) and step.cfg == cfg


# ---- Booster ------------------------------------------------------------------------------------------------------
def test_booster_names_the_missing_harmful_answers_of_the_alignment_pairs(tmp_path):
    """Real data's alignment pairs (refusals only) give Booster no harmful answers: the error says which field of
    which file, before any training."""
    from baselines.booster import BoosterAlignment
    from pact.data.rows import DataFileError

    pairs = tmp_path / "alignment_pairs.jsonl"
    D.write_jsonl(pairs, [{"prompt": "how to pick a lock", "refusal": "I can't help with that."}])
    cfg = OmegaConf.create({"id": "booster", "lamb": 5.0, "alpha": 0.1, "harmful_batch_size": 10,
                            "harmful_answer": "compliance", "harmful_rows": 0})
    ctx = SimpleNamespace(data=SimpleNamespace(kind="toy", alignment_pairs=lambda: pairs), tokenizer=None,
                          prompt_format="chat", max_len=64, seed=0)
    with pytest.raises(DataFileError, match=r"method=booster .*harmful_answer='compliance'.*alignment_pairs\.jsonl"):
        BoosterAlignment(cfg).prepare(ctx)


def test_booster_reads_real_harmful_pairs_without_the_runs_prompts(tmp_path):
    """On real data Booster's harmful pairs are data.harmful_pairs' poison rows (a mixture file) minus every prompt
    of the run's data stage files (the attacker's rows, the benchmarks); unset, the error names the data config."""
    from pact.data.rows import DataFileError
    from pact.data.rundata import RealData
    from pact.run.config import compose_config
    from tests.realdata import data_overrides, mixture_rows, write_sources

    root = write_sources(tmp_path / "data", ["pact_agnews_p03"])
    cfg = compose_config(data_overrides(root, "pact_official"), check=False)
    poison = [r for r in mixture_rows("agnews", 0.3) if "input" not in r]
    stage = tmp_path / "stage"   # a data stage holding the second poison prompt as an evaluated one
    D.write_jsonl(stage / "eval_b.jsonl", [{"prompt": poison[1]["instruction"], "category": None}])
    artifact = SimpleNamespace(path=stage, key="data-key")
    pairs = RealData(artifact, None, cfg).harmful_pairs()
    assert len(poison) == 12 and [p["prompt"] for p in pairs] == [poison[0]["instruction"],
                                                                  *(r["instruction"] for r in poison[2:])]
    assert pairs[0]["answer"] == poison[0]["output"]
    unset = compose_config([*data_overrides(root, "pact_official"), "data.harmful_pairs=null"], check=False)
    with pytest.raises(DataFileError, match="data.harmful_pairs names none in data=pact_official"):
        RealData(artifact, None, unset).harmful_pairs()
