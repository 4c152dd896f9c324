"""A GPU check that needs no downloads: ``python -m experiments.gpu_check [--shape NAME] [--out DIR]``.

Two parts, both from conf/analysis.yaml ``gpu_check`` (no network, no hub weights, no vLLM):

1. **Toy world.** A micro PACT-LoRA study (world, base, alignment, safety set, fine-tune with the reference cache,
   generation, judging) in a scratch store, in bf16. For every stage the store builds, its wall time and the peak
   GPU memory while it ran (0 MB: the stage ran on the CPU). The checks: the safety tokens, the fine-tune (its peak
   includes the reference-cache pass) and the generation used the GPU.
2. **Step timing on a large shape.** A randomly initialised Llama of the configured shape (Llama-3.1-8B's by
   default: no weights are needed to time a step) with the official LoRA adapter, batch x sequence tokens of
   random ids: the reference cache pass on the device, then SFT, PACT with the cached reference and PACT with the
   live reference (the adapter disabled, as the official code runs it), each a forward, backward and AdamW step
   (bf16 autocast on CUDA, as the Trainer's bf16 mode); mean step time and peak GPU memory, as ratios to SFT.

Without CUDA both parts still run (on the CPU; use ``--shape tiny``), so the script is tested here; the device
checks are then reported as skipped. Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from pact.config import CONF_DIR, compose_config, validate
from pact.fileio import write_atomic
from pact.labels import IGNORE_INDEX

SETTINGS = OmegaConf.load(CONF_DIR / "analysis.yaml").gpu_check
MB = 2 ** 20


def cuda() -> bool:
    return torch.cuda.is_available()


def peak_mb() -> float:
    """Peak GPU memory allocated since the last reset (0 without CUDA)."""
    return torch.cuda.max_memory_allocated() / MB if cuda() else 0.0


def reset_peak() -> None:
    if cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


class StageMeter(logging.Handler):
    """Listens to the store's "built" messages: each stage's seconds and the peak GPU memory since the last one
    (the stages of one run are built one after another)."""

    def __init__(self):
        super().__init__()
        self.stages: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("stage %s: built"):
            stage, seconds = record.args[0], record.args[1]
            self.stages.append({"stage": stage, "seconds": round(float(seconds), 2), "peak_gpu_mb": peak_mb()})
            reset_peak()


def device_check(stage: str, peaks: dict[str, float]) -> str:
    """Whether ``stage`` used the GPU, from the peak GPU memory of each stage built in this run."""
    if not cuda():
        return "skipped (no CUDA)"
    if stage not in peaks:
        return f"not checked: stage {stage} was reused, not built"
    return "ok" if peaks[stage] > 0 else f"FAILED: stage {stage} used no GPU memory"


def toy_world(root: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Part 1: the micro study's stages (``overrides``, default conf/analysis.yaml's, in a store under ``root``),
    their time and peak GPU memory, and the device checks."""
    from experiments.run import run

    overrides = list(SETTINGS.toy_overrides) if overrides is None else overrides
    cfg = validate(compose_config([*overrides, f"store_dir={root / 'store'}", f"runs_dir={root / 'runs'}"]))
    meter = StageMeter()
    store_log = logging.getLogger("pact.store")
    store_log.addHandler(meter)
    store_log.setLevel(logging.INFO)
    reset_peak()
    try:
        metrics = run(cfg)
    finally:
        store_log.removeHandler(meter)
    peaks = {s["stage"]: s["peak_gpu_mb"] for s in meter.stages}
    stages = {"safety tokens on the GPU (stage tokens)": "tokens",
              "fine-tuning on the GPU (stage finetune)": "finetune",
              "generation on the GPU (stage generate)": "generate"}
    checks = {name: device_check(stage, peaks) for name, stage in stages.items()}
    return {"stages": meter.stages, "checks": checks,
            "metrics": {k: metrics[k] for k in ("harmful_score", "refusal_rate", "finetune_accuracy")}}


