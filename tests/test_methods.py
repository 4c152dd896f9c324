"""pact.training.methods.answer_loss: a frozen output layer at the answer positions only gives the same weights
to the bit."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from pact.data.labels import IGNORE_INDEX
from pact.data.rows import SFTCollator
from pact.models.adapters import apply_lora
from pact.pact_method import PactMethod
from pact.training.methods import Method, answer_loss, answers_only

VOCAB = 97
LORA = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]})


def _batch() -> dict[str, torch.Tensor]:
    """Four rows of different prompt and answer lengths, right-padded (the fine-tuning collator)."""
    g = torch.Generator().manual_seed(0)
    examples = []
    for prompt, answer in ((9, 2), (5, 7), (12, 1), (7, 4)):
        ids = torch.randint(1, VOCAB, (prompt + answer,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return SFTCollator(0)(examples)


def _model(lora: bool):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True))
    return (apply_lora(model, LORA) if lora else model).train()


def _pact() -> PactMethod:
    method = PactMethod(OmegaConf.load("conf/method/pact.yaml"))
    method.ids = torch.arange(3, VOCAB, 9)
    method.weights = torch.linspace(-0.2, 1.0, len(method.ids))
    return method


def _step(method: Method, answer_logits: bool, lora: bool = True):
    """Loss, outputs and gradients of one step (dropout drawn from the same seed)."""
    model = _model(lora)
    trainer = SimpleNamespace(args=SimpleNamespace(answer_logits=answer_logits))
    inputs = dict(_batch())
    if isinstance(method, PactMethod):
        g = torch.Generator().manual_seed(1)
        width = int((inputs["labels"] != IGNORE_INDEX).sum(1).max())
        inputs["ref_full"] = torch.randn(4, width, len(method.ids), generator=g)
        inputs["ref_post"] = torch.randn(4, width, len(method.ids), generator=g)
    items = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum()
    torch.manual_seed(5)
    loss, outputs = method.compute_loss(trainer, model, inputs, return_outputs=True, num_items_in_batch=items)
    loss.backward()
    return loss, outputs, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", [Method(None), _pact()], ids=["sft", "pact"])
def test_answer_logits_give_the_same_gradients_to_the_bit(method):
    loss_all, out_all, grads_all = _step(method, answer_logits=False)
    loss_ans, out_ans, grads_ans = _step(method, answer_logits=True)
    assert out_all.logits.shape == (4, 13, VOCAB)          # every position
    assert out_ans.logits.shape == (2 + 7 + 1 + 4, VOCAB)  # the answer positions only
    assert grads_all.keys() == grads_ans.keys() and len(grads_all) == 8   # q and v LoRA A, B in 2 layers
    assert all(torch.equal(grads_all[n], grads_ans[n]) for n in grads_all)
    assert torch.allclose(loss_all, loss_ans, rtol=1e-6)   # the sum over fewer ignored rows may round differently


def test_answer_loss_is_the_models_cross_entropy():
    model, inputs = _model(lora=True), _batch()
    trainer = SimpleNamespace(args=SimpleNamespace(answer_logits=True))
    loss, outputs, at_answers = answer_loss(trainer, model, inputs)
    assert at_answers
    model.eval()   # no dropout: the two forwards must agree
    loss, _, _ = answer_loss(trainer, model, inputs)
    reference = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=inputs["labels"])
    assert torch.allclose(loss, reference.loss, rtol=1e-6)


def test_a_trained_output_layer_keeps_every_position():
    on = SimpleNamespace(args=SimpleNamespace(answer_logits=True))
    assert answers_only(on, _model(lora=True))
    assert not answers_only(on, _model(lora=False))          # full fine-tuning trains the (tied) head
    assert not answers_only(None, _model(lora=True))         # no Trainer (e.g. experiments.diagnostics.gpu_check)
    assert not answers_only(SimpleNamespace(args=SimpleNamespace(answer_logits=False)), _model(lora=True))
    _, outputs, _ = _step(Method(None), answer_logits=True, lora=False)
    assert outputs.logits.shape == (4, 13, VOCAB)


def test_pact_kl_options_reach_the_loss():
    """The config's temperature is the one the KL term uses (not pact_kl's default)."""
    kls = []
    for temperature in (2.0, 0.5):
        method = _pact()
        method.cfg.temperature = temperature
        _step(method, answer_logits=False)
        kls.append(method.last_kl)
    assert kls[0] != pytest.approx(kls[1], rel=1e-3)


def test_pact_without_a_kl_term_returns_the_cross_entropy_as_asked():
    method = _pact()
    method.cfg.lambda_kl = 0.0
    trainer = SimpleNamespace(args=SimpleNamespace(answer_logits=False))
    model, inputs = _model(False), dict(_batch())
    loss, outputs = method.compute_loss(trainer, model, inputs, return_outputs=True)
    alone = method.compute_loss(trainer, model, inputs)
    assert isinstance(alone, torch.Tensor) and torch.equal(alone, loss) and outputs.logits is not None


def test_lisa_takes_the_answer_positions_path_with_the_same_gradients_to_the_bit():
    """Lisa's loss (cross-entropy of the batch it trains on, plus the proximal term) through answer_loss: a frozen
    LM head runs at the answer positions only, and the weights move as with every position."""
    from baselines.lisa import Lisa

    def step(answer_logits: bool):
        model = _model(lora=True)
        method = Lisa(OmegaConf.create({"id": "lisa_lora", "rho": 0.5, "cycles": 2, "align_fraction": 0.5,
                                        "proximal_skip_fraction": 0.0}))
        method.on_train_begin(model, total_steps=4)
        method.anchors = {k: {n: t + 0.01 for n, t in a.items()} for k, a in method.anchors.items()}
        method.state.tick()   # step 1: past the (empty) skip, the proximal term applies
        trainer = SimpleNamespace(args=SimpleNamespace(answer_logits=answer_logits))
        torch.manual_seed(5)
        loss, outputs = method.compute_loss(trainer, model, dict(_batch()), return_outputs=True)
        loss.backward()
        return outputs, method.last_proximal, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    out_all, prox_all, grads_all = step(False)
    out_ans, prox_ans, grads_ans = step(True)
    assert out_all.logits.shape == (4, 13, VOCAB) and out_ans.logits.shape == (14, VOCAB)
    assert prox_all > 0 and prox_all == prox_ans
    assert grads_all.keys() == grads_ans.keys() and len(grads_all) == 8
    assert all(torch.equal(grads_all[n], grads_ans[n]) for n in grads_all)
