"""Multi-process (``torchrun``) helpers: every rank trains together through the HF Trainer's data parallelism;
rank 0 alone builds the stages that do not train (generation, judging, safety tokens: pact.runtime.store) and publishes
artifacts and run records.

On one process every helper is a no-op, so single-process code paths never touch ``torch.distributed``.
"""

from __future__ import annotations

import ctypes
import gc
import os
from typing import Any

import torch
import torch.distributed as tdist


def world_size() -> int:
    """Processes in this run (``WORLD_SIZE`` set by torchrun; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def compute_device() -> torch.device:
    """Where this process computes: its GPU (``LOCAL_RANK`` under torchrun/accelerate) when CUDA is available,
    else the CPU. Every forward outside the Trainer (reference caches, safety tokens, generation) runs here."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def init() -> None:
    """Join the process group torchrun set up (gloo on CPU, NCCL on GPUs) before any stage runs, so the store
    can agree on which artifacts to build; the Trainer reuses this group."""
    if not is_distributed() or tdist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        tdist.init_process_group("nccl")
    else:
        tdist.init_process_group("gloo")


def barrier() -> None:
    if is_distributed() and tdist.is_initialized():
        tdist.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (so that all ranks take the same branch)."""
    if not (is_distributed() and tdist.is_initialized()):
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def release_memory() -> None:
    """Hand what a finished stage freed back: the GPU's cached blocks to the device (before another engine, a judge or
    the next stage loads a model) and the heap's freed pages to the operating system. glibc keeps freed heap pages
    resident, so a stage that follows a training stage in the same process would peak on top of it (measured: the
    safety pairs after SmolLM2's alignment, 4.7 GB held before they start; docs/reproducibility.md). Each part is a
    no-op where it does not apply (no GPU, no glibc)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
