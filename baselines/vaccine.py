"""Vaccine (Huang et al., "Vaccine: Perturbation-aware Alignment for Large Language Models against Harmful
Fine-tuning Attack", NeurIPS 2024; official code git-disl/Vaccine, ``VaccineTrainer``).

An alignment-stage defence: every alignment step runs two passes on the same batch. Pass 1 records the
gradient of the loss w.r.t. each decoder layer's attention-block output (where the official code hooks;
the paper speaks of each layer's hidden embedding) and throws the parameter gradients away; the perturbation
is eps_l = rho * g_l / (||[||g_1||, ..., ||g_L||]||_2 + 1e-7), so all layers together have norm rho. Pass 2 adds
eps_l (as a constant) to those outputs and its gradient is the update. Fine-tuning is then plain SFT from the
Vaccine-aligned model; no perturbation exists outside the alignment steps.
"""

from __future__ import annotations

from typing import Any

import torch

from pact.training.methods import Method

NORM_EPS = 1e-7  # official _grad_norm denominator


def attention_modules(model) -> list[torch.nn.Module]:
    """Each decoder layer's self-attention block (official: every LlamaAttention / OPTAttention)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [layer.self_attn for layer in inner.model.layers]


def perturbations(grads: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """eps_l = rho * g_l / (global norm over layers + eps)."""
    total = torch.norm(torch.stack([g.norm() for g in grads]))
    return [rho * g / (total + NORM_EPS) for g in grads]


class VaccineAlignment(Method):
    """The perturbation-aware alignment step used by the ``align`` stage."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        self.last_eps: list[torch.Tensor] = []

    def training_step(self, trainer, model, inputs, num_items_in_batch=None):
        from transformers import Trainer  # here, not at the top: validating a config imports this module

        modules = attention_modules(model)
        grads: list[torch.Tensor | None] = [None] * len(modules)

        def keep_grad(i):
            def hook(module, grad_input, grad_output):
                grads[i] = grad_output[0].detach() / trainer.args.gradient_accumulation_steps
            return hook

        handles = [m.register_full_backward_hook(keep_grad(i)) for i, m in enumerate(modules)]
        try:
            Trainer.training_step(trainer, model, inputs, num_items_in_batch)  # pass 1
        finally:
            for h in handles:
                h.remove()
        eps = perturbations([g for g in grads], float(self.cfg.rho))
        self.last_eps = eps
        model.zero_grad(set_to_none=True)

        def add_eps(i):
            def hook(module, args, output):
                return (output[0] + eps[i].to(output[0].dtype),) + tuple(output[1:])
            return hook

        handles = [m.register_forward_hook(add_eps(i)) for i, m in enumerate(modules)]
        try:
            return Trainer.training_step(trainer, model, inputs, num_items_in_batch)  # pass 2: the update
        finally:
            for h in handles:
                h.remove()


class Vaccine(Method):
    """Plain SFT at fine-tuning time; :meth:`alignment_method` supplies the Vaccine alignment."""

    def alignment_method(self) -> Method:
        return VaccineAlignment(self.cfg)
