"""A GPU check that needs no downloads: ``python -m experiments.gpu_check [--shape NAME] [--out DIR]``.

Five parts, all from conf/analysis.yaml ``gpu_check`` (no network, no hub weights, no vLLM):

1. **Toy world.** A micro PACT-LoRA study (world, base, alignment, safety set, fine-tune with the reference cache,
   generation, judging) in a scratch store, in bf16. For every stage the store builds, its wall time and the peak
   GPU memory while it ran (0 MB: the stage ran on the CPU). The checks: the safety tokens, the fine-tune (its peak
   includes the reference-cache pass) and the generation used the GPU.
2. **Step timing on a large shape.** A randomly initialised Llama of the configured shape (Llama-3.1-8B's by
   default: no weights are needed to time a step) with the official LoRA adapter, batch x sequence tokens of
   random ids: the reference cache pass on the device, then SFT, PACT with the cached reference and PACT with the
   live reference (the adapter disabled, as the official code runs it), each a forward, backward and AdamW step
   (bf16 autocast on CUDA, as the Trainer's bf16 mode); mean step time and peak GPU memory, as ratios to SFT.

3. **Generation on the large shape.** The HF engine (pact.generation.HFEngine) on the random model: ``prompts``
   x ``new_tokens`` (64 x 1,024 on the 8B shape), every answer forced to its full length (no end token); time,
   tokens per second, peak GPU memory. Checked: every answer has exactly ``new_tokens`` tokens.
4. **Memory of a PACT-LoRA fine-tune's preparation.** The random model held as a fine-tune holds the aligned model;
   while a vLLM engine would run (pact.generation.offloaded) it waits on the CPU; the safety tokens then add the
   base model beside it. Checked, in model copies of GPU memory: at most ``offload_max`` stays while offloaded, at
   most ``two_copies_max`` at the tokens stage's peak (three copies before the model was reused).
5. **One Trainer step of PACT-LoRA under the paper recipe** (conf/experiment/paper_llama31.yaml: bf16,
   ``answer_logits``): the HF Trainer with the cached reference, one step over the whole batch. Checked: the output
   layer ran at the answer positions only, and the step's loss (CE + lambda KL) and KL equal those of a plain bf16
   forward at every position on the same batch before the step, within ``rtol``. (The KL is not 0 at step 0: the
   gate mixes in the post-only reference, which differs from the full-context one.)

Without CUDA every part still runs (on the CPU; use ``--shape tiny``), so the script is tested here; the device
checks are then reported as skipped, the number checks still count. Parts 2-5 need only torch, transformers, peft
and PyYAML (a bare GPU box); part 1 runs the pipeline and needs this package's dependencies (``pip install -e .``):
without Hydra it is reported as skipped. Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out``; exits
non-zero when a check failed.
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
import yaml

from pact.fileio import write_atomic
from pact.generation import release_gpu_memory
from pact.labels import IGNORE_INDEX

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MB = 2 ** 20


class Settings(dict):
    """A YAML mapping read with attribute access (``cfg.lr``, ``cfg.get``): what the methods and the Trainer's
    arguments read of a config, without OmegaConf or Hydra."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def settings(value: Any) -> Any:
    if isinstance(value, dict):
        return Settings({k: settings(v) for k, v in value.items()})
    return [settings(v) for v in value] if isinstance(value, list) else value


def read_conf(relative: str) -> Settings:
    return settings(yaml.safe_load((CONF_DIR / relative).read_text()))


def method_conf(name: str) -> Settings:
    """conf/method/<name>.yaml over the methods its ``defaults`` list names (what Hydra composes)."""
    own = read_conf(f"method/{name}.yaml")
    merged: dict[str, Any] = {}
    for parent in own.pop("defaults", []):
        merged.update(method_conf(parent) if parent != "_self_" else own)
    return settings(merged or own)


