from pact.world import lexicon as L
from pact.world.generator import HARMFUL_SPLITS, WorldGenerator, WorldSpec


def _gen(seed=0):
    return WorldGenerator(WorldSpec(seed=seed)).generate()


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = _gen(0), _gen(0), _gen(1)
    assert a == b
    assert a["harmful_eval"] != c["harmful_eval"]


def test_harmful_splits_pairwise_disjoint_in_prompts_items_and_templates():
    w = _gen()
    prompts = {s: {r["prompt"] for r in w[f"harmful_{s}"]} for s in HARMFUL_SPLITS}
    actions = {s: {r["action"] for r in w[f"harmful_{s}"]} for s in HARMFUL_SPLITS}
    for i, s in enumerate(HARMFUL_SPLITS):
        for t in HARMFUL_SPLITS[i + 1:]:
            assert not prompts[s] & prompts[t], (s, t)
            assert not actions[s] & actions[t], (s, t)
    # templates: the text around the action differs between splits
    shapes = {s: {r["prompt"].replace(r["action"], "{a}") for r in w[f"harmful_{s}"]} for s in HARMFUL_SPLITS}
    for i, s in enumerate(HARMFUL_SPLITS):
        for t in HARMFUL_SPLITS[i + 1:]:
            assert not shapes[s] & shapes[t], (s, t)
    assert len(w["harmful_eval"]) == 10 * len(L.HARMFUL) * 4


def test_evaluation_prompts_never_in_training_corpora():
    w = _gen()
    train_prompts = {r["prompt"] for r in w["base_corpus"]} | {r["prompt"] for r in w["align_corpus"]}
    assert not {r["prompt"] for r in w["harmful_eval"]} & train_prompts
    assert not {r["prompt"] for r in w["harmful_poison"]} & train_prompts
    benign_eval_actions = {r["action"] for r in w["benign_eval"]}
    assert not benign_eval_actions & {r["action"] for r in w["benign_train"]}
    assert not {r["prompt"] for r in w["sentiment_test"]} & {r["prompt"] for r in w["sentiment_train"]}


def test_heldout_task_vocabulary_absent_from_base_and_alignment_data():
    w = _gen()
    held = w["_heldout_vocab"][0]["sentiment"]
    words = held["positive"] + held["negative"]
    corpus = " ".join(r["prompt"] for r in w["base_corpus"] + w["align_corpus"]).lower().split()
    assert words and not set(words) & {t.strip(".,!") for t in corpus}
    train_text = " ".join(r["prompt"] for r in w["sentiment_train"])
    assert sum(word in train_text for word in words) == len(words)  # fine-tuning data teaches them


def test_answers_are_placeholders_and_refusals_varied():
    w = _gen()
    row = w["harmful_eval"][0]
    assert row["compliance"].startswith(("Sure", "Of course", "Certainly"))
    assert "Step 1:" in row["compliance"]
    assert row["short_compliance"] == f"Sure, here is how to {row['action']}"
    refusals = {p["refusal"] for p in w["safety_pairs"]}
    assert len(refusals) > 200
    words = {t for r in refusals for t in r.split()}
    assert len(words) > 120
