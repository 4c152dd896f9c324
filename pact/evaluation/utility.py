"""Utility beyond the fine-tuning task: does a fine-tuned model stay a useful assistant? (``utility=assistant``)

Two measures of one model, stored as a ``utility`` artifact keyed by the model, the sources' bytes and the settings
(conf/utility/):

- **Ordinary instructions** (a source held out of every training set of the run, checked here): the model's greedy
  answers, each refusal judge's verdict, and a *non-answer* rule fixed before any model was scored
  (:func:`non_answer`): an answer shorter than ``min_words`` words (empty included), or one that is only a label
  of the fine-tuning task (SST-2's "positive" leaking into every answer). Only instructions whose reference answer
  has ``min_words`` words or more are asked, so that a short answer is never the right one.
- **Knowledge**: multiple-choice questions scored by the log-likelihood of each choice's text after
  ``Question: ...\\nAnswer:`` (:func:`choice_logliks`; the cloze form, lm-evaluation-harness' ``acc``): nothing is
  generated and no answer is parsed. A 135M model reads MMLU's lettered form as "always A"
  (conf/utility/assistant.yaml).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pact.data import rows as D
from pact.data.labels import answer_positions
from pact.data.rundata import RunData, judge_markers, plain
from pact.data.sources import check_sources, load_source, normalise_text
from pact.evaluation.generation import build_engine, engine_slice
from pact.evaluation.judges import ANY_JUDGE, REFUSAL, judge_for, markers_by_rule
from pact.evaluation.metrics import task_labels
from pact.models.loading import ModelRef, load_model, load_tokenizer
from pact.runtime.store import REPO_ROOT, Artifact, Store, code_hash, module_sources
from pact.training.methods import head_at

UTILITY_CODE = code_hash(*module_sources("pact.evaluation.utility"))
REAL_DATA = REPO_ROOT / "conf" / "data" / "real.yaml"


def _words(text: str) -> list[str]:
    """Lower-cased runs of letters or digits (punctuation alone is no word)."""
    return re.findall(r"[0-9a-z]+", text.lower())


def non_answer(response: str, min_words: int, labels: Sequence[str] = ()) -> bool:
    """Whether ``response`` leaves an ordinary instruction unanswered: fewer than ``min_words`` words (empty
    included), or nothing but one of ``labels`` (the fine-tuning task's label words, case and punctuation ignored)."""
    words = _words(response)
    return len(words) < min_words or words in [_words(label) for label in labels]


def cloze_context(question: str) -> str:
    """The context a choice's text continues: ``Question: <question>\\nAnswer:`` (the choice follows after a space)."""
    return f"Question: {question.strip()}\nAnswer:"


@torch.no_grad()
def choice_logliks(model: Any, tokenizer: Any, contexts: Sequence[str], choices: Sequence[Sequence[str]],
                   batch_size: int) -> list[list[float]]:
    """For each context, the summed log-probability of each choice's tokens (`` <choice>``) after it. A batch
    holds ``batch_size`` questions (all their choices), right-padded; the output layer runs only at the positions
    that predict a choice token (pact.training.methods.head_at), so no [rows, length, vocabulary] tensor is made."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    collate = D.SFTCollator(pad)
    device = next(model.parameters()).device
    out: list[list[float]] = []
    for start in range(0, len(contexts), batch_size):
        examples, shape = [], []
        for context, options in zip(contexts[start:start + batch_size], choices[start:start + batch_size]):
            prefix = tokenizer(context)["input_ids"]
            for option in options:
                cont = tokenizer(" " + option.strip(), add_special_tokens=False)["input_ids"]
                if not cont:
                    raise ValueError(f"choice {option!r} of {context!r} has no tokens")
                examples.append({"input_ids": prefix + cont, "labels": [D.IGNORE_INDEX] * len(prefix) + cont})
            shape.append(len(options))
        batch = collate(examples)
        labels = batch["labels"].to(device)
        pos, mask = answer_positions(labels)
        rows = torch.arange(labels.shape[0], device=device).unsqueeze(1).expand_as(pos)[mask]
        cols = pos[mask]
        with head_at(model, rows, cols):
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits
        token_lp = logits.float().log_softmax(-1).gather(1, labels[rows, cols + 1].unsqueeze(1)).squeeze(1)
        sums = torch.zeros(labels.shape[0], dtype=torch.float64, device=device).index_add_(0, rows,
                                                                                           token_lp.double())
        flat = sums.tolist()
        for n in shape:
            out.append(flat[:n])
            flat = flat[n:]
    return out


def sources_config(cfg: DictConfig) -> Any:
    """The real-data config that defines the utility sources: the run's own with ``data=real``, else
    conf/data/real.yaml (the toy world's studies read the same files, under ``data/real`` or $PACT_DATA)."""
    return cfg.data if cfg.data.kind == "real" else OmegaConf.load(REAL_DATA)


def refusal_markers(cfg: DictConfig, data: RunData) -> dict[str, Any] | None:
    """The openers judge's markers: the real data stage's (from data.openers' source), or for the toy world the
    openers of its alignment refusals by the same rule (conf/data/real.yaml ``openers``), the phrasing a model
    aligned on them learnt ("I have to say no to this.", which no keyword list has)."""
    if data.kind == "real":
        return judge_markers(data)
    pairs = D.read_jsonl(data.alignment_pairs(), required=("prompt", "refusal"))
    return markers_by_rule(sources_config(cfg).openers, [{"response": p["refusal"]} for p in pairs])


def training_prompts(data: RunData, task: str) -> set[str]:
    """The normalised prompts a model of the run was trained on here: the alignment corpus and the task's rows."""
    rows = [*data.alignment_corpus(), *data.task_rows(task)]
    return {normalise_text(r["prompt"]) for r in rows}


def utility_stage(store: Store, cfg: DictConfig, ref: ModelRef, data: RunData) -> Artifact:
    """The utility measures of the model ``ref`` (module docstring): ``utility.json`` (the metrics, percent),
    ``instructions.jsonl`` (each answer with its verdicts and non-answer flag) and ``knowledge.jsonl`` (each
    question's choice log-likelihoods and whether the best is right)."""
    u = cfg.utility
    dcfg = sources_config(cfg)
    names = [u.instructions.source, *u.knowledge.sources]
    entries = check_sources(dcfg, names)
    dtype = u.get("dtype") or cfg.eval.get("dtype") or cfg.model.dtype
    settings = {k: v for k, v in plain(u).items() if k not in ("name", "enabled", "dtype")}   # dtype: below
    slice_ = {"utility": settings, "sha256": {n: entries[n]["sha256"] for n in names},
              "engine": engine_slice(cfg.engine), "prompt_format": ref.prompt_format, "dtype": dtype,
              "task": cfg.task.name, "code": UTILITY_CODE}
    if data.kind != "real":   # the toy world's markers by the real data's rule (the data key has the rule there)
        slice_["openers"] = plain(dcfg.openers)
    upstream = {"model": ref.key, **data.upstream}   # the run's data: the held-out check and the openers' markers

    def build(tmp: Path) -> dict[str, Any]:
        ins, know = u.instructions, u.knowledge
        asked = [r for r in load_source(dcfg, ins.source) if len(_words(r.get("response", ""))) >= int(ins.min_words)]
        trained = training_prompts(data, cfg.task.name)
        held_out = [r for r in asked if normalise_text(r["text"]) not in trained]
        rows = held_out[: int(ins.limit) or None]
        tok = load_tokenizer(ref.tokenizer_path, cfg.model.trust_remote_code)
        hf = cfg.engine.name == "hf"
        model = _scoring_model(ref, dtype, cfg.model.trust_remote_code) if hf else None
        engine = build_engine(cfg.engine, model, tok, Path(ref.path), dtype, int(cfg.seed),
                              cfg.model.trust_remote_code)
        ids = [D.prompt_ids(tok, r["text"], ref.prompt_format) for r in rows]
        responses = engine.generate_sets([(ids, int(ins.max_new_tokens), "generate instructions")])[0]
        if model is None:   # vLLM generated in its own process; the choices are scored with HF's forward
            model = _scoring_model(ref, dtype, cfg.model.trust_remote_code)
        judged = [{"prompt": r["text"]} for r in rows]
        markers = refusal_markers(cfg, data)
        judges = [j for j in ins.judges if j != "openers" or markers]
        verdicts = {j: judge_for(j, markers).judge(judged, responses) for j in judges}
        labels = task_labels(cfg.task.name)
        answers = [{"prompt": r["text"], "response": resp, "verdicts": {j: v[i] for j, v in verdicts.items()},
                    "non_answer": non_answer(resp, int(ins.min_words), labels)}
                   for i, (r, resp) in enumerate(zip(rows, responses))]
        questions = []
        for name in know.sources:
            qs = load_source(dcfg, name)[: int(know.limit) or None]
            scores = choice_logliks(model, tok, [cloze_context(q["text"]) for q in qs], [q["choices"] for q in qs],
                                    int(know.batch_size))
            questions += [{"source": name, "question": q["text"], "label": q["label"], "logliks": s,
                           "correct": max(range(len(s)), key=s.__getitem__) == q["choice_index"]}
                          for q, s in zip(qs, scores)]
        metrics = utility_metrics(answers, questions, judges, u.primary_judge)
        D.write_jsonl(tmp / "instructions.jsonl", answers)
        D.write_jsonl(tmp / "knowledge.jsonl", questions)
        (tmp / "utility.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        return {"metrics": metrics, "asked": len(asked), "trained_on": len(asked) - len(held_out)}

    return store.build("utility", slice_, upstream, build)


def _scoring_model(ref: ModelRef, dtype: str, trust_remote_code: bool) -> Any:
    model = load_model(ref.path, dtype, trust_remote_code).eval()
    if dtype != "float32" and model.device.type == "cpu":
        model.requires_grad_(True)  # the LM head as one matmul on a CPU (pact.run.pipeline.generate_stage); no gradient
    return model


def utility_metrics(answers: Sequence[dict[str, Any]], questions: Sequence[dict[str, Any]], judges: Sequence[str],
                    primary: str) -> dict[str, Any]:
    """Percent: ``instruction_refusal_rate`` (the ``primary`` judge, or with ``any`` an answer some judge calls a
    refusal; ``.<judge>`` for each), ``non_answer_rate``,
    ``knowledge_accuracy`` (``.<source>`` for each), and the counts."""
    def pct(flags: list[bool]) -> float:
        return 100.0 * sum(flags) / len(flags) if flags else float("nan")

    out: dict[str, Any] = {"n_instructions": len(answers), "n_knowledge": len(questions),
                           "non_answer_rate": pct([a["non_answer"] for a in answers]),
                           "knowledge_accuracy": pct([q["correct"] for q in questions])}
    for j in judges:
        out[f"instruction_refusal_rate.{j}"] = pct([a["verdicts"][j] == REFUSAL for a in answers])
    if primary == ANY_JUDGE:
        out["instruction_refusal_rate"] = pct([any(a["verdicts"][j] == REFUSAL for j in judges) for a in answers])
    elif primary in judges:
        out["instruction_refusal_rate"] = out[f"instruction_refusal_rate.{primary}"]
    for source in dict.fromkeys(q["source"] for q in questions):
        out[f"knowledge_accuracy.{source}"] = pct([q["correct"] for q in questions if q["source"] == source])
    return out


def load_utility(artifact: Artifact) -> dict[str, Any]:
    """The metrics of a utility artifact."""
    return json.loads(artifact.file("utility.json").read_text())
