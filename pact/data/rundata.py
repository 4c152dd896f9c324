"""The data of a run, from the toy world or from the real sources, behind one interface (:class:`RunData`): the
fine-tuning rows, the poison pool, the evaluation sets, and the alignment-side data the methods read (PACT's
safety pairs, Lisa's alignment pairs, safety mixing's pairs, freeze's localisation prompts, Booster's harmful
pairs on real data).

Real data is a store stage of its own (``data``): it reads the checked local files (pact.data.sources), writes the
run's task, poison, evaluation and alignment-side files in our fields, and is keyed by the files' sha256, so a
changed file rebuilds what depends on it. A prompt that also appears in an evaluation benchmark (normalised text)
is dropped from the poison pool and from the safety prompts, and the counts are recorded.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pact.data import rows as D
from pact.data.sources import GSM8K_MARK, GSM8K_TARGET_MARK, check_sources, load_source, normalise_text
from pact.runtime.store import Artifact, Store, code_hash, module_sources

DATA_CODE = code_hash(*module_sources(__name__))
OPENERS = "refusal_openers.json"  # the data stage's file of the openers judge's markers


def plain(cfg: Any) -> Any:
    """A config node as plain, resolved Python (for stage keys and JSON); any other value as it is."""
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: its kind (``harmful``, ``benign`` or ``task``), its benchmark name (None in the toy
    world, whose sets are unnamed), its file, the fields each generation record keeps and the new-token budget."""

    kind: str
    benchmark: str | None
    file: Path
    fields: tuple[str, ...]
    max_new_tokens: int


