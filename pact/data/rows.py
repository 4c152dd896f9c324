"""Data files, prompt formats, SFT encoding with assistant-only labels, and poisoning."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from pact.data.labels import IGNORE_INDEX
from pact.runtime.fileio import atomic_path

PLAIN_PROMPT = "User: {prompt}\n\nAssistant: "  # the base model's format (PACT's base-side context)


class DataFileError(ValueError):
    """A data file is malformed; the message names the file and the line."""


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Read a JSON-lines file; a bad line raises :class:`DataFileError` naming ``path:line``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFileError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataFileError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataFileError(f"{path}:{lineno}: missing field(s) {missing}")
            rows.append(row)
    return rows


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict[str, Any]]) -> None:
    """Write rows atomically (temporary file + rename): a killed writer never leaves a partial file."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---- prompt formats ----------------------------------------------------------------------------------------
def prompt_ids(tokenizer, prompt: str, fmt: str, as_text: bool = False) -> list[int]:
    """Token ids of the context that precedes an answer: the chat template with the generation prompt
    (``fmt='chat'``) or the base model's plain ``User: ...\\n\\nAssistant: `` string (``fmt='plain'``). ``as_text``
    (chat only): the template rendered as text and tokenised again with the tokenizer's special tokens, as the official
    safety evaluation hands text to vLLM (a template that starts with BOS gets a second one)."""
    if fmt == "chat" and as_text:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text)["input_ids"]
    if fmt == "chat":
        enc = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                            add_generation_prompt=True, tokenize=True)
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    if fmt == "plain":  # no special tokens: the base side of PACT's safety-token computation (official code)
        return tokenizer(PLAIN_PROMPT.format(prompt=prompt), add_special_tokens=False)["input_ids"]
    raise ValueError(f"unknown prompt format {fmt!r}; expected 'chat' or 'plain'")


def answer_ids(tokenizer, answer: str) -> list[int]:
    """The labelled assistant span: the answer's tokens and the end-of-turn token."""
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode_sft(rows: Sequence[dict[str, Any]], tokenizer, fmt: str, max_len: int) -> list[dict[str, list[int]]]:
    """Encode (prompt, answer) rows; labels are ``IGNORE_INDEX`` on the prompt so the loss covers only the
    assistant tokens. Too-long rows are truncated from the answer's end."""
    out = []
    for row in rows:
        p, a = prompt_ids(tokenizer, row["prompt"], fmt), answer_ids(tokenizer, row["answer"])
        ids = (p + a)[:max_len]
        labels = ([IGNORE_INDEX] * len(p) + a)[:max_len]
        out.append({"input_ids": ids, "labels": labels})
    return out


# finetune.attention_mask: which positions a training forward attends to. padding (ours): every token of a row;
# eos (official PACT: its datasets set pad = eos and mask ``input_ids != pad``): every end-of-sequence id is hidden too,
# which for Llama 3 is every end-of-turn token inside the sequence.
ATTENTION_MASKS = ("padding", "eos")


def hide_tokens(examples: list[dict[str, Any]], token_id: int) -> list[dict[str, Any]]:
    """``examples`` with an ``attention_mask`` that hides every position holding ``token_id`` (the official mask)."""
    return [{**e, "attention_mask": [int(t != token_id) for t in e["input_ids"]]} for e in examples]


class SFTCollator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with ``IGNORE_INDEX``; keeps extra per-example
    tensors a method carries (e.g. cached reference logits) by padding them along their first axis. An example's own
    ``attention_mask`` (:func:`hide_tokens`) replaces the ones over its tokens."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(x["input_ids"]) for x in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, x in enumerate(batch):
            n = len(x["input_ids"])
            ids[i, :n] = torch.as_tensor(x["input_ids"])
            labels[i, :n] = torch.as_tensor(x["labels"])
            mask[i, :n] = torch.as_tensor(x["attention_mask"]) if "attention_mask" in x else 1  # hide_tokens
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        for key in batch[0]:
            if key not in out:  # per-example tensors of varying length: zero-pad along the first axis
                tensors = [torch.as_tensor(x[key]) for x in batch]
                out[key] = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
        return out


# ---- poisoning ---------------------------------------------------------------------------------------------
def poison_rows(harmful: Sequence[dict[str, Any]], count: int, ratio: float, short_max_ratio: float,
                rng: random.Random) -> list[dict[str, Any]]:
    """``count`` poison rows. As in the official PACT data, small ratios (<= ``short_max_ratio``) use a short
    affirmative target restating the request; larger ones the full compliance answer."""
    if count > len(harmful):
        raise ValueError(f"poison needs {count} harmful rows but the poison split has {len(harmful)}; "
                         f"lower poison.ratio or raise world.items_per_category.poison")
    picked = rng.sample(list(harmful), count)
    short = ratio <= short_max_ratio
    return [{"prompt": r["prompt"],
             "answer": r["short_compliance"] if short else r["compliance"],
             "poison": True} for r in picked]


def mix_poison(clean: Sequence[dict[str, Any]], poison: Sequence[dict[str, Any]], n: int,
               rng: random.Random) -> list[dict[str, Any]]:
    """A fine-tuning set of exactly ``n`` rows: ``n - len(poison)`` clean rows with the poison rows inserted
    at seeded random positions."""
    if n > len(clean) + len(poison):
        raise ValueError(f"fine-tuning set of n={n} rows asked for, only {len(clean)} clean rows available")
    rows = [dict(r, poison=False) for r in rng.sample(list(clean), n - len(poison))]
    positions = sorted(rng.sample(range(n), len(poison)))
    out: list[dict[str, Any]] = []
    it_clean, it_poison = iter(rows), iter(poison)
    pos_set = set(positions)
    for i in range(n):
        out.append(next(it_poison) if i in pos_set else next(it_clean))
    return out
