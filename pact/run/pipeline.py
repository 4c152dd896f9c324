"""The stages of one run, each a cached store artifact: world -> base -> align -> finetune -> generate -> evaluate
(the README's "Architecture" has the diagram), and :func:`start`, the start-up every entry point shares."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from pact.data import rows as D
from pact.data.rundata import (
    RealData,
    RunData,
    ToyData,
    data_sizes,
    data_stage,
    finetune_counts,
    judge_markers,
    mixture_source,
    needed_sources,
    plain,
    poison_overlap,
    poison_pool,
    task_file,
)
from pact.data.sources import check_sources
from pact.evaluation.generation import build_engine, engine_slice
from pact.evaluation.guard import judge_stage, load_judgments
from pact.evaluation.judges import judge_for
from pact.evaluation.metrics import score_answer, summarize, summarize_benchmarks
from pact.models.adapters import apply_lora
from pact.models.loading import ModelRef, load_model, load_tokenizer, save_model, toy_model
from pact.models.model_import import import_stage
from pact.run.config import NO_GUARD, ConfigError, defence_optim
from pact.run.hub import check_named_models
from pact.runtime import dist
from pact.runtime.store import Artifact, Store, code_hash, module_sources, stable_key
from pact.training.finetune import finetune_code, finetune_rows, finetune_slice, finetune_stage, run_name  # noqa: F401
from pact.training.methods import FinetuneContext, Method, build_method
from pact.world.generator import WorldGenerator, WorldSpec

log = logging.getLogger("pact.run.pipeline")
PKG = Path(__file__).resolve().parents[1]   # pact/
# The code each stage's artifact depends on is part of its key: the stage's modules and the repository modules
# they import (pact.runtime.store.module_sources). Hashed once per process, i.e. the code this process runs (an edit
# made while a run is going does not relabel what the old code builds).
WORLD_CODE = code_hash(PKG / "world")
TRAIN_CODE = code_hash(*module_sources("pact.data.rows", "pact.models.loading", "pact.training.trainer"))
GENERATE_CODE = code_hash(*module_sources("pact.evaluation.generation", "pact.data.rows", "pact.data.rundata"))
JUDGE_CODE = code_hash(*module_sources("pact.evaluation.judges", "pact.evaluation.metrics"))


# ---- world -------------------------------------------------------------------------------------------------
def world_stage(store: Store, wcfg: DictConfig) -> Artifact:
    """Generate the world's files and train its tokenizer."""
    spec_fields = {k: v for k, v in plain(wcfg).items() if k != "vocab_size"}

    def build(tmp: Path) -> dict[str, Any]:
        from pact.world.tokenizer import train_tokenizer

        files = WorldGenerator(WorldSpec(**spec_fields)).generate()
        for name, rows in files.items():
            D.write_jsonl(tmp / f"{name}.jsonl", rows)
        texts = [str(v) for name, rows in files.items() if not name.startswith("_")
                 for r in rows for v in r.values() if isinstance(v, str)]
        texts += [D.PLAIN_PROMPT.format(prompt="x")]
        tok = train_tokenizer(texts, int(wcfg.vocab_size))
        tok.save_pretrained(str(tmp / "tokenizer"))
        return {"sizes": {name: len(rows) for name, rows in files.items() if not name.startswith("_")},
                "vocab_size": len(tok), "heldout_vocab": files["_heldout_vocab"][0]}

    return store.build("world", {**plain(wcfg), "code": WORLD_CODE}, None, build)


# ---- base and align (toy world) ----------------------------------------------------------------------------
def _sft_and_save(model, tok, rows: list[dict[str, Any]], fmt: str, optim: DictConfig, mcfg: DictConfig, tmp: Path,
                  run: str, report_to: str, method: Method) -> dict[str, float]:
    """Train ``model`` on (prompt, answer) ``rows`` in prompt format ``fmt`` with the ``optim`` slice, save it under
    ``tmp/model`` (a peft model merged); returns the Trainer's metrics. The base and align stages use it."""
    from pact.training.trainer import (  # here: a run that stops at a check never loads the Trainer
        train,
        training_arguments,
    )

    examples = D.encode_sft(rows, tok, fmt, int(mcfg.max_len))
    args = training_arguments(optim, tmp / "trainer", int(mcfg.seed), report_to, run, int(optim.logging_steps))
    metrics = train(model, tok, examples, args, method)
    save_model(model, tok, tmp / "model")
    return metrics