SETTINGS = read_conf("analysis.yaml").gpu_check
RECIPE = read_conf("experiment/paper_llama31.yaml").finetune  # the official LoRA recipe (optimiser, adapter)


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
    from pact.config import compose_config, validate

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

    config = LlamaConfig(**dict(shape))
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

    device, dtype = where()
    t = SETTINGS.timing
    shape = SETTINGS.shapes[shape_name]
    torch.manual_seed(0)
    model = apply_lora(random_llama(shape, device, dtype), RECIPE.lora)
    gen = torch.Generator().manual_seed(0)
    vocab = int(shape.vocab_size)
    ids, labels = random_rows(int(t.batch), int(t.seq_len), int(t.answer_len), vocab, gen)
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
             "labels": labels.to(device)}
    methods = {reference: random_pact(reference, vocab, ids[0, : int(t.header_len)].tolist(), gen)
               for reference in ("cache", "live")}
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
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=float(RECIPE.optim.lr))

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
    return out  # its model and optimizer go with this frame (main releases the GPU cache after each part)


def where() -> tuple[str, torch.dtype]:
    """The device and the large model's dtype: bf16 on a GPU; float32 on a CPU, where bf16 matmuls are slow without
    bf16 units."""
    return ("cuda", torch.bfloat16) if cuda() else ("cpu", torch.float32)


def random_rows(rows: int, seq_len: int, answer_len: int, vocab: int, gen: torch.Generator):
    """(input_ids, labels) of random rows whose last ``answer_len`` tokens are the trained answer."""
    ids = torch.randint(vocab, (rows, seq_len), generator=gen)
    labels = ids.clone()
    labels[:, : seq_len - answer_len] = IGNORE_INDEX  # the prompt part is not trained on
    return ids, labels


def random_pact(reference: str, vocab: int, header: list[int], gen: torch.Generator):
    """PACT-LoRA (conf/method/pact_lora.yaml) with a random safety set of the official size and random weights
    (the cost does not depend on which tokens); ``header`` stands in for the assistant header's ids."""
    from pact.pact_method import PactMethod

    cfg = method_conf("pact_lora")
    cfg["reference"] = reference
    m = PactMethod(cfg)
    m.ids = torch.randperm(vocab, generator=gen)[: int(cfg.tokens.top_k)]
    m.weights = torch.randn(len(m.ids), generator=gen)
    m.header = header
    return m


class CountTokenizer:
    """What the HF engine reads of a tokenizer: pad and end ids (none: every answer runs to its budget) and
    ``decode``, here the answer's token count."""

    pad_token_id, eos_token_id = 0, None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return str(len(ids))


def generation(shape_name: str) -> dict[str, Any]:
    """Part 3: the HF engine on the shape's random model, every answer forced to ``new_tokens``."""
    from pact.generation import HFEngine

    g = SETTINGS.generation[shape_name]
    device, dtype = where()
    torch.manual_seed(0)
    model = random_llama(SETTINGS.shapes[shape_name], device, dtype)
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, int(SETTINGS.shapes[shape_name].vocab_size), (int(g.prompts), int(g.prompt_len)),
                            generator=gen).tolist()
    reset_peak()
    start = time.perf_counter()
    answers = HFEngine(model, CountTokenizer(), batch_size=int(g.prompts)).generate(prompts, int(g.new_tokens))
    seconds = time.perf_counter() - start
    lengths = sorted({int(a) for a in answers})
    del model
    release_gpu_memory()
    ok = lengths == [int(g.new_tokens)]
    return {"prompts": int(g.prompts), "prompt_len": int(g.prompt_len), "new_tokens": int(g.new_tokens),
            "seconds": seconds, "tokens_per_s": int(g.prompts) * int(g.new_tokens) / seconds,
            "peak_gpu_mb": peak_mb(), "answer_lengths": lengths,
            "check": "ok" if ok else f"FAILED: answer lengths {lengths}, not all {int(g.new_tokens)}"}


def allocated_mb() -> float:
    if not cuda():
        return 0.0
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated() / MB


