import json
import random

import pytest

from pact.data import rows as D
from pact.world.tokenizer import train_tokenizer


@pytest.fixture(scope="module")
def tok():
    texts = ["User: hello there\n\nAssistant: Sure, here is how to bake bread", "I'm sorry, but I can't.",
             "Analyze the sentiment of the input positive negative"] * 20
    return train_tokenizer(texts, vocab_size=400)


def test_labels_cover_only_the_answer_and_its_end_of_turn(tok):
    for fmt in ("chat", "plain"):
        ex = D.encode_sft([{"prompt": "hello there", "answer": "Sure, bake bread"}], tok, fmt, 128)[0]
        p = D.prompt_ids(tok, "hello there", fmt)
        a = D.answer_ids(tok, "Sure, bake bread")
        assert ex["input_ids"] == p + a
        assert ex["labels"][: len(p)] == [D.IGNORE_INDEX] * len(p)
        assert ex["labels"][len(p):] == a
        assert a[-1] == tok.eos_token_id


def test_chat_prompt_ends_with_assistant_header_and_plain_with_assistant_colon(tok):
    chat = tok.decode(D.prompt_ids(tok, "hi", "chat"))
    assert chat.endswith("<|assistant|>\n")
    plain = tok.decode(D.prompt_ids(tok, "hi", "plain"))
    assert plain == "User: hi\n\nAssistant: "


def test_collator_pads_labels_with_ignore_index(tok):
    exs = D.encode_sft([{"prompt": "hi", "answer": "a"}, {"prompt": "hello there", "answer": "Sure bake"}],
                       tok, "chat", 64)
    batch = D.SFTCollator(tok.pad_token_id)(exs)
    short = min(range(2), key=lambda i: len(exs[i]["input_ids"]))
    n = len(exs[short]["input_ids"])
    assert (batch["labels"][short, n:] == D.IGNORE_INDEX).all()
    assert (batch["attention_mask"][short, n:] == 0).all()


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "a", "answer": "b"}) + "\n" + "{not json\n")
    with pytest.raises(D.DataFileError, match=r"rows\.jsonl:2: not valid JSON"):
        D.read_jsonl(path)
    path.write_text(json.dumps({"prompt": "a"}) + "\n")
    with pytest.raises(D.DataFileError, match=r"rows\.jsonl:1: missing field\(s\) \['answer'\]"):
        D.read_jsonl(path, required=("prompt", "answer"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        D.read_jsonl(tmp_path / "nope.jsonl")


def _harmful(n):
    return [{"prompt": f"h{i}", "compliance": f"Sure, steps {i}", "short_compliance": f"Sure, here is {i}"}
            for i in range(n)]


def test_poison_mix_keeps_n_rows_with_round_p_n_poison_rows():
    clean = [{"prompt": f"c{i}", "answer": "positive"} for i in range(500)]
    for p, n in ((0.0, 100), (0.05, 100), (0.1, 250), (0.2, 100)):
        rng = random.Random(0)
        poison = D.poison_rows(_harmful(60), round(p * n), p, 0.1, rng)
        rows = D.mix_poison(clean, poison, n, rng)
        assert len(rows) == n
        assert sum(r["poison"] for r in rows) == round(p * n)
    short = D.poison_rows(_harmful(10), 3, 0.1, 0.1, random.Random(0))
    full = D.poison_rows(_harmful(10), 3, 0.2, 0.1, random.Random(0))
    assert all(r["answer"].startswith("Sure, here is") for r in short)
    assert all(r["answer"].startswith("Sure, steps") for r in full)


def test_poison_positions_are_seeded():
    clean = [{"prompt": f"c{i}", "answer": "x"} for i in range(200)]

    def positions(seed):
        rng = random.Random(seed)
        rows = D.mix_poison(clean, D.poison_rows(_harmful(30), 10, 0.1, 0.1, rng), 100, rng)
        return [i for i, r in enumerate(rows) if r["poison"]]

    assert positions(0) == positions(0)
    assert positions(0) != positions(1)


def test_too_many_poison_rows_is_an_error():
    with pytest.raises(ValueError, match="poison split has 5"):
        D.poison_rows(_harmful(5), 10, 0.2, 0.1, random.Random(0))