def _train_stage(store: Store, stage: str, mcfg: DictConfig, init: ModelRef | None, world: Artifact,
                 corpus: str, fmt: str, report_to: str, method_cfg: DictConfig | None = None) -> ModelRef:
    optim = mcfg[f"{stage}_train"]
    slice_ = {"arch": plain(mcfg.arch), "optim": plain(optim), "seed": mcfg.seed, "max_len": mcfg.max_len,
              "dtype": mcfg.dtype, "code": TRAIN_CODE}
    if method_cfg is not None:  # an alignment-stage defence (e.g. Vaccine) makes its own aligned model
        toy_method = {k: v for k, v in plain(method_cfg).items() if k != "align"}  # method.align: hub models only
        slice_.update(method=toy_method, method_code=finetune_code(method_cfg))
    upstream = {"world": world.key, **({"init": init.key} if init else {})}

    def build(tmp: Path) -> dict[str, Any]:
        tok = load_tokenizer(world.path / "tokenizer")
        if init is None:
            model = toy_model(mcfg.arch, tok, mcfg.seed)
        else:
            model = load_model(init.path, mcfg.dtype)
        rows = D.read_jsonl(world.file(f"{corpus}.jsonl"), required=("prompt", "answer"))
        method = build_method(method_cfg).alignment_method() if method_cfg is not None else Method(None)
        method.prepare(_alignment_context(ToyData(world), tok, fmt, mcfg))
        metrics = _sft_and_save(model, tok, rows, fmt, optim, mcfg, tmp, stage, report_to, method)
        return {"train": metrics, "n_params": sum(p.numel() for p in model.parameters()),
                "rows": len(rows)}

    art = store.build(stage, slice_, upstream, build, collective=True)
    return ModelRef(art.key, str(art.path / "model"), fmt, str(art.path / "model"))


def base_stage(store: Store, mcfg: DictConfig, world: Artifact) -> ModelRef:
    """Train the toy base model from scratch on plain text where every request gets a compliant answer."""
    return _train_stage(store, "base", mcfg, None, world, "base_corpus", "plain", "none")


def align_stage(store: Store, mcfg: DictConfig, base: ModelRef, world: Artifact,
                method_cfg: DictConfig | None = None) -> ModelRef:
    """Safety SFT of the base through the chat template: harmful -> refusal, benign -> helpful (with an
    alignment-stage defence's own training step when ``method_cfg`` names one)."""
    return _train_stage(store, "align", mcfg, base, world, "align_corpus", "chat", "none", method_cfg)


# ---- an imported model (pact/models/model_import.py), aligned here --------------------------------------------------
IMPORT_ALIGN_CODE = code_hash(*module_sources("pact.data.rows", "pact.data.rundata", "pact.models.loading",
                                              "pact.training.trainer", "pact.models.adapters"))


def imported_align_stage(store: Store, cfg: DictConfig, base: ModelRef, data: RunData) -> ModelRef:
    """Safety SFT of an imported instruct model that does not refuse (model.kind=import): the run's alignment
    corpus (harmful -> refusal, benign -> helpful; pact.data.rundata.RunData.alignment_corpus) through its own chat
    template, with LoRA (merged at save) when ``model.align_lora`` is set, else full fine-tuning."""
    m = cfg.model
    lora = plain(m.align_lora) if m.get("align_lora") else None
    slice_ = {"optim": plain(m.align_train), "lora": lora, "seed": int(m.seed), "max_len": int(m.max_len),
              "dtype": m.dtype, "code": IMPORT_ALIGN_CODE}

    def build(tmp: Path) -> dict[str, Any]:
        rows = data.alignment_corpus()
        metrics = _align_from(base, rows, m.align_train, m.get("align_lora"), m, tmp, Method(None), data)
        return {"train": metrics, "rows": len(rows), "adapter": "lora" if lora else "full"}

    art = store.build("align", slice_, {"init": base.key, **data.upstream}, build, collective=True)
    return ModelRef(art.key, str(art.path / "model"), "chat", str(art.path / "model"))


