"""Utility beyond the fine-tuning task: does a fine-tuned model stay a useful assistant?

Two measures, both of a model alone (no judge model):

- **Ordinary instructions** answered or not: besides the refusal judges (pact.judges), a *non-answer* rule fixed
  before any model is scored (:func:`non_answer`): an empty answer, one shorter than ``min_words`` words, or one
  that is only a label of the fine-tuning task (SST-2's "positive" leaking into every answer).
- **Knowledge**, multiple choice scored by log-likelihood (:func:`choice_predictions`): the prompt ends in
  "Answer:" and the model's next-token log-probabilities of the choice letters decide, so nothing is generated
  and no answer parser is involved. The prompt is MMLU's own zero-shot format (Hendrycks et al. 2021,
  github.com/hendrycks/test evaluate.py: a subject line, the question, lettered choices, "Answer:"), scored as
  lm-evaluation-harness scores MMLU's letter variant (the log-likelihood of " A" ... " D" after the prompt).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from pact.data import SFTCollator

LETTERS = ("A", "B", "C", "D")


def _words(text: str) -> list[str]:
    """Lower-cased runs of letters or digits (punctuation alone is no word)."""
    return re.findall(r"[0-9a-z]+", text.lower())


def non_answer(response: str, min_words: int, labels: Sequence[str] = ()) -> bool:
    """Whether ``response`` leaves an ordinary instruction unanswered: empty, fewer than ``min_words`` words, or
    nothing but one of ``labels`` (the fine-tuning task's label words, case and punctuation ignored)."""
    words = _words(response)
    return len(words) < min_words or words in [_words(label) for label in labels]


def multiple_choice_prompt(subject: str, question: str, choices: Sequence[str]) -> str:
    """MMLU's zero-shot prompt for one question (evaluate.py's format_subject / format_example, k = 0)."""
    if len(choices) != len(LETTERS):
        raise ValueError(f"a multiple-choice question needs {len(LETTERS)} choices, got {len(choices)}: {question!r}")
    head = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    body = question + "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return head + body + "\nAnswer:"


def letter_ids(tokenizer: Any) -> list[int]:
    """The token ids of " A" ... " D" (the letter after "Answer:"); each must be a single token."""
    ids = []
    for letter in LETTERS:
        tokens = tokenizer.encode(f" {letter}", add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"the tokenizer splits {' ' + letter!r} into {len(tokens)} tokens; the letter scorer "
                             f"needs one token per choice")
        ids.append(tokens[0])
    return ids


@torch.no_grad()
def choice_predictions(model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int) -> list[int]:
    """The index of the most likely choice letter after each prompt (ties: the first letter). Rows are right-padded
    and read at their own last token, so a row's prediction does not depend on its batch-mates' lengths beyond
    the arithmetic of padded attention."""
    choices = torch.tensor(letter_ids(tokenizer))
    collate = SFTCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    device = next(model.parameters()).device
    out: list[int] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p)["input_ids"] for p in prompts[start:start + batch_size]]
        batch = collate([{"input_ids": ids, "labels": ids} for ids in encoded])   # labels unused: right padding
        mask = batch["attention_mask"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask).logits
        last = logits[torch.arange(len(encoded), device=device), mask.sum(1) - 1]
        out += last[:, choices.to(device)].float().argmax(-1).tolist()
    return out