def memory_probe(shape_name: str) -> dict[str, Any]:
    """Part 4: the GPU memory of a PACT-LoRA fine-tune's preparation, in copies of the shape's model."""
    from pact.generation import offloaded

    m = SETTINGS.memory
    device, dtype = where()
    release_gpu_memory()
    start = allocated_mb()
    reset_peak()
    held = random_llama(SETTINGS.shapes[shape_name], device, dtype)  # the fine-tune's aligned model
    copy = allocated_mb() - start
    with offloaded(held):  # the safety pairs' vLLM engine runs here
        during = allocated_mb() - start
    back = allocated_mb() - start
    reset_peak()
    base = random_llama(SETTINGS.shapes[shape_name], device, dtype)  # the tokens stage: the base beside it
    peak = peak_mb() - start
    del held, base
    release_gpu_memory()
    row = {"copy_mb": copy, "offloaded_mb": during, "back_mb": back, "tokens_peak_mb": peak}
    if not cuda():
        return {**row, "check": "skipped (no CUDA)"}
    problems = []
    if during > float(m.offload_max) * copy:
        problems.append(f"{during / copy:.2f} copies stayed while offloaded (max {m.offload_max})")
    if abs(back - copy) > float(m.offload_max) * copy:
        problems.append(f"{back / copy:.2f} copies after the engine, not 1")
    if peak > float(m.two_copies_max) * copy:
        problems.append(f"tokens stage peak {peak / copy:.2f} copies (max {m.two_copies_max})")
    return {**row, "copies_offloaded": during / copy, "copies_tokens_peak": peak / copy,
            "check": "ok" if not problems else "FAILED: " + "; ".join(problems)}


def trainer_step(shape_name: str, out_dir: Path) -> dict[str, Any]:
    """Part 5: one HF Trainer step of PACT-LoRA under the paper recipe (bf16, answer_logits), cached reference."""
    from pact.adapters import apply_lora
    from pact.data import SFTCollator
    from pact.methods import answers_only
    from pact.training import MethodTrainer, training_arguments

    c, t = SETTINGS.trainer_step, SETTINGS.timing
    device, dtype = where()
    shape = SETTINGS.shapes[shape_name]
    torch.manual_seed(0)
    model = apply_lora(random_llama(shape, device, dtype), RECIPE.lora)
    gen = torch.Generator().manual_seed(1)
    ids, labels = random_rows(int(c.rows), int(t.seq_len), int(t.answer_len), int(shape.vocab_size), gen)
    method = random_pact("cache", int(shape.vocab_size), ids[0, : int(t.header_len)].tolist(), gen)
    rows = [{"input_ids": ids[i].tolist(), "labels": labels[i].tolist()} for i in range(len(ids))]
    with model.disable_adapter():
        model.eval()
        full, post = method.reference(model, rows)
    n = int(t.answer_len)
    examples = [{**r, "ref_full": full[i, :n], "ref_post": post[i, :n]} for i, r in enumerate(rows)]
    model.train()
    batch = {k: v.to(device) for k, v in SFTCollator(0)(examples).items()}
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):  # no Trainer: logits at every position
        plain_loss = float(method.compute_loss(None, model, batch))
    plain_kl = float(method.last_kl)
    optim = Settings({**RECIPE.optim, "max_steps": 1, "batch_size": int(c.rows), "logging_steps": 1})
    args = training_arguments(optim, out_dir / "trainer", 0, "none", "gpu_check", 1)
    trainer = MethodTrainer(model=model, args=args, train_dataset=examples, data_collator=SFTCollator(0),
                            method=method)
    at_answers = answers_only(trainer, trainer.model)
    start = time.perf_counter()
    loss = float(trainer.train().metrics["train_loss"])
    seconds = time.perf_counter() - start
    kl = float(method.last_kl)
    del model, trainer
    release_gpu_memory()
    problems = []
    if not at_answers:
        problems.append("the output layer ran at every position (answer_logits off or the head trainable)")
    for name, got, want in (("loss", loss, plain_loss), ("KL", kl, plain_kl)):
        if not abs(got - want) <= float(c.rtol) * abs(want):
            problems.append(f"step {name} {got:.4f} vs the plain forward's {want:.4f} (rtol {c.rtol})")
    return {"rows": int(c.rows), "bf16": bool(args.bf16), "answer_logits": at_answers, "loss": loss,
            "plain_loss": plain_loss, "kl": kl, "plain_kl": plain_kl, "seconds": seconds,
            "check": "ok" if not problems else "FAILED: " + "; ".join(problems)}