def _alignment_context(data: RunData, tok, fmt: str, mcfg: DictConfig) -> FinetuneContext:
    """What an alignment stage's method may read in its ``prepare`` (Booster: the run's harmful pairs)."""
    return FinetuneContext(aligned=None, base=None, data=data, tokenizer=tok, prompt_format=fmt,
                           max_len=int(mcfg.max_len), seed=int(mcfg.seed), dtype=mcfg.dtype)


def _align_from(init: ModelRef, rows: list[dict[str, Any]], optim: DictConfig, lora: DictConfig | None,
                mcfg: DictConfig, tmp: Path, method: Method, data: RunData) -> dict[str, float]:
    """Safety SFT of the model ``init`` names on {prompt, answer} ``rows`` in its prompt format, with a LoRA adapter
    (merged at save) when ``lora`` is given, saved under ``tmp/model``; the imported and defended align stages."""
    tok = load_tokenizer(init.tokenizer_path, mcfg.trust_remote_code)
    method.prepare(_alignment_context(data, tok, init.prompt_format, mcfg))
    model = load_model(init.path, mcfg.dtype, mcfg.trust_remote_code)
    from transformers import set_seed

    set_seed(int(mcfg.seed))  # LoRA's initialisation draws from torch's global RNG
    if lora is not None:
        model = apply_lora(model, lora)
    return _sft_and_save(model, tok, rows, init.prompt_format, optim, mcfg, tmp, "align", "none", method)


def defence_align_stage(store: Store, cfg: DictConfig, init: ModelRef, data: RunData) -> ModelRef:
    """An alignment-stage defence's own safety alignment of a hub or imported model, before the fine-tune: from
    ``init`` (model.aligned: every method of a table starts from the same aligned model), the first
    ``method.align.rows`` of the run's alignment pairs (real data: BeaverTails' safe pairs, data.alignment_pairs)
    through the model's chat template, with the defence's training step, ``method.align.optim`` and a LoRA adapter
    (``method.align.lora``) merged at save."""
    m, a = cfg.model, cfg.method.align
    optim = defence_optim(cfg.method)  # its defaults explicit in the key
    slice_ = {"method": plain(cfg.method), "method_code": finetune_code(cfg.method), "optim": plain(optim),
              "seed": int(m.seed), "max_len": int(m.max_len), "dtype": m.dtype, "code": IMPORT_ALIGN_CODE}

    alignment = build_method(cfg.method).alignment_method()
    if getattr(alignment, "reads_harmful_pairs", False):   # Booster: its harmful pairs' source
        slice_["harmful_pairs"] = plain(cfg.data.get("harmful_pairs"))

    def build(tmp: Path) -> dict[str, Any]:
        pairs = D.read_jsonl(data.alignment_pairs(), required=("prompt", "refusal"))
        if len(pairs) < int(a.rows):
            raise ConfigError(f"method.align.rows={a.rows}: the run's alignment pairs hold {len(pairs)} rows")
        rows = [{"prompt": p["prompt"], "answer": p["refusal"]} for p in pairs[: int(a.rows)]]
        metrics = _align_from(init, rows, optim, a.lora, m, tmp, alignment, data)
        return {"train": metrics, "rows": len(rows), "init": init.path, "method_stats": alignment.stats}

    art = store.build("align", slice_, {"init": init.key, **data.upstream}, build, collective=True)
    return ModelRef(art.key, str(art.path / "model"), init.prompt_format, str(art.path / "model"))


