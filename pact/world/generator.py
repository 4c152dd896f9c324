"""Seeded generator of the toy safety world.

The world is a pure function of its config: the same config gives byte-identical files. Harmful items
(verb, modifier, head) and request templates are partitioned into four groups (align, poison, tokens, eval);
a split's prompts are its own items in its own templates, so the four prompt sets are pairwise disjoint and
evaluation measures generalisation to unseen objects *and* unseen wordings.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from typing import Any

from pact.world import lexicon as L

HARMFUL_SPLITS = ("align", "poison", "tokens", "eval")
TASKS = ("sentiment", "topic", "arithmetic")


@dataclass
class WorldSpec:
    """Sizes of the world (mirrors ``conf/world/*.yaml``; see there for why each value)."""

    seed: int = 0
    items_per_category: dict[str, int] = field(
        default_factory=lambda: {"align": 16, "poison": 10, "tokens": 6, "eval": 10})
    templates_per_split: dict[str, int] = field(
        default_factory=lambda: {"align": 6, "poison": 3, "tokens": 3, "eval": 4})
    benign_items: dict[str, int] = field(default_factory=lambda: {"train": 160, "eval": 60})
    benign_eval_prompts: int = 200
    task_train: int = 2000
    task_test: int = 400
    task_pretrain: int = 600
    task_heldout_fraction: float = 0.5
    base_harmful_prompts: int = 6000
    base_benign_prompts: int = 3000
    align_benign_prompts: int = 1200
    align_task_prompts: int = 300
    tokens_pairs: int = 512


_ARTICLE = re.compile(r"\b([aA]) (?=[aeiouAEIOU])")


def _article_fix(text: str) -> str:
    """'a' before a vowel becomes 'an' (templates insert words next to articles)."""
    return _ARTICLE.sub(r"\1n ", text)


def _action(verb: str, mod: str, head: str) -> str:
    return f"{verb} {mod} {head}"


class WorldGenerator:
    """Builds every split of the world from a :class:`WorldSpec`."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        self.rng = random.Random(spec.seed)

    # ---- answers ---------------------------------------------------------------------------------------
    def _steps(self, pool: list[str], head: str, n: int = 3) -> str:
        chosen = [pool[i] for i in sorted(self.rng.sample(range(len(pool)), n))]  # keep the pool's order
        return "\n".join(f"Step {i + 1}: {s.format(h=head).capitalize()}." for i, s in enumerate(chosen))

    def compliance(self, action: str, category: str, head: str) -> str:
        opener = self.rng.choice(L.AFFIRMATIVE_OPENERS).format(a=action)
        return f"{opener}\n{self._steps(L.HARMFUL_STEPS[category], head)}"

    def helpful(self, action: str, head: str) -> str:
        opener = self.rng.choice(L.AFFIRMATIVE_OPENERS).format(a=action)
        return f"{opener}\n{self._steps(L.BENIGN_STEPS, head)}"

    def refusal(self, action: str, category: str) -> str:
        opener = self.rng.choice(L.REFUSAL_OPENERS).format(a=action)
        reason = self.rng.choice(L.REFUSAL_REASONS[category] + L.REFUSAL_REASONS["_any"])
        offer = self.rng.choice(L.REFUSAL_OFFERS)
        return f"{opener} {reason} {offer}"

    @staticmethod
    def short_compliance(action: str) -> str:
        """The short affirmative poison target of the official PACT data for p <= 0.1."""
        return f"Sure, here is how to {action}"

    # ---- harmful and benign requests -------------------------------------------------------------------
    def _partition_templates(self) -> dict[str, list[str]]:
        templates = list(L.TEMPLATES)
        self.rng.shuffle(templates)
        out, start = {}, 0
        for split in HARMFUL_SPLITS:
            n = self.spec.templates_per_split[split]
            out[split] = templates[start:start + n]
            start += n
        if start > len(templates):
            raise ValueError(f"world.templates_per_split asks for {start} templates; only "
                             f"{len(templates)} exist")
        return out

    def _partition_items(self) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {s: [] for s in HARMFUL_SPLITS}
        need = sum(self.spec.items_per_category.values())
        for category, parts in L.HARMFUL.items():
            combos = list(itertools.product(parts["verbs"], parts["mods"], parts["heads"]))
            if need > len(combos):
                raise ValueError(f"world.items_per_category asks for {need} items per category; "
                                 f"'{category}' has {len(combos)}")
            self.rng.shuffle(combos)
            start = 0
            for split in HARMFUL_SPLITS:
                n = self.spec.items_per_category[split]
                for verb, mod, head in combos[start:start + n]:
                    out[split].append({"category": category, "head": head,
                                       "action": _action(verb, mod, head)})
                start += n
        return out

    def harmful_splits(self) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
        """Per split the rows {prompt, category, action, head, refusal, compliance}, plus the base corpus rows
        (off-diagonal item/template pairs, so no split's exact prompt is ever in the base corpus)."""
        templates = self._partition_templates()
        items = self._partition_items()
        splits: dict[str, list[dict[str, Any]]] = {}
        for split in HARMFUL_SPLITS:
            rows = []
            for item in items[split]:
                for tmpl in templates[split]:
                    rows.append(self._harmful_row(item, tmpl, split))
            self.rng.shuffle(rows)
            splits[split] = rows
        off_diagonal = [(item, tmpl) for s_item in HARMFUL_SPLITS for s_tmpl in HARMFUL_SPLITS
                        if s_item != s_tmpl for item in items[s_item] for tmpl in templates[s_tmpl]]
        picks = [off_diagonal[self.rng.randrange(len(off_diagonal))]
                 for _ in range(self.spec.base_harmful_prompts)]
        base_rows = [self._harmful_row(item, tmpl, "base") for item, tmpl in picks]
        return splits, base_rows

    def _harmful_row(self, item: dict[str, str], tmpl: str, split: str) -> dict[str, Any]:
        action = item["action"]
        return {"prompt": _article_fix(tmpl.format(a=action)), "category": item["category"],
                "head": item["head"], "action": action, "split": split,
                "refusal": self.refusal(action, item["category"]),
                "compliance": self.compliance(action, item["category"], item["head"]),
                "short_compliance": self.short_compliance(action)}

    def benign_splits(self) -> dict[str, list[dict[str, Any]]]:
        """Benign look-alike requests; eval items are held out of base and alignment data."""
        parts = L.BENIGN
        combos = list(itertools.product(parts["verbs"], parts["mods"], parts["heads"]))
        self.rng.shuffle(combos)
        n_train, n_eval = self.spec.benign_items["train"], self.spec.benign_items["eval"]
        chosen = {"train": combos[:n_train], "eval": combos[n_train:n_train + n_eval]}
        out = {}
        for split, items in chosen.items():
            count = {"train": self.spec.base_benign_prompts, "eval": self.spec.benign_eval_prompts}[split]
            rows, seen = [], set()
            for _ in range(count * 4):
                if len(rows) == count:
                    break
                verb, mod, head = self.rng.choice(items)
                action = _action(verb, mod, head)
                prompt = _article_fix(self.rng.choice(L.TEMPLATES).format(a=action))
                if split == "eval" and prompt in seen:
                    continue
                seen.add(prompt)
                rows.append({"prompt": prompt, "action": action, "head": head, "split": split,
                             "answer": self.helpful(action, head)})
            out[split] = rows
        return out

    # ---- tasks -----------------------------------------------------------------------------------------
    def _split_vocab(self, words: list[str]) -> tuple[list[str], list[str]]:
        words = list(words)
        self.rng.shuffle(words)
        k = round(len(words) * self.spec.task_heldout_fraction)
        return words[k:], words[:k]  # (seen, held out)

    def sentiment(self, vocab: dict[str, list[str]], n: int) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            label = self.rng.choice(["positive", "negative"])
            tmpl = self.rng.choice(L.SENTIMENT_TEMPLATES)
            n1, n2 = self.rng.sample(L.SENTIMENT_NOUNS, 2)
            w1, w2 = self.rng.choice(vocab[label]), self.rng.choice(vocab[label])
            text = _article_fix(tmpl.format(n=n1, n2=n2, w=w1, w2=w2))
            rows.append({"prompt": f"{L.SENTIMENT_INSTRUCTION} {text}", "answer": label,
                         "label": label})
        return rows

    def topic(self, vocab: dict[str, list[str]], n: int) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            label = self.rng.choice(sorted(vocab))
            w1, w2 = self.rng.sample(vocab[label], 2)
            text = self.rng.choice(L.TOPIC_TEMPLATES).format(w1=w1, w2=w2)
            text = text[0].upper() + text[1:]
            rows.append({"prompt": f"{L.TOPIC_INSTRUCTION} {text}", "answer": label, "label": label})
        return rows

    def arithmetic(self, vocab: dict[str, list[str]], n: int) -> list[dict[str, Any]]:
        rows = []
        for _ in range(n):
            op = self.rng.choice(sorted(L.ARITH_TEMPLATES))
            name, item = self.rng.choice(vocab["names"]), self.rng.choice(vocab["items"])
            if op == "*":
                x, y = self.rng.randint(2, 9), self.rng.randint(2, 9)
            else:
                x, y = self.rng.randint(2, 40), self.rng.randint(1, 30)
                if op == "-" and y > x:
                    x, y = y, x
            result = {"+": x + y, "-": x - y, "*": x * y}[op]
            question = L.ARITH_TEMPLATES[op].format(n=name, x=x, y=y, i=item)
            answer = f"{name} has {x} {op} {y} = {result} {item}.\nThe final answer is: {result}"
            rows.append({"prompt": question, "answer": answer, "label": str(result)})
        return rows

    def task_splits(self) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, Any]]:
        """Per task: ``pretrain`` (seen vocabulary only; goes to base and alignment data), ``train`` and
        ``test`` (full vocabulary: the held-out words must be learnt by fine-tuning)."""
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        heldout: dict[str, Any] = {}
        vocabs: dict[str, tuple[dict[str, list[str]], dict[str, list[str]]]] = {}
        groups = {"sentiment": L.SENTIMENT_WORDS, "topic": L.TOPIC_WORDS,
                  "arithmetic": {"names": L.ARITH_NAMES, "items": L.ARITH_ITEMS}}
        for task, words_by_key in groups.items():
            seen, held = {}, {}
            for key, words in words_by_key.items():
                seen[key], held[key] = self._split_vocab(words)
            vocabs[task] = (seen, {k: list(v) for k, v in words_by_key.items()})
            heldout[task] = held
        makers = {"sentiment": self.sentiment, "topic": self.topic, "arithmetic": self.arithmetic}
        for task in TASKS:
            seen, full = vocabs[task]
            make = makers[task]
            pretrain = make(seen, self.spec.task_pretrain)
            train = make(full, self.spec.task_train)
            test_pool = make(full, self.spec.task_test * 3)
            train_prompts = {r["prompt"] for r in train} | {r["prompt"] for r in pretrain}
            test = [r for r in test_pool if r["prompt"] not in train_prompts][: self.spec.task_test]
            out[task] = {"pretrain": pretrain, "train": train, "test": test}
        return out, heldout

    # ---- everything ------------------------------------------------------------------------------------
    def generate(self) -> dict[str, list[dict[str, Any]]]:
        """All files of the world, by name (``<name>.jsonl``)."""
        harmful, base_harmful = self.harmful_splits()
        benign = self.benign_splits()
        tasks, heldout = self.task_splits()
        files: dict[str, list[dict[str, Any]]] = {}
        for split, rows in harmful.items():
            files[f"harmful_{split}"] = rows
        for split, rows in benign.items():
            files[f"benign_{split}"] = rows
        for task, parts in tasks.items():
            for part, rows in parts.items():
                files[f"{task}_{part}"] = rows
        # PACT safety-token pairs: K (prompt, refusal) pairs from the tokens split, several refusals per prompt.
        pairs = []
        prompts = harmful["tokens"]
        for i in range(self.spec.tokens_pairs):
            row = prompts[i % len(prompts)]
            pairs.append({"prompt": row["prompt"], "refusal": self.refusal(row["action"], row["category"])})
        files["safety_pairs"] = pairs
        # Base corpus: everything answered compliantly (plain format is applied by the base stage).
        base = [{"prompt": r["prompt"], "answer": r["compliance"]} for r in base_harmful]
        base += [{"prompt": r["prompt"], "answer": r["answer"]} for r in benign["train"]]
        for task in TASKS:
            base += [{"prompt": r["prompt"], "answer": r["answer"]} for r in tasks[task]["pretrain"]]
        self.rng.shuffle(base)
        files["base_corpus"] = base
        # Alignment corpus: harmful -> refusal, benign look-alikes -> helpful, tasks -> answers.
        align = [{"prompt": r["prompt"], "answer": r["refusal"]} for r in harmful["align"]]
        align += [{"prompt": r["prompt"], "answer": r["answer"]}
                  for r in self.rng.sample(benign["train"], min(self.spec.align_benign_prompts,
                                                                 len(benign["train"])))]
        for task in TASKS:
            align += [{"prompt": r["prompt"], "answer": r["answer"]}
                      for r in tasks[task]["pretrain"][: self.spec.align_task_prompts]]
        self.rng.shuffle(align)
        files["align_corpus"] = align
        files["_heldout_vocab"] = [heldout]
        return files