def random_llama(shape: Any, device: str, dtype: torch.dtype):
    """A randomly initialised ``LlamaForCausalLM`` of ``shape``, created on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**OmegaConf.to_container(shape, resolve=True))
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    return model


def step_timing(shape_name: str) -> list[dict[str, Any]]:
    """Part 2: SFT vs PACT (cached and live reference) steps on a random model of the named shape."""
    from pact.adapters import apply_lora
    from pact.pact_method import PactMethod

    device = "cuda" if cuda() else "cpu"
    dtype = torch.bfloat16 if cuda() else torch.float32  # bf16 matmuls are slow on CPUs without bf16 units
    t = SETTINGS.timing
    cfg = compose_config(["method=pact_lora"])
    shape = SETTINGS.shapes[shape_name]
    torch.manual_seed(0)
    model = apply_lora(random_llama(shape, device, dtype), cfg.finetune.lora)
    gen = torch.Generator().manual_seed(0)
    vocab = int(shape.vocab_size)
    ids = torch.randint(vocab, (int(t.batch), int(t.seq_len)), generator=gen)
    labels = ids.clone()
    labels[:, : int(t.seq_len) - int(t.answer_len)] = IGNORE_INDEX  # the prompt part is not trained on
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "labels": labels.to(device)}
    methods = {}
    for reference in ("cache", "live"):
        m = PactMethod(OmegaConf.merge(cfg.method, {"reference": reference}))
        # a random safety set of the official size and random weights: the cost does not depend on which tokens
        m.ids = torch.randperm(vocab, generator=gen)[: int(cfg.method.tokens.top_k)]
        m.weights = torch.randn(len(m.ids), generator=gen)
        m.header = ids[0, : int(t.header_len)].tolist()  # stands in for the assistant header's ids
        methods[reference] = m
    reset_peak()
    start = time.perf_counter()
    with model.disable_adapter():  # the cache pass: the aligned weights are the base weights under the adapter
        model.eval()
        rows = [{"input_ids": ids[i].tolist(), "labels": labels[i].tolist()} for i in range(len(ids))]
        # as the pipeline's cache pass: collated rows on the model's device, the subset logits back on the CPU
        ref_full, ref_post = methods["cache"].reference(model, rows)
    cache_s = time.perf_counter() - start
    cached = {**batch, "ref_full": ref_full.to(device), "ref_post": ref_post.to(device)}
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=float(cfg.finetune.lora_lr or cfg.finetune.optim.lr))

    def sft():
        return model(**batch).loss

    variants = [("SFT", sft), ("PACT, reference cache", lambda: methods["cache"].compute_loss(None, model, cached)),
                ("PACT, live reference (official)", lambda: methods["live"].compute_loss(None, model, batch))]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda() else contextlib.nullcontext()
    out = []
    for label, loss_fn in variants:
        times = []
        reset_peak()
        for step in range(int(t.warmup) + int(t.steps)):
            start = time.perf_counter()
            with autocast:  # as the Trainer's bf16 mode runs a step
                loss = loss_fn()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if cuda():
                torch.cuda.synchronize()
            if step >= int(t.warmup):
                times.append(time.perf_counter() - start)
        out.append({"variant": label, "step_s": sum(times) / len(times), "peak_gpu_mb": peak_mb()})
    for row in out:
        row["step_ratio"] = row["step_s"] / out[0]["step_s"]
        row["peak_ratio"] = row["peak_gpu_mb"] / out[0]["peak_gpu_mb"] if out[0]["peak_gpu_mb"] else None
    out.append({"variant": "reference cache pass (the batch's rows, once)", "step_s": cache_s, "peak_gpu_mb": None,
                "step_ratio": None, "peak_ratio": None})
    return out


def markdown(result: dict[str, Any]) -> str:
    """The report of both parts."""
    env = result["environment"]
    lines = [f"# GPU check ({env['device']}, torch {env['torch']})", "",
             f"Command: `{result['command']}`", "", "## Toy world (micro PACT-LoRA study, bf16)", "",
             "| stage | seconds | peak GPU memory (MB) |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['peak_gpu_mb']:.0f} |" for s in result["toy"]["stages"]]
    lines += ["", *[f"- {name}: {status}" for name, status in result["toy"]["checks"].items()], "",
              f"## Step timing: random {result['shape']} with LoRA, batch {SETTINGS.timing.batch} x "
              f"{SETTINGS.timing.seq_len} tokens ({SETTINGS.timing.answer_len} answer tokens), mean of "
              f"{SETTINGS.timing.steps} steps after {SETTINGS.timing.warmup}", "",
              "| variant | step (ms) | step / SFT | peak GPU memory (MB) | peak / SFT |", "|---|---|---|---|---|"]

    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    for r in result["timing"]:
        lines.append(f"| {r['variant']} | {1000 * r['step_s']:.1f} | {fmt(r['step_ratio'], '.2f')} | "
                     f"{fmt(r['peak_gpu_mb'], '.0f')} | {fmt(r['peak_ratio'], '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=SETTINGS.shape, choices=sorted(SETTINGS.shapes),
                        help="the model shape of the step timing (conf/analysis.yaml gpu_check.shapes)")
    parser.add_argument("--out", default="outputs/gpu_check", help="where gpu_check.{json,md} go")
    parser.add_argument("--skip-toy", action="store_true", help="only the step timing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    env = {"device": torch.cuda.get_device_name(0) if cuda() else "CPU (no CUDA)", "torch": torch.__version__}
    result: dict[str, Any] = {"environment": env, "shape": args.shape,
                              "command": " ".join(["python -m experiments.gpu_check", *(argv or sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="pact-gpu-check-") as tmp:
        result["toy"] = {"stages": [], "checks": {}} if args.skip_toy else toy_world(Path(tmp))
    result["timing"] = step_timing(args.shape)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gpu_check.json", json.dumps(result, indent=2, default=str))
    report = markdown(result)
    write_atomic(out / "gpu_check.md", report)
    print(report)
    failed = [n for n, s in result["toy"]["checks"].items() if s.startswith("FAILED")]
    if failed:
        raise SystemExit(f"GPU check failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