def defended_alignment(store: Store, cfg: DictConfig, base: ModelRef | None, aligned: ModelRef,
                       data: RunData) -> ModelRef | None:
    """The aligned model of an alignment-stage defence (Vaccine), or None for other methods. The toy world trains
    its aligned model again from the base with the defence's step (model.align_train); a hub or imported model is
    aligned further from ``aligned`` by :func:`defence_align_stage` (method.align)."""
    if build_method(cfg.method).alignment_method() is None:
        return None
    if cfg.model.kind == "toy":
        return align_stage(store, cfg.model, base, data.artifact, cfg.method)
    return defence_align_stage(store, cfg, aligned, data)


def check_models(cfg: DictConfig, hub: bool = True) -> None:
    """Every model the run loads by name (model.aligned, model.base, guard.model) stops the run here when it cannot
    load, naming the key and what to do: a local folder must hold a model, a hub id must be cached or reachable with
    access (pact.run.hub; ``hub=False``: local folders only). An imported model's source is checked by its import
    stage."""
    check_named_models(cfg, resolve_hub=hub)


def check_data(cfg: DictConfig) -> dict[str, dict[str, Any]] | None:
    """With real data, every source file the run reads must exist and match MANIFEST.json (pact.data.sources):
    checked before any stage runs or any model loads; returns their manifest entries (None for the toy world)."""
    if cfg.data.kind == "real":
        return check_sources(cfg.data, needed_sources(cfg))
    return None


def check_sizes(cfg: DictConfig, data: RunData) -> None:
    """finetune.n and poison.ratio against the rows the real data holds (the toy world's pool is checked by
    pact.run.config.validate)."""
    if data.kind != "real":
        return
    sizes = data_sizes(data.artifact)
    ratio = float(cfg.poison.ratio)
    n, count = finetune_counts(cfg, sizes)
    pool, mixture = poison_pool(cfg), mixture_source(cfg)
    if count > sizes[pool]:
        where = (f"the official file {mixture} holds {sizes[pool]} (at most finetune.n={int(sizes[pool] / ratio)} "
                 "keeps p exact)" if mixture else
                 f"{pool} holds {sizes[pool]} after removing the evaluation benchmarks' prompts "
                 "(data.poison.eval_overlap=drop; =keep leaves them, as the official mixtures do)"
                 if poison_overlap(cfg) == "drop" else f"{pool} holds {sizes[pool]}")
        raise ConfigError(f"poison.ratio={ratio:g} with finetune.n={n} needs {count} poison rows; {where}")
    if n - count > sizes[task_file(cfg)]:
        raise ConfigError(f"finetune.n={n} with poison.ratio={ratio:g} needs {n - count} task rows; "
                          f"{mixture or cfg.task.train} has {sizes[task_file(cfg)]}")
    if cfg.model.kind != "toy" and build_method(cfg.method).alignment_method() is not None:
        rows = int(cfg.method.align.rows)
        if rows > sizes["alignment_pairs"]:
            raise ConfigError(f"method.align.rows={rows}: data.alignment_pairs ({cfg.data.alignment_pairs.source}) "
                              f"holds {sizes['alignment_pairs']} rows")


def model_refs(store: Store, cfg: DictConfig, data: RunData) -> tuple[ModelRef | None, ModelRef]:
    """(base, aligned) for the configured model: trained here on the toy world (toy) or named on the hub/disk
    (hub; their local paths are checked by :func:`start` before any work)."""
    m = cfg.model
    if m.kind == "toy":
        base = base_stage(store, m, data.artifact)
        return base, align_stage(store, m, base, data.artifact)
    if m.kind == "import":  # the imported instruct model is the base; the aligned model is trained here
        imp = import_stage(store, m)
        base = ModelRef(imp.key, str(imp.path / "model"), "chat", str(imp.path / "model"))
        return base, imported_align_stage(store, cfg, base, data)
    aligned = ModelRef(stable_key({"hub": m.aligned, "dtype": m.dtype}), m.aligned, "chat", m.aligned)
    # The base model answers in the plain format with its own tokenizer, so that its rows stop on its own end token
    # (Llama-3.1-8B ends text with <|end_of_text|>, never with the instruct model's <|eot_id|>: with the instruct
    # tokenizer every base row ran to the full budget). The safety-token passes read both with the aligned tokenizer.
    base = (ModelRef(stable_key({"hub": m.base, "dtype": m.dtype, "tokenizer": m.base}), m.base, "plain", m.base)
            if m.base else None)
    return base, aligned


