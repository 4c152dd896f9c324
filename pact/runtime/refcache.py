"""A per-example cache of frozen-reference tensors (PACT's subset logits, constrained SFT's log-probs).

Keyed by the example's tokens, not by batch, so runs that share examples (other seeds, lambdas, poison
ratios) share entries. Each entry is one safetensors file written atomically, and computed from its example alone:
in a padded batch a row's logits move in the last bits with its batch-mates (SmolLM2's post-only reference: 31 of
32 rows, up to 3e-5), so an entry computed beside whichever examples were still missing would depend on what other
runs, maybe running at the same time, had cached before.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pact.runtime.fileio import atomic_path

KEY_CHARS = 24


def example_key(example: dict[str, Any]) -> str:
    """A hash of an encoded example's ``input_ids`` and ``labels`` (and its own ``attention_mask`` when it has one:
    pact.data.rows.hide_tokens)."""
    parts = (list(example["input_ids"]), list(example["labels"]))
    if "attention_mask" in example:
        parts += (list(example["attention_mask"]),)
    return hashlib.sha256(str(parts).encode()).hexdigest()[:KEY_CHARS]


def cached_per_example(cache_dir: Path, examples: list[dict[str, Any]],
                       compute: Callable[[list[dict[str, Any]]], list[dict[str, torch.Tensor]]],
                       ) -> tuple[list[dict[str, torch.Tensor]], dict[str, Any]]:
    """The tensors of every example, computing only those not yet cached, each alone (``compute`` gets a list of
    one). Returns them in the examples' order and stats (built, reused, seconds)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    names = [example_key(e) for e in examples]
    missing = sorted({n: i for i, n in reversed(list(enumerate(names)))
                      if not (cache_dir / f"{n}.safetensors").exists()}.values())
    start = time.time()
    for i in missing:
        (tensors,) = compute([examples[i]])
        with atomic_path(cache_dir / f"{names[i]}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    stats = {"ref_cache_dir": str(cache_dir), "ref_cache_built": len(missing),
             "ref_cache_reused": len(examples) - len(missing), "ref_cache_seconds": round(time.time() - start, 3)}
    return [load_file(str(cache_dir / f"{n}.safetensors")) for n in names], stats
