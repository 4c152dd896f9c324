"""SafeLoRA (Hsu et al., "Safe LoRA: the Silver Lining of Reducing Safety Risks when Fine-tuning Large Language
Models", NeurIPS 2024; official code IBM/SafeLoRA at d81fda12719844d74b1fad98a5f00d692f6ab607, ``model.py``).

LoRA fine-tuning as SFT; when training ends, every LoRA layer's update dW = B A is set against its projection onto
the layer's alignment subspace, C dW with C = V V^T / ||V||_F and V = W_aligned - W_base (the wrapped weight of the
aligned model minus the same weight of the model before alignment). Where the cosine similarity of C dW and dW is at
most a threshold, the adapter's B becomes C B (so dW becomes C dW); elsewhere the update stays. The threshold is
given (``select: threshold``) or is the ``num_proj_layers``-th smallest similarity, so that the least similar layers
are projected (``select: number``, the official default). Similarities are rounded to 5 decimals before the
comparison, as the official code does (it decides ties only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pact.models.loading import load_model
from pact.training.methods import FinetuneContext, Method

if TYPE_CHECKING:
    from transformers import TrainerCallback

SELECT = ("number", "threshold")
PEFT_PREFIX = "base_model.model."   # peft's name for the wrapped model's modules
COS_DECIMALS = 5                    # official model.py: numpy.round(cos, 5)


def alignment_projector(aligned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """C = V V^T / ||V||_F for V = aligned - base ([out, in] -> [out, out]), in float32."""
    v = aligned.float() - base.float()
    norm = torch.linalg.matrix_norm(v)
    if norm == 0:
        raise ValueError("the aligned and base weights are equal: SafeLoRA's alignment matrix is zero there")
    return v @ v.T / norm


def update_similarity(projector: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> float:
    """The cosine similarity of C (B A) and B A, flattened, rounded as the official code does."""
    delta = lora_b.float() @ lora_a.float()
    cos = torch.nn.functional.cosine_similarity((projector @ delta).reshape(1, -1), delta.reshape(1, -1))
    return round(float(cos), COS_DECIMALS)


def chosen_threshold(similarities: list[float], select: str, threshold: float, number: int) -> float:
    """The similarity at or below which a layer is projected: ``threshold``, or the ``number``-th smallest."""
    if select == "threshold":
        return threshold
    ranked = sorted(similarities)
    return ranked[min(number, len(ranked)) - 1]


class SafeLoRA(Method):
    """LoRA SFT, then the post-hoc projection (module docstring); defaults in conf/method/safelora.yaml."""

    def __init__(self, cfg: Any):
        super().__init__(cfg)
        if cfg.get("adapter") != "lora":
            raise ValueError(f"method.adapter={cfg.get('adapter')!r}: SafeLoRA projects LoRA updates "
                             "(adapter: lora)")
        if cfg.select not in SELECT:
            raise ValueError(f"method.select={cfg.select!r} is not one of {list(SELECT)}")
        if int(cfg.num_proj_layers) < 1:
            raise ValueError(f"method.num_proj_layers={cfg.num_proj_layers} must be at least 1")
        self.base_path: str | None = None
        self.dtype = "float32"

    def prepare(self, ctx: FinetuneContext) -> None:
        if ctx.base is None:
            raise ValueError("method=safelora needs the model before alignment (model.base): its alignment matrix "
                             "is the aligned minus the base weights")
        self.base_path, self.dtype = ctx.base.path, ctx.dtype

    def callbacks(self) -> list[TrainerCallback]:
        from transformers import TrainerCallback  # here, not at the top: validating a config imports this module

        method = self

        class _ProjectWhenTrained(TrainerCallback):
            """Runs the projection once training ends, before the fine-tune stage saves the adapter."""

            def on_train_end(self, args, state, control, model=None, **kwargs):
                method.project(model)

        return [_ProjectWhenTrained()]

    @torch.no_grad()
    def project(self, model: torch.nn.Module) -> None:
        """Project the trained adapter of ``model`` (a peft model) in place; the similarities, the threshold and
        the projected layers go to ``self.stats``."""
        from peft.tuners.lora import LoraLayer

        # the model before alignment in host memory, in the run's dtype; each projector on the adapter's device
        base = load_model(self.base_path, self.dtype, bool(self.cfg.get("trust_remote_code", False)), device="cpu")
        layers = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, LoraLayer) and module.lora_A]
        if not layers:
            raise ValueError("method=safelora: the model has no LoRA layer to project")
        def projector_of(name: str, module) -> torch.Tensor:
            weight = module.get_base_layer().weight
            original = base.get_submodule(name.removeprefix(PEFT_PREFIX)).weight.to(weight.device)
            try:
                return alignment_projector(weight, original)
            except ValueError as err:
                raise ValueError(f"method=safelora, layer {name}: {err}") from None

        def lora_pair(module) -> tuple[torch.Tensor, torch.Tensor]:
            [adapter] = module.lora_A.keys()
            return module.lora_A[adapter].weight, module.lora_B[adapter].weight

        # one [out, out] projector at a time (an 8B model's 64 would hold GBs): similarities first, then the
        # chosen layers' projectors again
        similarity = {name: update_similarity(projector_of(name, module), *lora_pair(module))
                      for name, module in layers}
        cut = chosen_threshold(list(similarity.values()), self.cfg.select, float(self.cfg.threshold),
                               int(self.cfg.num_proj_layers))
        projected = []
        for name, module in layers:
            if similarity[name] <= cut:
                b = lora_pair(module)[1]
                b.copy_((projector_of(name, module) @ b.float()).to(b.dtype))
                projected.append(name.removeprefix(PEFT_PREFIX))
        self.stats.update({"safelora_threshold": cut, "safelora_projected": projected,
                           "safelora_similarity": {n.removeprefix(PEFT_PREFIX): s for n, s in similarity.items()}})