# ---- generate and evaluate --------------------------------------------------------------------------------
def generate_stage(store: Store, cfg: DictConfig, ref: ModelRef, data: RunData) -> Artifact:
    """Greedy generations on held-out harmful prompts, benign look-alikes and the task's test set (real data:
    on each configured benchmark)."""
    evaluation = plain(cfg.eval)
    if not evaluation.get("chat_as_text"):  # the default: absent from the key, as before the switch existed
        evaluation.pop("chat_as_text", None)
    dtype = evaluation.pop("dtype", None) or cfg.model.dtype  # in the key as "dtype" below, as before eval.dtype
    slice_ = {"eval": evaluation, "engine": engine_slice(cfg.engine),
              "task": {"name": cfg.task.name, "max_new_tokens": cfg.task.max_new_tokens},  # its rows: data's key
              "prompt_format": ref.prompt_format, "dtype": dtype, "code": GENERATE_CODE}
    if data.kind != "toy":
        slice_["benchmarks"] = [*cfg.data.harmful_eval, *cfg.data.benign_eval]
    upstream = {"model": ref.key, **data.upstream}

    def build(tmp: Path) -> dict[str, Any]:
        tok = load_tokenizer(ref.tokenizer_path, cfg.model.trust_remote_code)
        model = None
        if cfg.engine.name == "hf":
            model = load_model(ref.path, dtype, cfg.model.trust_remote_code)
            if dtype != "float32" and model.device.type == "cpu":
                # a merged LoRA fine-tune loads frozen (peft), and for frozen weights PyTorch's matmul runs the LM head
                # on the last position's hidden states (a strided slice) as a batched product with the head copied
                # per row, which a CPU does in half precision: 2x the generation time and ~5 GB more at batch 100
                # (docs/reproducibility.md). Trainable, it is one mm, as for any model from_pretrained loads. The
                # answers are the same; no gradient is taken (the engines generate under no_grad).
                model.requires_grad_(True)
        engine = build_engine(cfg.engine, model, tok, Path(ref.path), dtype, int(cfg.seed),
                              cfg.model.trust_remote_code)
        limit = int(cfg.eval.limit) or None
        sets = [(es, D.read_jsonl(es.file, es.fields)[:limit]) for es in data.eval_sets(cfg)]
        as_text = bool(cfg.eval.get("chat_as_text", False))
        jobs = [([D.prompt_ids(tok, r["prompt"], ref.prompt_format, as_text) for r in rows], es.max_new_tokens,
                 f"generate {es.benchmark or es.kind}") for es, rows in sets]
        records = []
        for (es, rows), responses in zip(sets, engine.generate_sets(jobs)):
            named = {"benchmark": es.benchmark} if es.benchmark else {}
            records += [{"set": es.kind, **named, **{k: r[k] for k in es.fields}, "response": resp}
                        for r, resp in zip(rows, responses)]
        D.write_jsonl(tmp / "generations.jsonl", records)
        return {"n": len(records)}

    return store.build("generate", slice_, upstream, build)