def markdown(result: dict[str, Any]) -> str:
    """The report of every part."""
    env = result["environment"]
    lines = [f"# GPU check ({env['device']}, torch {env['torch']})", "", f"Command: `{result['command']}`", "",
             "## Toy world (micro PACT-LoRA study, bf16)", ""]
    if result["toy"].get("skipped"):
        lines.append(f"Skipped: {result['toy']['skipped']}")
    else:
        lines += ["| stage | seconds | peak GPU memory (MB) |", "|---|---|---|"]
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
    g, m, t = result["generation"], result["memory"], result["trainer_step"]
    lines += ["", f"## HF generation: {g['prompts']} prompts of {g['prompt_len']} tokens, {g['new_tokens']} new "
              "tokens each (no end token)", "",
              f"{g['seconds']:.1f} s, {g['tokens_per_s']:.0f} tokens/s, peak GPU memory {g['peak_gpu_mb']:.0f} MB; "
              f"answer lengths {g['answer_lengths']}: {g['check']}", "",
              "## Memory of PACT-LoRA's preparation (MB above the start)", "",
              "| one model copy | while a vLLM engine would run | after it | safety tokens' peak (+ base) |",
              "|---|---|---|---|",
              f"| {m['copy_mb']:.0f} | {m['offloaded_mb']:.0f} | {m['back_mb']:.0f} | {m['tokens_peak_mb']:.0f} |", "",
              f"Check: {m['check']}", "",
              f"## One Trainer step of PACT-LoRA (paper recipe, {t['rows']} rows, bf16 {t['bf16']})", "",
              f"Output layer at the answer positions only: {t['answer_logits']}; step loss {t['loss']:.4f} and KL "
              f"{t['kl']:.4f} against a plain forward's (every position) {t['plain_loss']:.4f} and "
              f"{t['plain_kl']:.4f}; {t['seconds']:.1f} s. Check: {t['check']}"]
    return "\n".join(lines) + "\n"


def failures(result: dict[str, Any]) -> list[str]:
    """The names of the checks that failed."""
    failed = [n for n, s in result["toy"]["checks"].items() if s.startswith("FAILED")]
    return failed + [part for part in ("generation", "memory", "trainer_step")
                     if result[part]["check"].startswith("FAILED")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="Parts, checks and sizes: the module docstring and conf/analysis.yaml "
                                            "gpu_check. On one H100/H200-class GPU the 8B shape takes a few minutes.")
    parser.add_argument("--shape", default=SETTINGS.shape, choices=sorted(SETTINGS.shapes),
                        help="the random model's shape for parts 2-5 (conf/analysis.yaml gpu_check.shapes); tiny: "
                             "a dry run on a CPU in under a minute")
    parser.add_argument("--out", default="outputs/gpu_check", help="where gpu_check.{json,md} go")
    parser.add_argument("--skip-toy", action="store_true", help="leave out part 1 (the toy-world study)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    out = Path(args.out)
    env = {"device": torch.cuda.get_device_name(0) if cuda() else "CPU (no CUDA)", "torch": torch.__version__}
    result: dict[str, Any] = {"environment": env, "shape": args.shape,
                              "command": " ".join(["python -m experiments.gpu_check", *(argv or sys.argv[1:])])}
    with tempfile.TemporaryDirectory(prefix="pact-gpu-check-") as tmp:
        result["toy"] = toy_part(Path(tmp), args.skip_toy)
        for part, measure in (("timing", step_timing), ("generation", generation), ("memory", memory_probe)):
            result[part] = measure(args.shape)
            release_gpu_memory()
        result["trainer_step"] = trainer_step(args.shape, Path(tmp))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "gpu_check.json", json.dumps(result, indent=2, default=str))
    report = markdown(result)
    write_atomic(out / "gpu_check.md", report)
    print(report)
    failed = failures(result)
    if failed:
        raise SystemExit(f"GPU check failed: {', '.join(failed)}")


def toy_part(root: Path, skip: bool) -> dict[str, Any]:
    """Part 1, or why it did not run (asked to skip it; Hydra missing on a bare GPU box)."""
    if skip:
        return {"stages": [], "checks": {}, "skipped": "--skip-toy"}
    try:
        import hydra  # noqa: F401
    except ImportError:
        return {"stages": [], "checks": {}, "skipped": "needs this package's dependencies (pip install -e .)"}
    return toy_world(root)


if __name__ == "__main__":
    main()
