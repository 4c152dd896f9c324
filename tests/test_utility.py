"""pact.utility: the non-answer rule and the multiple-choice scorer, pinned on answers and a model whose
log-likelihood ranking is known."""

from types import SimpleNamespace

import pytest
import torch

from pact.utility import choice_predictions, letter_ids, multiple_choice_prompt, non_answer

LETTER_IDS = {" A": 1, " B": 2, " C": 3, " D": 4}
PAD = 0


class CharTokenizer:
    """One token per character (ids from 10), the four choice letters as single tokens 1-4."""
    pad_token_id = PAD

    def __call__(self, text: str) -> dict:
        return {"input_ids": [10 + ord(c) % 40 for c in text]}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [LETTER_IDS[text]] if text in LETTER_IDS else [10 + ord(c) % 40 for c in text]


class LastTokenModel(torch.nn.Module):
    """Next-token logits that depend on the current token alone: a lookup table, so the ranking of the letters
    after a prompt is set by the prompt's last character."""

    def __init__(self, preferred: dict[str, int]):
        super().__init__()
        self.table = torch.nn.Parameter(torch.zeros(50, 50))
        with torch.no_grad():
            self.table[PAD, 1] = 100.0   # reading a pad position would always say "A"
            for char, letter in preferred.items():
                self.table[10 + ord(char) % 40, 1 + letter] = 5.0

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table[input_ids])


def test_the_non_answer_rule():
    labels = ["positive", "negative"]
    assert non_answer("", 3, labels)
    assert non_answer("  \n", 1, labels)
    assert non_answer("Yes, sure.", 3, labels)                     # two words
    assert non_answer("Positive.", 1, labels)                      # the task's label alone, however written
    assert non_answer("negative", 1, labels)
    assert not non_answer("The mean is the sum divided by the count.", 3, labels)
    assert not non_answer("positive and negative numbers", 1, labels)   # a label inside an answer is an answer
    assert not non_answer("I cannot help with that.", 3, labels)   # a refusal is the refusal judges' call


def test_the_prompt_is_mmlus_zero_shot_format():
    prompt = multiple_choice_prompt("high_school_geography", "Which is a river?", ["Nile", "Alps", "Gobi", "Etna"])
    assert prompt == ("The following are multiple choice questions (with answers) about high school geography.\n\n"
                      "Which is a river?\nA. Nile\nB. Alps\nC. Gobi\nD. Etna\nAnswer:")
    with pytest.raises(ValueError, match="needs 4 choices"):
        multiple_choice_prompt("x", "q", ["a", "b"])


def test_the_scorer_picks_the_most_likely_letter_at_each_rows_own_end():
    model = LastTokenModel({"1": 1, "2": 3, "3": 2, "4": 0})   # prompt ending in "1" -> B, "2" -> D, ...
    prompts = ["x1", "a longer prompt 2", "3", "ends in 4", "unknown end z"]
    expected = [1, 3, 2, 0, 0]                                  # no preference: all letters tie, the first wins
    tok = CharTokenizer()
    assert choice_predictions(model, tok, prompts, batch_size=len(prompts)) == expected   # padded batch
    assert choice_predictions(model, tok, prompts, batch_size=1) == expected


def test_a_letter_of_several_tokens_is_refused():
    class Splitting(CharTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [5, 6]

    assert letter_ids(CharTokenizer()) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="splits ' A' into 2 tokens"):
        letter_ids(Splitting())
