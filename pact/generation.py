"""Generation engines: batched HF ``generate`` (CPU and GPU) and vLLM (GPU, optional extra, imported lazily)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm


class Engine(ABC):
    """Greedy completion of pre-tokenised prompts; returns the decoded new text of each prompt, in order."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], max_new_tokens: int, desc: str = "generate") -> list[str]:
        ...


class HFEngine(Engine):
    """``model.generate`` in batches with left padding; prompts are sorted by length to waste less padding."""

    def __init__(self, model, tokenizer, batch_size: int):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, desc: str = "generate") -> list[str]:
        pad = self.tokenizer.pad_token_id
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        device = next(self.model.parameters()).device
        for start in tqdm(range(0, len(order), self.batch_size), desc=desc, leave=False):
            idx = order[start:start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(prompts[i])
                ids[row, width - n:] = torch.as_tensor(prompts[i])
                mask[row, width - n:] = 1
            gen = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=pad, eos_token_id=self.tokenizer.eos_token_id)
            for row, i in enumerate(idx):
                out[i] = self.tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
        return out


class VLLMEngine(Engine):
    """vLLM offline engine from a saved model directory (``pip install -e .[vllm]``; CUDA only)."""

    def __init__(self, model_path: str | Path, tokenizer, cfg: Any, dtype: str, seed: int,
                 trust_remote_code: bool = False):
        try:
            from vllm import LLM
        except ImportError as err:  # pragma: no cover - depends on the optional extra
            raise ImportError("engine=vllm needs the optional extra: pip install -e '.[vllm]' (CUDA only); "
                              "use engine=hf on CPUs") from err
        self.tokenizer = tokenizer
        self.llm = LLM(model=str(model_path), dtype=dtype, seed=seed, trust_remote_code=trust_remote_code,
                       gpu_memory_utilization=float(cfg.gpu_memory_utilization))

    def generate(self, prompts: list[list[int]], max_new_tokens: int, desc: str = "generate") -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
        results = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
        return [r.outputs[0].text.strip() for r in results]


def _hf(cfg: Any, model, tokenizer, model_path: Path | None, dtype: str, seed: int,
        trust_remote_code: bool) -> Engine:
    return HFEngine(model, tokenizer, int(cfg.batch_size))


def _vllm(cfg: Any, model, tokenizer, model_path: Path | None, dtype: str, seed: int,
          trust_remote_code: bool) -> Engine:
    return VLLMEngine(model_path, tokenizer, cfg, dtype, seed, trust_remote_code)


# engine.name -> how to build it (build_engine dispatches here; config validation reads the names).
ENGINES = {"hf": _hf, "vllm": _vllm}


def build_engine(cfg: Any, model, tokenizer, model_path: Path | None, dtype: str, seed: int,
                 trust_remote_code: bool = False) -> Engine:
    """The engine named by ``cfg.name``."""
    if cfg.name not in ENGINES:
        raise ValueError(f"engine.name={cfg.name!r}; expected one of {sorted(ENGINES)}")
    return ENGINES[cfg.name](cfg, model, tokenizer, model_path, dtype, seed, trust_remote_code)