def evaluate_stage(store: Store, cfg: DictConfig, ref: ModelRef, data: RunData) -> Artifact:
    """Judge the cached generations and compute the metrics: the artifact holds ``metrics.json`` and the judged
    ``generations.jsonl`` (each harmful/benign row with every judge's verdict, each task row parsed and
    scored); :func:`load_metrics` reads the former."""
    gen = generate_stage(store, cfg, ref, data)
    judges = list(cfg.data.judges)
    slice_ = {"judge": cfg.judge.name, "judges": judges, "task": cfg.task.name, "code": JUDGE_CODE}
    upstream = {"generate": gen.key}
    guard = None if cfg.guard.name == NO_GUARD else cfg.guard.name
    if guard:  # its verdicts come from its own stage (keyed by the guard and the generations), built first
        judged_by_guard = judge_stage(store, cfg.guard, gen)
        slice_["guard"] = guard
        upstream["judge"] = judged_by_guard.key
    # a guard judges harm, not refusal: with a guard as the primary judge, refusal rates stay with the data's own
    refusal_judge = cfg.data.primary_judge if cfg.judge.name == guard else cfg.judge.name

    def build(tmp: Path) -> dict[str, Any]:
        records = D.read_jsonl(gen.file("generations.jsonl"), ("set", "prompt", "response"))
        by_set: dict[str, list[dict[str, Any]]] = {"harmful": [], "benign": [], "task": []}
        for rec in records:
            by_set[rec["set"]].append(rec)
            if rec["set"] == "task":
                rec["parsed"], rec["correct"] = score_answer(cfg.task.name, rec["response"], rec["label"])
        judged = by_set["harmful"] + by_set["benign"]
        markers = judge_markers(data)
        verdicts = {j: judge_for(j, markers).judge(judged, [r["response"] for r in judged]) for j in judges}
        if guard:
            by_index = {j["index"]: j["verdict"] for j in load_judgments(judged_by_guard)}
            index = {id(rec): i for i, rec in enumerate(records)}
            verdicts[guard] = [by_index[index[id(rec)]] for rec in judged]
        for i, rec in enumerate(judged):
            rec["verdicts"] = {j: v[i] for j, v in verdicts.items()}
        summary = summarize if data.kind == "toy" else summarize_benchmarks
        metrics = summary(by_set["harmful"], by_set["benign"], by_set["task"], cfg.judge.name, refusal_judge)
        D.write_jsonl(tmp / "generations.jsonl", records)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        return {"metrics": metrics}

    return store.build("evaluate", slice_, upstream, build)


def load_metrics(evaluation: Artifact) -> dict[str, Any]:
    """The metrics of an evaluate artifact."""
    return json.loads(evaluation.file("metrics.json").read_text())


def set_threads(cfg: DictConfig) -> None:
    if int(cfg.threads) > 0:
        torch.set_num_threads(int(cfg.threads))


# ---- start-up ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upstream:
    """What every entry point starts from: the store, the run's data (toy world or real sources) and the
    (base, aligned) models."""

    store: Store
    data: RunData
    base: ModelRef | None
    aligned: ModelRef | None

    @property
    def world(self) -> Artifact:
        """The toy world's artifact (what the toy model's base and align stages train on)."""
        if self.data.kind != "toy":
            raise ConfigError("this needs the toy world (data=toy); the run uses data=real")
        return self.data.artifact


def build_data(store: Store, cfg: DictConfig, entries: dict[str, dict[str, Any]] | None = None) -> RunData:
    """The run's data: the toy world's artifact, or the real sources' ``data`` stage (``entries``: what
    :func:`check_data` found), checked against the sizes the config asks for."""
    if cfg.data.kind == "toy":
        return ToyData(world_stage(store, cfg.world))
    data = RealData(data_stage(store, cfg, entries), store, cfg)
    check_sizes(cfg, data)
    return data


def start(cfg: DictConfig, models: bool = True) -> Upstream:
    """The start-up shared by every entry point and the tests, for a validated config: check the real data's files
    and the models it names (before any work; hub ids only with ``models``; read-only, so every torchrun rank
    checks), join torchrun's process group (no-op on one process), set torch's threads, open the store, build (or
    reuse) the data and, with ``models``, the base and aligned models."""
    entries = check_data(cfg)
    check_models(cfg, hub=models)  # after the data's local files: hub ids may need the network
    dist.init()
    set_threads(cfg)
    store = Store(cfg.store_dir)
    data = build_data(store, cfg, entries)
    base, aligned = model_refs(store, cfg, data) if models else (None, None)
    dist.release_memory()  # an alignment built here: its memory is not the next stage's
    return Upstream(store, data, base, aligned)