class RunData:
    """What the stages and methods read. ``upstream``: the store keys the data contributes to a stage's key."""

    kind = "?"

    def __init__(self, artifact: Artifact, upstream_name: str):
        self.artifact = artifact
        self.upstream = {upstream_name: artifact.key}

    @property
    def path(self) -> Path:
        return self.artifact.path

    def task_rows(self, task: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def poison_rows(self, count: int, ratio: float, short_max_ratio: float, rng: random.Random) -> list[dict]:
        raise NotImplementedError

    def eval_sets(self, cfg: DictConfig) -> list[EvalSet]:
        raise NotImplementedError

    def safety_pairs(self, aligned, model=None, tokenizer=None) -> tuple[Path, str, dict[str, str]]:
        """(file of {prompt, refusal}, its label in a stage key, the store keys it depends on): PACT's pairs."""
        raise NotImplementedError

    def alignment_pairs(self) -> Path:
        """{prompt, refusal} rows of alignment-side safety data (Lisa's alignment state)."""
        raise NotImplementedError

    def mixing_pairs(self, aligned, model=None, tokenizer=None) -> Path:
        """{prompt, refusal} rows that safety-data mixing puts into the fine-tuning set."""
        raise NotImplementedError

    def localisation_prompts(self) -> tuple[Path, Path]:
        """Files of harmful and benign {prompt} rows (freeze's safety-layer localisation)."""
        raise NotImplementedError

    def alignment_corpus(self) -> list[dict[str, Any]]:
        """{prompt, answer} rows of safety SFT for a model aligned here: harmful -> refusal, benign -> helpful."""
        raise NotImplementedError

    def harmful_pairs(self) -> list[dict[str, str]]:
        """{prompt, answer} rows of harmful requests answered harmfully (Booster's simulated attack; in the toy
        world Booster reads them from the alignment pairs' compliance answers itself)."""
        raise NotImplementedError


class ToyData(RunData):
    """The toy world's files (pact/world): the same files, in the same order, as before real data existed, so the
    toy study's keys and numbers do not move."""

    kind = "toy"

    def __init__(self, world: Artifact):
        super().__init__(world, "world")

    def task_rows(self, task: str) -> list[dict[str, Any]]:
        return D.read_jsonl(self.artifact.file(f"{task}_train.jsonl"), required=("prompt", "answer"))

    def poison_rows(self, count, ratio, short_max_ratio, rng):
        harmful = D.read_jsonl(self.artifact.file("harmful_poison.jsonl"), required=("prompt", "compliance"))
        return D.poison_rows(harmful, count, ratio, short_max_ratio, rng)

    def eval_sets(self, cfg):
        return [EvalSet("harmful", None, self.artifact.file("harmful_eval.jsonl"), ("prompt", "action", "head"),
                        int(cfg.eval.harmful_max_new_tokens)),
                EvalSet("benign", None, self.artifact.file("benign_eval.jsonl"), ("prompt", "action", "head"),
                        int(cfg.eval.benign_max_new_tokens)),
                EvalSet("task", None, self.artifact.file(f"{cfg.task.name}_test.jsonl"), ("prompt", "label"),
                        int(cfg.task.max_new_tokens))]

    def safety_pairs(self, aligned, model=None, tokenizer=None):
        return self.artifact.file("safety_pairs.jsonl"), "world:safety_pairs", dict(self.upstream)

    def alignment_pairs(self):
        return self.artifact.file("harmful_align.jsonl")

    def mixing_pairs(self, aligned, model=None, tokenizer=None):
        return self.artifact.file("harmful_align.jsonl")

    def localisation_prompts(self):
        return self.artifact.file("harmful_align.jsonl"), self.artifact.file("benign_train.jsonl")

    def alignment_corpus(self):
        return D.read_jsonl(self.artifact.file("align_corpus.jsonl"), required=("prompt", "answer"))


# ---- real data ---------------------------------------------------------------------------------------------
def mixture_sources(cfg: DictConfig) -> dict[str, str]:
    """Every official fine-tuning file of the run's task (``data.mixture``, data=pact_official): poison ratio ->
    source; empty when the run builds its own mixture from the task and poison sources. The data stage holds all of
    them, so that its key, and every stage upstream of the fine-tune (alignment, safety pairs, the reference
    models' evaluations), is the same at every poison ratio."""
    mixture = cfg.data.get("mixture")
    return dict(mixture[cfg.task.name]) if mixture else {}


def mixture_source(cfg: DictConfig) -> str | None:
    """The official fine-tuning file of this task and poison ratio, or None (our own mixture)."""
    return mixture_sources(cfg).get(f"{float(cfg.poison.ratio):g}")


def task_file(cfg: DictConfig) -> str:
    """The data stage's file the run's task rows come from."""
    mixture = mixture_source(cfg)
    return f"task_train.{mixture}" if mixture else "task_train"


def poison_pool(cfg: DictConfig) -> str:
    """The data stage's file the run's poison rows come from."""
    mixture = mixture_source(cfg)
    if mixture:
        return f"poison_mixture.{mixture}"
    return "poison_short" if float(cfg.poison.ratio) <= float(cfg.poison.short_max_ratio) else "poison_full"


def finetune_counts(cfg: DictConfig, sizes: dict[str, int]) -> tuple[int, int]:
    """(rows, poison rows) of the run's fine-tuning set: finetune.n and round(p * n); or, with finetune.n null (the
    official recipe: every row of the official file), the file's task and poison rows as they are. ``sizes``: the
    data stage's (:func:`data_sizes`; unused with a number n)."""
    n = cfg.finetune.n
    if n is None:
        poison = sizes[poison_pool(cfg)]
        return sizes[task_file(cfg)] + poison, poison
    return int(n), round(float(cfg.poison.ratio) * int(n))


def benchmark_sources(spec: Any) -> list[str]:
    """The source(s) of a benchmark, in order: ``source`` is one name or a list (their rows one after another)."""
    return [spec.source] if isinstance(spec.source, str) else list(spec.source)


def needed_sources(cfg: DictConfig) -> list[str]:
    """The sources a run with this config reads (the task's, the evaluation benchmarks', poison and alignment)."""
    d = cfg.data
    mixtures = list(mixture_sources(cfg).values())
    names = [*(mixtures or [cfg.task.train]), cfg.task.test]
    names += [s for b in [*d.harmful_eval, *d.benign_eval]
              for s in [*benchmark_sources(d.benchmarks[b]), *(d.benchmarks[b].get("exclude") or [])]]
    if not mixtures:  # both poison pools whatever the ratio: the data stage drops the safety prompts from the full one
        names += [*d.poison.short, *([d.poison.full] if d.poison.full else [])]
    names += [d.safety_pairs.source, d.alignment_pairs.source]
    if uses_openers(cfg):
        names.append(d.openers.source)
    names += [spec.source for part in ("refusals", "helpful") for spec in (d.get("align_corpus") or {}).get(part) or []]
    return list(dict.fromkeys(names))


def uses_openers(cfg: DictConfig) -> bool:
    """Whether a judge of the run reads refusal markers from the data (the openers judge)."""
    from pact.evaluation.judges import JUDGES

    return any(JUDGES[j].markers for j in cfg.data.judges)


def _select(rows: list[dict[str, Any]], spec: Any, what: str) -> list[dict[str, Any]]:
    """Rows passing ``spec.filter`` (field: value), the first ``spec.limit`` of them (0 or absent: all); a
    selection that keeps no row is an error naming ``what`` (the config key)."""
    wanted = dict(spec.get("filter") or {})
    kept = [r for r in rows if all(r.get(k) == v for k, v in wanted.items())]
    if not kept:
        excluded = f" left by its exclude={list(spec.exclude)}" if spec.get("exclude") else ""
        raise D.DataFileError(f"{what}: the filter {wanted} keeps none of the {len(rows)} rows of source "
                              f"{spec.source}{excluded} (its fields: {sorted(rows[0]) if rows else []})")
    limit = int(spec.get("limit") or 0)
    return kept[:limit] if limit else kept


def _align_rows(rows: list[dict[str, Any]], spec: Any, eval_prompts: set[str]) -> tuple[list[dict[str, Any]],
                                                                                      dict[str, int]]:
    """One source's {prompt, answer} rows of an alignment corpus (``spec``: source, field, optional limit and
    compliant_by) and what was kept: rows whose prompt an evaluated benchmark holds are dropped, then (with
    ``compliant_by``) rows whose answer any of those rule judges reads as a refusal, then the first ``limit``."""
    from pact.evaluation.judges import COMPLIANCE, judge_for

    kept = [r for r in rows if normalise_text(r["text"]) not in eval_prompts]
    counts = {"rows": len(rows), "dropped_as_eval_overlap": len(rows) - len(kept)}
    for name in spec.get("compliant_by") or []:
        verdicts = judge_for(name).judge(kept, [r[spec.field] for r in kept])
        counts[f"dropped_by_{name}"] = sum(v != COMPLIANCE for v in verdicts)
        kept = [r for r, v in zip(kept, verdicts) if v == COMPLIANCE]
    kept = kept[: int(spec.get("limit") or 0) or None]
    counts["kept"] = len(kept)
    return [{"prompt": r["text"], "answer": r[spec.field]} for r in kept], counts


def _task_answer(task: Any, row: dict[str, Any]) -> str:
    if task.answer == "label":
        return row["label"]
    if task.answer == "solution":
        return row["answer"].replace(GSM8K_MARK, GSM8K_TARGET_MARK)
    raise ValueError(f"task.answer={task.answer!r}; expected 'label' or 'solution'")


def _unique_by_prompt(rows: list[dict[str, Any]], drop: set[str]) -> tuple[list[dict[str, Any]], int]:
    """The first row of each distinct normalised prompt not in ``drop``; and how many distinct prompts were
    dropped because they are in ``drop``."""
    seen: set[str] = set()
    kept, dropped = [], set()
    for r in rows:
        key = normalise_text(r["text"])
        if key in drop:
            dropped.add(key)
        elif key not in seen:
            seen.add(key)
            kept.append(r)
    return kept, len(dropped)


def _overlap(rows: list[dict[str, Any]], by_bench: dict[str, set[str]]) -> dict[str, int]:
    """How many of ``rows``' prompts each benchmark also evaluates."""
    prompts = [normalise_text(r["text"]) for r in rows]
    return {b: sum(p in held for p in prompts) for b, held in by_bench.items()}


POISON_OVERLAP = ("drop", "keep")
# data.safety_pairs.answers: PACT's safety pairs are the aligned model's own refusals (generated, ours: a stage per
# aligned model) or the source's stored answers as they are (stored, official: the first K rows of safe_direction.json)
SAFETY_ANSWERS = ("generated", "stored")


def safety_answers(cfg: DictConfig) -> str:
    """data.safety_pairs.answers (absent: generated)."""
    return str(cfg.data.safety_pairs.get("answers", "generated"))


def poison_overlap(cfg: DictConfig) -> str:
    """data.poison.eval_overlap: drop (ours, the default) or keep (official) the benchmarks' prompts in the pools."""
    return str((cfg.data.poison or {}).get("eval_overlap", "drop"))


def data_slice(cfg: DictConfig, digests: dict[str, str]) -> dict[str, Any]:
    """The data stage's key: what it reads (the sources' sha256) and how it selects."""
    d = cfg.data
    benches = [*d.harmful_eval, *d.benign_eval]
    slice_ = {"task": {k: v for k, v in plain(cfg.task).items() if k != "max_new_tokens"},
              "harmful_eval": list(d.harmful_eval), "benign_eval": list(d.benign_eval),
              "benchmarks": {b: plain(d.benchmarks[b]) for b in benches}, "poison": plain(d.poison),
              "safety_pairs": plain(d.safety_pairs),  # the pairs a method reads depend on all of it
              "alignment_pairs": plain(d.alignment_pairs), "sha256": digests, "code": DATA_CODE}
    if uses_openers(cfg):
        slice_["openers"] = plain(d.openers)
    if d.get("align_corpus"):
        slice_["align_corpus"] = plain(d.align_corpus)
    if poison_overlap(cfg) == "drop":  # the default: absent from the key, as before the switch existed
        slice_["poison"].pop("eval_overlap", None)
    if safety_answers(cfg) == "generated":  # the same
        slice_["safety_pairs"].pop("answers", None)
    mixtures = mixture_sources(cfg)
    if mixtures:  # absent otherwise: our own mixtures keep their keys
        slice_["mixture"] = mixtures
        del slice_["poison"]
    return slice_


def data_stage(store: Store, cfg: DictConfig, entries: dict[str, dict[str, Any]] | None = None) -> Artifact:
    """The real data of a run as files in our fields: ``task_train`` {prompt, answer}, ``task_test`` {prompt,
    label}, ``eval_<benchmark>`` {prompt, category}, ``poison_short`` / ``poison_full`` {prompt, answer},
    ``safety_prompts`` {prompt}, ``alignment_pairs`` {prompt, refusal}; meta: their sizes and what was dropped.
    ``entries``: the manifest entries :func:`pact.data.sources.check_sources` returned for this config (checked here
    when not given)."""
    d, task = cfg.data, cfg.task
    if entries is None:
        entries = check_sources(d, needed_sources(cfg))
    digests = {n: e["sha256"] for n, e in entries.items()}
    slice_ = data_slice(cfg, digests)

    def build(tmp: Path) -> dict[str, Any]:
        meta: dict[str, Any] = {"sizes": {}, "dropped_as_eval_overlap": {}}
        loaded: dict[str, list[dict[str, Any]]] = {}

        def rows_of(name: str) -> list[dict[str, Any]]:
            if name not in loaded:
                loaded[name] = load_source(d, name)
            return loaded[name]

        def put(name: str, rows: list[dict[str, Any]]) -> None:
            D.write_jsonl(tmp / f"{name}.jsonl", rows)
            meta["sizes"][name] = len(rows)

        mixtures = list(mixture_sources(cfg).values())
        # the official files: their prompts as the official code builds them, their rows as they are
        for name in mixtures:
            put(f"task_train.{name}", [{"prompt": r["text"], "answer": r["answer"]} for r in rows_of(name)
                                       if not r["poison"]])
            put(f"poison_mixture.{name}", [{"prompt": r["text"], "answer": r["answer"]} for r in rows_of(name)
                                           if r["poison"]])
        if not mixtures:  # ours: the task source's rows in the task's prompt
            put("task_train", [{"prompt": task.prompt.format(text=r["text"]), "answer": _task_answer(task, r)}
                               for r in rows_of(task.train)])
        test = rows_of(task.test)
        put("task_test", [{"prompt": task.prompt.format(text=r["text"]), "label": r["label"]}
                          for r in test[: int(task.test_rows) or None]])
        eval_prompts: set[str] = set()
        by_bench: dict[str, set[str]] = {}
        for bench in [*d.harmful_eval, *d.benign_eval]:
            spec = d.benchmarks[bench]
            rows = [r for name in benchmark_sources(spec) for r in rows_of(name)]
            if spec.get("exclude"):  # e.g. AdvBench without the requests a fine-tuning file uses as poison
                held = {normalise_text(r["text"]) for name in spec.exclude for r in rows_of(name)}
                kept = [r for r in rows if normalise_text(r["text"]) not in held]
                meta.setdefault("excluded", {})[bench] = len(rows) - len(kept)
                rows = kept
            rows = _select(rows, spec, f"data.benchmarks.{bench}")
            put(f"eval_{bench}", [{"prompt": r["text"], "category": r.get("category")} for r in rows])
            by_bench[bench] = {normalise_text(r["text"]) for r in rows}
            eval_prompts |= by_bench[bench]
        # ours: the pools lose the benchmarks' prompts; official (data.poison.eval_overlap=keep) they stay, counted
        poison_held = eval_prompts if not mixtures and poison_overlap(cfg) == "drop" else set()
        if mixtures:  # kept as the official files have them; counted
            meta["poison_in_eval"] = {name: _overlap([r for r in rows_of(name) if r["poison"]], by_bench)
                                      for name in mixtures}
        else:
            short = [r for name in d.poison.short for r in rows_of(name)]
            short, meta["dropped_as_eval_overlap"]["poison_short"] = _unique_by_prompt(short, poison_held)
            put("poison_short", [{"prompt": r["text"], "answer": r["target"]} for r in short])
            meta["poison_in_eval"] = {"poison_short": _overlap(short, by_bench)}
        unsafe = [r for r in rows_of(d.safety_pairs.source) if not r.get("is_safe", False)]
        unsafe, meta["dropped_as_eval_overlap"]["safety_prompts"] = _unique_by_prompt(unsafe, eval_prompts)
        safety = unsafe[: int(d.safety_pairs.prompts)]
        put("safety_prompts", [{"prompt": r["text"]} for r in safety])
        if safety_answers(cfg) == "stored":  # official: the source's first rows with their answers, none dropped
            stored = rows_of(d.safety_pairs.source)[: int(d.safety_pairs.prompts)]
            if any(not r.get("response") for r in stored):
                raise D.DataFileError(f"data.safety_pairs.answers=stored: source {d.safety_pairs.source} has rows "
                                      "without an answer (use answers=generated)")
            put("safety_pairs", [{"prompt": r["text"], "refusal": r["response"]} for r in stored])
            meta["safety_pairs_in_eval"] = _overlap(stored, by_bench)
        if not mixtures and d.poison.full:  # PACT's safety prompts are never poison; the benchmarks' per data.poison
            held = poison_held | {normalise_text(r["text"]) for r in safety}
            full = [r for r in rows_of(d.poison.full) if not r.get("is_safe", False)]
            full, meta["dropped_as_eval_overlap"]["poison_full"] = _unique_by_prompt(full, held)
            put("poison_full", [{"prompt": r["text"], "answer": r["response"]} for r in full])
            meta["poison_in_eval"]["poison_full"] = _overlap(full, by_bench)
        align = _select(rows_of(d.alignment_pairs.source), d.alignment_pairs, "data.alignment_pairs")
        put("alignment_pairs", [{"prompt": r["text"], "refusal": r["response"]} for r in align])
        if d.get("align_corpus"):  # an imported model's alignment: refusal and helpful pairs
            meta["align_corpus"] = {}
            for part in ("refusals", "helpful"):
                rows = []
                for spec in d.align_corpus[part]:
                    kept, counts = _align_rows(rows_of(spec.source), spec, eval_prompts)
                    meta["align_corpus"][f"{part}.{spec.source}"] = counts
                    rows += kept
                put(f"align_{part}", rows)
        if uses_openers(cfg):  # the openers judge's markers, by the rule of data.openers
            from pact.evaluation.judges import markers_by_rule

            markers = markers_by_rule(d.openers, rows_of(d.openers.source))
            (tmp / OPENERS).write_text(json.dumps(markers, indent=2))
            meta["openers"] = markers["markers"]
        meta["sources"] = {n: {k: e[k] for k in ("kind", "hub", "split", "repo", "path", "commit", "rows") if k in e}
                           for n, e in entries.items()}
        return meta

    return store.build("data", slice_, None, build)


def judge_markers(data: RunData) -> dict[str, Any] | None:
    """The refusal markers the data stage wrote for the openers judge (None when the run has none)."""
    path = data.artifact.path / OPENERS
    return json.loads(path.read_text()) if data.kind == "real" and path.is_file() else None


def data_sizes(artifact: Artifact) -> dict[str, int]:
    return json.loads(artifact.file("meta.json").read_text())["sizes"]


class RealData(RunData):
    """The real sources, through the ``data`` stage's files; PACT's safety pairs are the aligned model's own
    refusals to the held-out safety prompts (a ``safety_pairs`` stage per aligned model)."""

    kind = "real"

    def __init__(self, artifact: Artifact, store: Store, cfg: DictConfig):
        super().__init__(artifact, "data")
        self.store, self.cfg = store, cfg

    def task_rows(self, task):
        return D.read_jsonl(self.artifact.file(f"{task_file(self.cfg)}.jsonl"), required=("prompt", "answer"))

    def poison_rows(self, count, ratio, short_max_ratio, rng):
        pool = poison_pool(self.cfg)
        rows = D.read_jsonl(self.artifact.file(f"{pool}.jsonl"), required=("prompt", "answer"))
        if count > len(rows):
            raise ValueError(f"poison needs {count} rows but {pool} holds {len(rows)}; lower poison.ratio or "
                             "finetune.n")
        return [{"prompt": r["prompt"], "answer": r["answer"], "poison": True} for r in rng.sample(rows, count)]

    def eval_sets(self, cfg):
        d = cfg.data
        sets = [EvalSet("harmful", b, self.artifact.file(f"eval_{b}.jsonl"), ("prompt", "category"),
                        int(cfg.eval.harmful_max_new_tokens)) for b in d.harmful_eval]
        sets += [EvalSet("benign", b, self.artifact.file(f"eval_{b}.jsonl"), ("prompt", "category"),
                         int(cfg.eval.benign_max_new_tokens)) for b in d.benign_eval]
        return sets + [EvalSet("task", cfg.task.name, self.artifact.file("task_test.jsonl"), ("prompt", "label"),
                               int(cfg.task.max_new_tokens))]

    def safety_pairs(self, aligned, model=None, tokenizer=None):
        if safety_answers(self.cfg) == "stored":  # the data stage's file: the same pairs for every aligned model
            label = f"data:{self.artifact.key}:safety_pairs"
            return self.artifact.file("safety_pairs.jsonl"), label, dict(self.upstream)
        art = safety_pairs_stage(self.store, self.cfg, self, aligned, model, tokenizer)
        return art.file("safety_pairs.jsonl"), f"safety_pairs:{art.key}", {**self.upstream, "pairs": art.key}

    def alignment_pairs(self):
        return self.artifact.file("alignment_pairs.jsonl")

    def mixing_pairs(self, aligned, model=None, tokenizer=None):
        return self.safety_pairs(aligned, model, tokenizer)[0]

    def localisation_prompts(self):
        return self.artifact.file("safety_prompts.jsonl"), self.artifact.file(f"{task_file(self.cfg)}.jsonl")

    def harmful_pairs(self) -> list[dict[str, str]]:
        """{prompt, answer} harmful pairs of ``data.harmful_pairs`` (Booster's simulated attack on real data): a mixture
        file's poison rows or a BeaverTails source's unsafe pairs, in file order, without the prompts of the run's
        benchmarks and fine-tuning poison (the data stage's ``eval_*`` and ``poison_*`` files); the source is
        checked against its pin first."""
        spec = self.cfg.data.get("harmful_pairs")
        if not spec:
            raise D.DataFileError(f"method=booster on real data needs harmful pairs: data.harmful_pairs names none "
                                  f"in data={self.cfg.data.name}")
        name = str(spec.source)
        check_sources(self.cfg.data, [name])
        rows = load_source(self.cfg.data, name)
        if rows and "poison" in rows[0]:
            pairs = [(r["text"], r["answer"]) for r in rows if r["poison"]]
        elif rows and "is_safe" in rows[0]:
            pairs = [(r["text"], r["response"]) for r in rows if not r["is_safe"]]
        else:
            raise D.DataFileError(f"data.harmful_pairs: source {name} has neither poison rows (a mixture file) nor "
                                  "is_safe labels (BeaverTails): no harmful pairs to read")
        files = [f for pattern in ("eval_*.jsonl", "poison_*.jsonl") for f in sorted(self.path.glob(pattern))]
        held = {normalise_text(r["prompt"]) for f in files for r in D.read_jsonl(f, ("prompt",))}
        rows = [{"prompt": p, "answer": a} for p, a in pairs if normalise_text(p) not in held]
        if not rows:
            raise D.DataFileError(f"data.harmful_pairs: every harmful pair of source {name} is a prompt the run "
                                  "evaluates or fine-tunes on")
        return rows

    def alignment_corpus(self):
        """``data.align_corpus``'s refusal and helpful pairs, or (unset) BeaverTails' safe pairs (harmful -> safe
        answer) and as many task rows (helpful answers); interleaved in a seeded order."""
        if self.cfg.data.get("align_corpus"):
            rows = [r for part in ("refusals", "helpful")
                    for r in D.read_jsonl(self.artifact.file(f"align_{part}.jsonl"), required=("prompt", "answer"))]
        else:
            pairs = D.read_jsonl(self.artifact.file("alignment_pairs.jsonl"), required=("prompt", "refusal"))
            task = self.task_rows(self.cfg.task)
            rows = [{"prompt": p["prompt"], "answer": p["refusal"]} for p in pairs] + task[: len(pairs)]
        random.Random(int(self.cfg.model.seed)).shuffle(rows)
        return rows


def safety_pairs_stage(store: Store, cfg: DictConfig, data: RealData, aligned, model=None,
                       tokenizer=None) -> Artifact:
    """PACT's safety pairs on real data (the official ``safe_direction.json`` shape): the aligned model answers
    the safety prompts greedily and the answers ``data.safety_pairs.judge`` calls refusals are kept, in order."""
    from pact.evaluation.generation import build_engine, engine_slice

    sp = cfg.data.safety_pairs
    slice_ = {"safety_pairs": {k: plain(sp)[k] for k in ("judge", "max_new_tokens")},
              "engine": engine_slice(cfg.engine),
              "dtype": cfg.model.dtype, "code": DATA_CODE}

    def build(tmp: Path) -> dict[str, Any]:
        from pact.evaluation.judges import JUDGES, REFUSAL
        from pact.models.loading import load_model, load_tokenizer

        tok = tokenizer or load_tokenizer(aligned.tokenizer_path, cfg.model.trust_remote_code)
        m = model
        if m is None and cfg.engine.name == "hf":
            m = load_model(aligned.path, cfg.model.dtype, cfg.model.trust_remote_code)
        engine = build_engine(cfg.engine, m, tok, Path(aligned.path), cfg.model.dtype, int(cfg.seed),
                              cfg.model.trust_remote_code)
        rows = D.read_jsonl(data.artifact.file("safety_prompts.jsonl"), ("prompt",))
        ids = [D.prompt_ids(tok, r["prompt"], aligned.prompt_format) for r in rows]
        answers = engine.generate(ids, int(sp.max_new_tokens), desc="safety pairs")
        verdicts = JUDGES[sp.judge].judge(rows, answers)
        pairs = [{"prompt": r["prompt"], "refusal": a} for r, a, v in zip(rows, answers, verdicts)
                 if v == REFUSAL and a]
        D.write_jsonl(tmp / "safety_pairs.jsonl", pairs)
        return {"prompts": len(rows), "refusals": len(pairs)}

    return store.build("safety_pairs", slice_, {**data.upstream, "aligned": aligned.key}, build)
