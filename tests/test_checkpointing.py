"""optim.gradient_checkpointing: the same gradients as keeping the activations (fp32, CPU), a LoRA model included."""

from __future__ import annotations

import os

import pytest
import torch
from omegaconf import OmegaConf

from pact.models.adapters import apply_lora
from pact.training.trainer import training_arguments
from tests.realdata import tiny_hub_model


def grads(path, checkpointing: bool) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = apply_lora(AutoModelForCausalLM.from_pretrained(path), OmegaConf.create(
        {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(3, 100, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_checkpointing_is_switched_on_by_the_optim_slice_and_changes_no_gradient(tmp_path):
    args = training_arguments(OmegaConf.create({"lr": 1e-3, "batch_size": 2, "gradient_checkpointing": True}),
                              tmp_path, 0, "none", None, 1)
    assert args.activation_checkpointing and args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert not training_arguments(OmegaConf.create({"lr": 1e-3, "batch_size": 2}), tmp_path, 0, "none", None,
                                  1).activation_checkpointing
    path = tiny_hub_model(tmp_path / "m", seed=0)
    plain, recomputed = grads(path, False), grads(path, True)
    assert plain.keys() == recomputed.keys() and len(plain) > 0
    assert all(torch.equal(plain[k], recomputed[k]) for k in plain)


def test_release_memory_returns_freed_heap_pages_to_the_system():
    """pact.runtime.dist.release_memory after a stage: freed allocations below glibc's mmap threshold, between live
    ones (as a training step's many tensors leave them), stay resident until it runs (Linux with glibc only)."""
    import ctypes

    from pact.runtime.dist import release_memory

    try:
        has_trim = hasattr(ctypes.CDLL("libc.so.6"), "malloc_trim")
    except OSError:
        has_trim = False
    if not has_trim:
        pytest.skip("no glibc")

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    blocks = [bytearray(b"x" * (64 * 1024)) for _ in range(8000)]  # ~500 MB in 64 KB blocks (heap, not mmap)
    pins = blocks[::16]  # live between the freed ones: no free space at the heap's top to trim on its own
    del blocks
    after_free = rss_mb()
    release_memory()
    released = rss_mb()
    assert after_free - released > 300, (after_free, released)
    assert len(pins) == 500
