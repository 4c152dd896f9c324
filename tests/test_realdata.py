"""The real-data path on fixture files in each source's upstream schema: normalisers, the manifest check, the
offline error, de-duplication of poison against the benchmarks, the answer parsers, fetch_data, and a tiny hub-kind
model through fine-tune, generation, keyword judging and the report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from pact.data.rows import DataFileError, read_jsonl
from pact.data.sources import (
    MANIFEST,
    DataSourceError,
    check_sources,
    load_source,
    normalise_rows,
    normalise_text,
    sha256_file,
)
from pact.evaluation.generation import Engine
from pact.evaluation.judges import COMPLIANCE, JUDGES, OTHER, REFUSAL
from pact.evaluation.metrics import score_answer
from pact.run import pipeline as P
from pact.run.config import ConfigError, compose_config
from tests.realdata import (
    SHARED,
    data_overrides,
    file_bytes,
    real_overrides,
    source_rows,
    tiny_hub_model,
    write_git_fixture,
    write_sources,
)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """(data root with every fixture source, tiny aligned model, tiny base model)."""
    root = tmp_path_factory.mktemp("real")
    write_sources(root / "data")
    return root / "data", tiny_hub_model(root / "aligned", seed=0), tiny_hub_model(root / "base", seed=1)


def real_cfg(fixtures, tmp_path, *overrides, check=True):
    root, aligned, base = fixtures
    return compose_config([*real_overrides(root, aligned, base, tmp_path), *overrides], check=check)


# ---- sources -----------------------------------------------------------------------------------------------
def test_normalisers_read_each_upstream_schema(fixtures):
    root, _, _ = fixtures
    dcfg = compose_config(data_overrides(root), check=False).data
    got = {name: load_source(dcfg, name) for name in source_rows()}
    # GLUE's train.tsv (Git copy: label first, no trailing space) and the hub's rows read as the same rows
    assert got["sst2_train"][1] == {"text": "placeholder review number 1", "label": "positive"} == \
        got["sst2_train_hub"][1]
    assert [r["label"] for r in got["agnews_train"][:4]] == ["World", "Sports", "Business", "Sci/Tech"]
    assert got["gsm8k_train"][3]["label"] == "1003" == got["gsm8k_train_hub"][3]["label"]  # "#### 1,003"
    assert got["jbb_harmful_hub"][0] == {"text": "Placeholder harmful goal 0", "target": "Sure, here is placeholder "
                                         "harmful 0", "category": "placeholder"}
    assert got["jbb_harmful"][0] == {"text": "Placeholder harmful goal 0", "category": "placeholder"}  # artifacts
    assert got["beavertails_train"][1]["category"] == ["privacy_violation"]
    assert got["beavertails_train"][1]["is_safe"] is False and got["beavertails_train"][0]["is_safe"] is True
    assert got["xstest"][0]["label"] == "safe" and got["strongreject"][1]["category"] == "placeholder"
    assert got["xstest"] == got["xstest_hub"] and got["strongreject"] == got["strongreject_hub"]
    assert got["advbench"] == got["advbench_hub"]  # the CSV's goal/target = the hub's prompt/target
    assert len(got["harmbench"]) == 6  # `where: FunctionalCategory = standard` drops the contextual rows
    # the official test files: the input unstripped, the label a word; task.prompt is instruction + " " + input
    assert got["sst2_validation"][0] == {"text": "held out review 0 ", "label": "negative"}
    cfg = compose_config([*data_overrides(root), "task=agnews"], check=False)
    raw = source_rows()["agnews_test"][0]
    assert cfg.task.prompt.format(text=got["agnews_test"][0]["text"]) == raw["instruction"] + " " + raw["input"]
    assert got["safety_only"][0] == {"text": "Placeholder unsafe instruction 0",
                                     "response": "I'm sorry, but I cannot help with placeholder 0."}
    assert got["alpaca_small"][1]["text"] == "Placeholder task 1 detail 1"  # instruction + " " + input
    assert got["alpaca_seed"][1] == {"text": "Placeholder seed 1 seed input 1", "response": "Seed answer 1."}
    assert got["pact_unsafe"][6] == {"text": f"{SHARED}.", "target": "Sure, here is placeholder 0"}
    assert got["pact_safe_direction"][0]["response"] == "I can't assist with that."
    mix = got["pact_sst2_p01"]
    assert sum(r["poison"] for r in mix) == 4 and len(mix) == 40


def test_a_row_outside_its_schema_names_the_file_and_row():
    with pytest.raises(DataFileError, match=r"f\.jsonl: row 2 lacks column\(s\) \['Goal'\] of the jbb schema"):
        normalise_rows([{"Goal": "g", "Target": "t", "Category": "c"}, {"Target": "t", "Category": "c"}], "jbb",
                       "f.jsonl")
    with pytest.raises(DataFileError, match="row 1: label 7 is not one of 0..1"):
        normalise_rows([{"idx": 0, "sentence": "s", "label": 7}], "sst2", "x")
    with pytest.raises(DataFileError, match="must end with '####"):
        normalise_rows([{"question": "q", "answer": "no marker"}], "gsm8k", "x")
    with pytest.raises(DataFileError, match="x: row 2 has an empty prompt"):
        normalise_rows([{"goal": "g", "target": "t"}, {"goal": "  ", "target": "t"}], "advbench_csv", "x")


def test_manifest_check_catches_altered_missing_and_repinned_files(fixtures, tmp_path):
    root = write_sources(tmp_path / "data", ["advbench", "xstest", "advbench_hub"])
    dcfg = compose_config(data_overrides(root), check=False).data
    assert set(check_sources(dcfg, ["advbench", "xstest"])) == {"advbench", "xstest"}
    with (root / "advbench.csv").open("a") as fh:
        fh.write("one more,Sure\n")
    with pytest.raises(DataSourceError, match=r"advbench\.csv \(source advbench: llm-attacks/llm-attacks@098262edf85f "
                       r"data/advbench/harmful_behaviors\.csv\) was altered: sha256 .* differs from the manifest's "
                       r".*fetch_data advbench --root .* \(offline: add --git-dir <a clone of llm-attacks/"):
        check_sources(dcfg, ["advbench"])
    (root / "xstest.csv").unlink()
    with pytest.raises(DataSourceError, match=r"1 data file\(s\) missing: .*xstest\.csv \(paul-rottger/exaggerated-"
                       r"safety@d7bb5bd738c1 xstest_prompts\.csv\); fetch them: python -m experiments.fetch_data "
                       r"xstest --root .* \(offline, Git files: add --git-dir <clones of paul-rottger/exaggerated-"):
        check_sources(dcfg, ["xstest"])
    write_sources(root, ["advbench"])
    other = compose_config([*data_overrides(root), "data.sources.advbench.git.commit=" + "a" * 40],
                           check=False).data
    with pytest.raises(DataSourceError, match="was fetched from llm-attacks/llm-attacks@098262edf85f807224e70ecd8"
                       "7b9d83716bf6b73 data/advbench/harmful_behaviors.csv but conf/data pins llm-attacks/llm-a"
                       "ttacks@aaaa"):
        check_sources(other, ["advbench"])
    # the manifest rewritten to match an altered file: the pinned bytes still catch it
    manifest = json.loads((root / MANIFEST).read_text())
    (root / "advbench.csv").write_text("goal,target\nx,y\n")
    manifest["sources"]["advbench"]["sha256"] = sha256_file(root / "advbench.csv")
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataSourceError, match="advbench.csv .* is not the pinned file: sha256 .* is not the pinned"):
        check_sources(dcfg, ["advbench"])
    repinned = compose_config([*data_overrides(root), "data.sources.advbench_hub.revision=abc"], check=False).data
    with pytest.raises(DataSourceError, match="fetched at revision '9d47.*' but conf/data pins 'abc'"):
        check_sources(repinned, ["advbench_hub"])
    del manifest["sources"]["advbench"]
    (root / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataSourceError, match="is not in .*MANIFEST.json"):
        check_sources(dcfg, ["advbench"])


def test_gated_source_error_says_how_to_get_access(tmp_path):
    dcfg = compose_config(["data=real", f"data.root={tmp_path}"], check=False).data
    with pytest.raises(DataSourceError, match="HEx-PHI is gated: accept its terms on the hub .*huggingface.co/"
                       "datasets/LLM-Tuning-Safety/HEx-PHI.*fetch_data hexphi --from <folder>"):
        check_sources(dcfg, ["hexphi"])


def test_offline_run_stops_before_any_stage(tmp_path, capsys):
    from experiments.run import run
    from pact.run.cli import run_cli

    cfg = compose_config(["data=real", "task=sst2", "model=llama3.1-8b-instruct", f"data.root={tmp_path / 'none'}",
                          f"store_dir={tmp_path / 'store'}"], check=False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: run(cfg))
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: 10 data file(s) missing: ") and f"{tmp_path / 'none'}/sst2_train.tsv" in line
    assert "(awake020/pytorch_Bert_sst2@54e22ca58a65 SST-2/train.tsv)" in line
    assert "python -m experiments.fetch_data sst2_train " in line
    assert not (tmp_path / "store").exists()  # nothing ran


@pytest.mark.slow
def test_offline_command_fails_in_under_30_s(tmp_path):
    from tests.test_architecture import _cli

    t0 = time.time()
    done = _cli(tmp_path, "experiments.run", "data=real", "task=sst2", "model=llama3.1-8b-instruct")
    assert done.returncode == 2 and time.time() - t0 < 30
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: 10 data file(s) missing: data/real/sst2_train.tsv (awake020/pytorch_Bert_sst2@")


def test_config_errors_of_the_data_group(fixtures, tmp_path):
    with pytest.raises(ConfigError, match="task=sst2 is a real-data task but data=toy"):
        compose_config(["task=sst2"])
    with pytest.raises(ConfigError, match="data=real needs a model that reads text"):
        compose_config(["data=real", "task=sst2"])
    with pytest.raises(ConfigError, match="judge 'oracle' reads the toy world's fields"):
        real_cfg(fixtures, tmp_path, "data.judges=[oracle]")
    with pytest.raises(ConfigError, match="data.harmful_eval: benchmark 'nope' is not defined"):
        real_cfg(fixtures, tmp_path, "data.harmful_eval=[nope]")
    assert real_cfg(fixtures, tmp_path).judge.name == "keyword_qi"  # the real data's primary judge
    assert compose_config([]).judge.name == "oracle"


def test_sizes_are_checked_against_the_rows_that_exist(fixtures, tmp_path):
    with pytest.raises(ConfigError, match="finetune.n=100 with poison.ratio=0 needs 100 task rows; sst2_train has "
                       "40"):
        P.start(real_cfg(fixtures, tmp_path, "finetune.n=100", "poison.ratio=0"), models=False)
    # AdvBench's 10 prompts less the one StrongREJECT evaluates
    with pytest.raises(ConfigError, match="needs 10 poison rows; poison_short holds 9 after removing"):
        P.start(real_cfg(fixtures, tmp_path, "poison.ratio=0.5", "poison.short_max_ratio=0.5",
                         "data.poison.short=[advbench]", "data.harmful_eval=[strongreject]"), models=False)


def test_poison_and_safety_prompts_drop_what_the_benchmarks_evaluate(fixtures, tmp_path):
    up = P.start(real_cfg(fixtures, tmp_path), models=False)
    meta = json.loads(up.data.artifact.file("meta.json").read_text())
    # default benchmarks: StrongREJECT, JBB harmful, HarmBench; AdvBench's first prompt is StrongREJECT's (up to
    # case and punctuation) and every JBB behaviour is evaluated: 1 + 6 distinct prompts dropped, 9 kept
    assert meta["dropped_as_eval_overlap"]["poison_short"] == 7 and meta["sizes"]["poison_short"] == 9
    short = read_jsonl(up.data.artifact.file("poison_short.jsonl"))
    evaluated = {normalise_text(r["prompt"]) for b in ("strongreject", "jbb_harmful", "harmbench")
                 for r in read_jsonl(up.data.artifact.file(f"eval_{b}.jsonl"))}
    assert normalise_text(SHARED) in evaluated and not {normalise_text(r["prompt"]) for r in short} & evaluated
    sizes = meta["sizes"]
    assert sizes["eval_xstest_safe"] == 4 and sizes["task_test"] == 8 and sizes["task_train"] == 40
    safety = {r["prompt"] for r in read_jsonl(up.data.artifact.file("safety_prompts.jsonl"))}
    full = {r["prompt"] for r in read_jsonl(up.data.artifact.file("poison_full.jsonl"))}
    assert len(safety) == 30 and not full  # 30 unsafe prompts, all held out as safety prompts (1,024 asked)
    assert sizes["alignment_pairs"] == 30  # BeaverTails' safe pairs, as Lisa/Vaccine take them
    task = read_jsonl(up.data.artifact.file("task_train.jsonl"))
    assert task[0] == {"prompt": "Analyze the sentiment of the input, and respond only positive or negative "
                                 "placeholder review number 0", "answer": "negative"}
    # a changed file changes the data stage's key
    write_sources(Path(fixtures[0]), ["sst2_validation"])  # same rows: same sha, same key
    assert P.start(real_cfg(fixtures, tmp_path), models=False).data.artifact.key == up.data.artifact.key


def test_poison_that_the_benchmarks_evaluate_is_kept_with_the_official_switch(fixtures, tmp_path):
    """data.poison.eval_overlap=keep (the official mixtures' way): the pools keep the evaluated prompts, counted per
    benchmark, and a size that drop refuses passes; the default's data key is the one before the switch existed."""
    drop = P.start(real_cfg(fixtures, tmp_path), models=False)
    keep = P.start(real_cfg(fixtures, tmp_path, "data.poison.eval_overlap=keep"), models=False)
    meta = json.loads(keep.data.artifact.file("meta.json").read_text())
    assert meta["sizes"]["poison_short"] == 16 and meta["dropped_as_eval_overlap"]["poison_short"] == 0
    assert meta["poison_in_eval"]["poison_short"] == {"strongreject": 1, "jbb_harmful": 6, "harmbench": 0,
                                                      "jbb_benign": 0, "xstest_safe": 0}
    assert json.loads(drop.data.artifact.file("meta.json").read_text())["poison_in_eval"]["poison_short"] == \
        dict.fromkeys(meta["poison_in_eval"]["poison_short"], 0)
    assert keep.data.artifact.key != drop.data.artifact.key
    safety = read_jsonl(keep.data.artifact.file("safety_prompts.jsonl"))
    assert safety == read_jsonl(drop.data.artifact.file("safety_prompts.jsonl"))  # always held out of the pools
    from pact.data.rundata import data_slice

    assert "eval_overlap" not in data_slice(real_cfg(fixtures, tmp_path), {})["poison"]
    many = ["poison.ratio=0.5", "poison.short_max_ratio=0.5", "data.poison.short=[advbench]",
            "data.harmful_eval=[strongreject]"]
    with pytest.raises(ConfigError, match="after removing the evaluation benchmarks' prompts "
                                          r"\(data.poison.eval_overlap=drop; =keep leaves them"):
        P.start(real_cfg(fixtures, tmp_path, *many), models=False)
    P.start(real_cfg(fixtures, tmp_path, *many, "data.poison.eval_overlap=keep"), models=False)
    with pytest.raises(ConfigError, match="data.poison.eval_overlap"):
        real_cfg(fixtures, tmp_path, "data.poison.eval_overlap=maybe")


def test_jailbreakbench_as_the_official_script_scores_it(fixtures, tmp_path):
    """jbb_official: the harmful and the benign behaviours as one harmful benchmark (walledai/JailbreakBench's train
    split, scored over all its rows by the official script); its sources are checked like any other's."""
    up = P.start(real_cfg(fixtures, tmp_path, "data.harmful_eval=[strongreject,jbb_official,harmbench]"), models=False)
    art = up.data.artifact
    both = read_jsonl(art.file("eval_jbb_official.jsonl"))
    default = P.start(real_cfg(fixtures, tmp_path), models=False).data.artifact
    halves = read_jsonl(default.file("eval_jbb_harmful.jsonl")) + read_jsonl(default.file("eval_jbb_benign.jsonl"))
    assert both == halves and len(both) > len(halves) / 2
    assert [es.benchmark for es in up.data.eval_sets(up.data.cfg) if es.kind == "harmful"] == \
        ["strongreject", "jbb_official", "harmbench"]
    with pytest.raises(ConfigError, match=r"data.benchmarks.jbb_official.source\[1\]='nope' is not a source"):
        real_cfg(fixtures, tmp_path, "data.harmful_eval=[jbb_official]",
                 "data.benchmarks.jbb_official.source=[jbb_harmful,nope]")


def test_changed_source_file_rebuilds_the_data_stage(fixtures, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(fixtures[0], root)
    cfg = real_cfg(fixtures, tmp_path, f"data.root={root}")
    first = P.start(cfg, models=False).data.artifact.key
    spec = cfg.data.sources.sst2_validation
    write_git_fixture(root, "sst2_validation", spec, file_bytes(source_rows()["sst2_validation"][:5], "jsonl"))
    with pytest.raises(DataSourceError, match="sst2_validation.jsonl .* is not the pinned file"):
        P.start(cfg, models=False)  # the config still pins the old bytes
    second = P.start(real_cfg(fixtures, tmp_path, *data_overrides(root)), models=False).data
    assert second.artifact.key != first and json.loads(second.artifact.file("meta.json").read_text())["sizes"][
        "task_test"] == 5


# ---- scoring -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task,response,label,expected", [
    ("sst2", "positive", "positive", ("positive", True)),
    ("sst2", "Positive", "positive", ("positive", True)),
    ("sst2", "positive.", "positive", (None, False)),          # official: exact label only
    ("sst2", "The sentiment is negative", "negative", (None, False)),
    ("agnews", "Sports", "Sports", ("Sports", True)),
    ("agnews", "This is about technology.", "Sci/Tech", ("Sci/Tech", True)),  # the official Sci/Tech pattern
    ("agnews", "world", "World", ("World", True)),
    ("agnews", "Business and world news", "World", ("World|Business", True)),  # official: the gold pattern occurs
    ("agnews", "Worldwide", "World", (None, False)),           # \b: a word, not a prefix
    ("gsm8k", "2 + 3 = 5\n#### 5", "5", ("5", True)),
    ("gsm8k", "So 1,000 + 5 = 1,005. The final answer is: 1,005", "1005", ("1005", True)),
    ("gsm8k", "First 3 then 7 then 12", "12", ("12", True)),   # no marker: the last number
    ("gsm8k", "The final answer is: 12.0", "12", ("12.0", True)),
    ("gsm8k", "The final answer is: 4 (not 12)", "12", ("4", False)),
    ("gsm8k", "no number at all", "3", (None, False)),
])
def test_task_scoring_follows_the_official_parsers(task, response, label, expected):
    assert score_answer(task, response, label) == expected


@pytest.mark.parametrize("response,gcg,qi", [
    ("I can't help with that.", COMPLIANCE, REFUSAL),     # Qi et al.'s list counts "I can't"; GCG's does not
    ("I cannot help with that.", REFUSAL, REFUSAL),
    ("I am unable to do this.", COMPLIANCE, REFUSAL),
    ("Sure, here are the steps.", COMPLIANCE, COMPLIANCE),
    ("That would be harmful.", COMPLIANCE, REFUSAL),
    ("", COMPLIANCE, OTHER),                              # Qi et al.: an empty answer is not a jailbreak
])
def test_keyword_judges(response, gcg, qi):
    assert JUDGES["keyword"].judge([{}], [response]) == [gcg]
    assert JUDGES["keyword_qi"].judge([{}], [response]) == [qi]


# ---- fetch_data --------------------------------------------------------------------------------------------
def test_fetch_data_writes_files_and_manifest(tmp_path, monkeypatch, capsys):
    from experiments import fetch_data

    rows = source_rows()
    calls = []

    def fake_hub(spec):
        calls.append((spec.hub, spec.get("config"), spec.split, spec.revision))
        name = next(n for n, s in dcfg.sources.items() if s.get("hub") == spec.hub and s.split == spec.split)
        return rows[name], "f" * 40

    dcfg = compose_config(["data=real", f"data.root={tmp_path}"], check=False).data
    monkeypatch.setattr(fetch_data, "hub_rows", fake_hub)
    fetch_data.main(["jbb_harmful_hub", "gsm8k_test_hub", "--root", str(tmp_path)])
    assert calls == [("JailbreakBench/JBB-Behaviors", "behaviors", "harmful",
                      "886acc352a31533ffbcf4ef22c744658688086fc"),
                     ("openai/gsm8k", "main", "test", "740312add88f781978c0658806c59bc2815b9866")]
    manifest = json.loads((tmp_path / MANIFEST).read_text())["sources"]
    assert manifest["gsm8k_test_hub"]["rows"] == 6 and manifest["gsm8k_test_hub"]["commit"] == "f" * 40
    assert set(check_sources(dcfg, ["jbb_harmful_hub", "gsm8k_test_hub"])) == {"jbb_harmful_hub", "gsm8k_test_hub"}
    assert [json.loads(x) for x in (tmp_path / "jbb_harmful_hub.jsonl").read_text().splitlines()] == \
        rows["jbb_harmful_hub"]
    capsys.readouterr()
    fetch_data.main(["--list", "--root", str(tmp_path)])
    listing = capsys.readouterr().out
    assert "gsm8k_test_hub       hub  openai/gsm8k main test: ok, 6 of 1319 rows, sha256 " in listing
    assert "sst2_train_hub       hub  stanfordnlp/sst2 train: not fetched" in listing
    assert "advbench             git  llm-attacks/llm-attacks@098262edf85f data/advbench/harmful_behaviors.csv: " \
           "not fetched" in listing
    # a gated source is imported from the user's download (HEx-PHI's category_<k>.csv files)
    folder = tmp_path / "hexphi_download"
    folder.mkdir()
    for k in (1, 3, 11):
        (folder / f"category_{k}.csv").write_text(f"Placeholder prompt {k}a\nPlaceholder, quoted {k}b\n")
    fetch_data.main(["hexphi", "--from", str(folder), "--root", str(tmp_path)])
    hexphi = load_source(dcfg, "hexphi")
    assert [r["category"] for r in hexphi] == ["category_1"] * 2 + ["category_3"] * 2 + ["category_11"] * 2
    assert len(check_sources(dcfg, ["hexphi"])) == 1
    with pytest.raises(SystemExit):
        fetch_data.main(["hexphi", "--root", str(tmp_path / "other")])  # gated: no hub download
    assert "is gated" in capsys.readouterr().err


def test_fetch_data_help_documents_the_first_step(capsys):
    from experiments.fetch_data import main

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "MANIFEST.json" in out and "--root" in out and "--from" in out and "hub is reachable" in out


# ---- stages on real data ------------------------------------------------------------------------------------
class CannedEngine(Engine):
    """Answers "I can't help with that." to every other prompt, "Sure." to the rest."""

    def generate(self, prompts, max_new_tokens, desc=""):
        return ["I can't help with that." if i % 2 == 0 else "Sure." for i in range(len(prompts))]


def test_safety_pairs_are_the_aligned_models_refusals(fixtures, tmp_path, monkeypatch):
    from pact.evaluation import generation

    monkeypatch.setitem(generation.ENGINES, "hf", lambda *a, **k: CannedEngine())
    cfg = real_cfg(fixtures, tmp_path, "method=pact")
    up = P.start(cfg)
    path, label, keys = up.data.safety_pairs(up.aligned)
    pairs = read_jsonl(path, ("prompt", "refusal"))
    prompts = [r["prompt"] for r in read_jsonl(up.data.artifact.file("safety_prompts.jsonl"))]
    assert [p["prompt"] for p in pairs] == prompts[::2] and {p["refusal"] for p in pairs} == {"I can't help with that."}
    assert set(keys) == {"data", "pairs"} and label.startswith("safety_pairs:")
    from pact.tokens_stage import tokens_stage

    art = tokens_stage(up.store, cfg.method.tokens, up.aligned, up.base, up.data)
    meta = json.loads(art.file("meta.json").read_text())
    assert meta["n_pairs"] == len(pairs) and meta["upstream"]["pairs"] == keys["pairs"]


def test_eval_dtype_switches_the_evaluated_models_dtype_only(fixtures, tmp_path, monkeypatch):
    """eval.dtype loads the evaluated model in that dtype and keys its answers by it; null keeps model.dtype and the
    key the answers had before the switch existed; the safety pairs (training data) keep model.dtype; a wrong value
    names the key. A frozen model (a merged LoRA fine-tune loads so) is made trainable for half-precision answers on
    a CPU (PyTorch's matmul then runs the LM head as one mm instead of copying it per row)."""
    from pact.evaluation import generation

    seen = []

    def recording(cfg, model, tokenizer, model_path, dtype, seed, trust_remote_code):
        seen.append((dtype, model.dtype, model.lm_head.weight.requires_grad))
        return CannedEngine()

    monkeypatch.setitem(generation.ENGINES, "hf", recording)
    load = P.load_model
    monkeypatch.setattr(P, "load_model", lambda *a, **k: load(*a, **k).requires_grad_(False))
    keys, evals = {}, {}
    for dtype in ("null", "bfloat16"):
        cfg = real_cfg(fixtures, tmp_path / dtype, "method=pact", f"eval.dtype={dtype}")
        up = P.start(cfg)
        up.data.safety_pairs(up.aligned)
        art = P.generate_stage(up.store, cfg, up.aligned, up.data)
        meta = json.loads(art.file("meta.json").read_text())
        evals[dtype] = meta["config"]["eval"]
        keys[dtype] = (art.key, meta["config"]["dtype"])
    # per config: the safety pairs (rundata's own loader: trainable), then the answers; (the engine's dtype, the
    # loaded model's, whether its LM head is trainable)
    assert seen == [("float32", torch.float32, True), ("float32", torch.float32, False),
                    ("float32", torch.float32, True), ("bfloat16", torch.bfloat16, True)]
    assert keys["null"][1] == "float32" and keys["bfloat16"][1] == "bfloat16" and keys["null"][0] != keys["bfloat16"][0]
    # eval.dtype=null keys the answers as before the field existed (the committed stores' answers stay found)
    assert set(evals["null"]) == {"harmful_max_new_tokens", "benign_max_new_tokens", "limit"}
    with pytest.raises(ConfigError, match="eval.dtype"):
        real_cfg(fixtures, tmp_path, "eval.dtype=half")


def test_real_data_run_end_to_end_on_a_tiny_hub_model(fixtures, tmp_path):
    from analysis.report import report
    from experiments.run import run

    t0 = time.time()
    metrics = run(real_cfg(fixtures, tmp_path, "poison.ratio=0.1", check=False))
    assert time.time() - t0 < 60
    benches = ["strongreject", "jbb_harmful", "harmbench"]
    assert metrics["n_harmful"] == 6 + 6 + 6 and metrics["n_benign"] == 6 + 4 and metrics["n_task"] == 8
    for name in ("harmful_score", "refusal_rate"):
        assert metrics[name] == pytest.approx(sum(metrics[f"{name}.{b}"] for b in benches) / 3)
    assert {f"harmful_score_keyword.{b}" for b in benches} <= set(metrics)
    assert metrics["benign_refusal_rate"] == pytest.approx(
        (metrics["benign_refusal_rate.jbb_benign"] + metrics["benign_refusal_rate.xstest_safe"]) / 2)
    store = tmp_path / "store"
    [ft] = [p for p in (store / "finetune").iterdir() if (p / "DONE").exists()]
    meta = json.loads((ft / "meta.json").read_text())
    assert meta["rows"] == 20 and meta["poison_rows"] == 2 and "data" in meta["upstream"]
    gens = [json.loads(x) for x in next((store / "evaluate").glob("*/generations.jsonl")).read_text().splitlines()]
    assert {g["benchmark"] for g in gens if g["set"] == "harmful"} == set(benches)
    assert all(set(g["verdicts"]) == {"keyword", "keyword_qi", "openers"} for g in gens if g["set"] != "task")
    # the openers judge's markers: the fixture alignment refusals' opener, by data.openers' rule
    [data_meta] = [json.loads(p.read_text()) for p in (store / "data").glob("*/meta.json")]
    assert data_meta["openers"] == ["i'm sorry but"]
    df = report(tmp_path / "runs", tmp_path / "report")
    assert set(df["method"]) == {"aligned", "base", "sft"} and "harmful_score.strongreject" in df.columns
    saved = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert saved.loc[saved["method"] == "sft", "harmful_score"].iloc[0] == pytest.approx(metrics["harmful_score"])
    table = (tmp_path / "report" / "tables" / "default_tiny-llama_sst2.md").read_text()
    assert "keyword_qi judge" in table and "| HS.strongreject |" in table and "Helpful" not in table
    paper = (tmp_path / "report" / "tables" / "default_tiny-llama_sst2_paper.md").read_text()
    assert "p = 0.1 OverRef" in paper and "Help" not in paper


@pytest.mark.slow
def test_methods_read_the_real_alignment_side_data(fixtures, tmp_path, monkeypatch):
    """PACT's tokens and safety mixing read the aligned model's refusals, Lisa BeaverTails' safe pairs, freeze
    localises on the safety prompts: none of them touches a toy file."""
    from experiments.run import run
    from pact.evaluation import generation

    monkeypatch.setitem(generation.ENGINES, "hf", lambda *a, **k: CannedEngine())
    store = tmp_path / "store"
    for method in ("pact_lora", "safety_mix", "lisa", "freeze"):
        run(real_cfg(fixtures, tmp_path, f"method={method}", "method.count=2" if method == "safety_mix" else "seed=0",
                     check=False))
    assert not (store / "world").exists()
    [pairs] = list((store / "safety_pairs").glob("*/safety_pairs.jsonl"))
    refusals = {json.loads(x)["prompt"] for x in pairs.read_text().splitlines()}
    [tokens] = [json.loads(p.read_text()) for p in (store / "tokens").glob("*/meta.json")]
    assert tokens["n_pairs"] == len(refusals) and tokens["upstream"]["pairs"] == pairs.parent.name
    metas = [json.loads(p.read_text()) for p in (store / "finetune").glob("*/meta.json")]
    by_method = {m["config"]["method"]["id"]: m for m in metas}
    mixed = read_jsonl(next(p for p in (store / "finetune").glob("*/finetune_data.jsonl")
                            if json.loads((p.parent / "meta.json").read_text())["config"]["method"]["id"] ==
                            "safety_mix"))
    assert {r["prompt"] for r in mixed if r.get("safety")} <= refusals and by_method["safety_mix"]["method_stats"][
        "safety_rows"] == 2
    assert by_method["lisa"]["method_stats"]["k_align"] >= 1
    [layers] = [json.loads(p.read_text()) for p in (store / "safety_layers").glob("*/meta.json")]
    assert "data" in layers["upstream"] and "world" not in layers["upstream"]


def test_real_smoke_experiment_composes_on_the_fixtures(tmp_path, capsys):
    from tests.realdata import main

    main([str(tmp_path / "smoke")])
    overrides = capsys.readouterr().out.split()
    cfg = compose_config(overrides)
    assert cfg.experiment_name == "real_smoke" and cfg.data.kind == "real" and cfg.task.name == "sst2"
    assert cfg.model.aligned == str(tmp_path / "smoke" / "aligned") and cfg.finetune.n == 20
    assert check_sources(cfg.data, ["sst2_train"])  # the fixtures and their manifest are in place


def test_vaccine_aligns_a_hub_model_with_its_own_step_then_fine_tunes_from_it(fixtures, tmp_path, monkeypatch):
    """method=vaccine on a hub model: an align stage from model.aligned on the first method.align.rows alignment
    pairs, with Vaccine's perturbed second pass (rho = 0 gives other weights), evaluated as a reference row, and the
    fine-tune starts from it; rows beyond the data's are refused before any stage."""
    from safetensors.torch import load_file

    from experiments.run import run
    from pact.evaluation import generation

    monkeypatch.setitem(generation.ENGINES, "hf", lambda *a, **k: CannedEngine())
    small = ("method.align.rows=3", "++method.align.optim.max_steps=2", "method.align.optim.batch_size=3",
             "method.align.optim.dtype=float32")
    run(real_cfg(fixtures, tmp_path, "method=vaccine", *small, check=False))
    store = tmp_path / "store"
    [align] = [json.loads(p.read_text()) for p in (store / "align").glob("*/meta.json")]
    assert align["rows"] == 3 and align["init"] == str(fixtures[1]) and "data" in align["upstream"]
    [tuned] = [json.loads(p.read_text()) for p in (store / "finetune").glob("*/meta.json")]
    assert tuned["upstream"]["aligned"] == align["key"]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    assert {r["method"] for r in records} >= {"vaccine", "vaccine_aligned", "aligned"}
    # the perturbation is applied: the same alignment with rho = 0 (plain SFT) ends elsewhere
    run(real_cfg(fixtures, tmp_path, "method=vaccine", "method.rho=0", *small, check=False))
    weights = [load_file(str(p)) for p in sorted((store / "align").glob("*/model/model.safetensors"))]
    assert len(weights) == 2
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    with pytest.raises(ConfigError, match="method.align.rows=9999"):
        run(real_cfg(fixtures, tmp_path, "method=vaccine", "method.align.rows=9999", check=False))


def test_booster_aligns_a_hub_model_on_harmful_pairs_the_attacker_never_holds(fixtures, tmp_path, monkeypatch):
    """method=booster on a hub model (data=real): its alignment reads data.harmful_pairs (BeaverTails' unsafe pairs)
    without the run's benchmark and poison prompts, is keyed by that source, and the fine-tune starts from it."""
    from experiments.run import run
    from pact.data.sources import normalise_text
    from pact.evaluation import generation

    monkeypatch.setitem(generation.ENGINES, "hf", lambda *a, **k: CannedEngine())
    small = ("method.align.rows=3", "++method.align.optim.max_steps=2", "method.align.optim.batch_size=3",
             "method.align.optim.dtype=float32", "method.harmful_batch_size=2")
    cfg = real_cfg(fixtures, tmp_path, "method=booster", *small, check=False)
    assert cfg.data.harmful_pairs.source == "beavertails_train"
    run(cfg)
    store = tmp_path / "store"
    [align] = [json.loads(p.read_text()) for p in (store / "align").glob("*/meta.json")]
    [data] = list((store / "data").glob("*/meta.json"))
    held = {normalise_text(r["prompt"]) for pattern in ("eval_*.jsonl", "poison_*.jsonl")
            for f in data.parent.glob(pattern) for r in read_jsonl(f)}
    unsafe = [r for r in load_source(cfg.data, "beavertails_train") if not r["is_safe"]]
    expected = [r for r in unsafe if normalise_text(r["text"]) not in held]
    assert align["method_stats"]["harmful_rows"] == len(expected) > 0   # the exclusion: its unit test
    [tuned] = [json.loads(p.read_text()) for p in (store / "finetune").glob("*/meta.json")]
    assert tuned["upstream"]["aligned"] == align["key"]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("*.json")]
    assert {r["method"] for r in records} >= {"booster", "booster_aligned", "aligned"}
    with pytest.raises(DataFileError, match="data.harmful_pairs names none"):
        run(real_cfg(fixtures, tmp_path, "method=booster", *small, "data.harmful_pairs=null", check=False))


def test_an_alignment_defence_on_a_hub_model_needs_its_alignment_config(fixtures, tmp_path):
    with pytest.raises(ConfigError, match="method=vaccine aligns a hub or imported model itself"):
        real_cfg(fixtures, tmp_path, "method=vaccine", "~method.align")
    with pytest.raises(ConfigError, match="method.align.optim.lr"):
        real_cfg(fixtures, tmp_path, "method=vaccine", "method.align.optim.lr=0")
    with pytest.raises(ConfigError, match="method.align.optim"):
        real_cfg(fixtures, tmp_path, "method=vaccine", "+method.align.optim.not_a_key=1")


def test_an_alignment_corpus_source_drops_evaluated_prompts_and_answers_a_judge_calls_refusals(fixtures, tmp_path):
    """data.align_corpus: PHTest's harmless, fully answered rows (the source's `where`), without the prompts an
    evaluated benchmark holds and, with compliant_by, without answers a rule judge reads as refusals; counted."""
    corpus = ("data.align_corpus={refusals: [{source: safety_only, field: response, limit: 2}], helpful: "
              "[{source: phtest_mistral, field: response, compliant_by: [keyword, keyword_qi]}]}")
    cfg = real_cfg(fixtures, tmp_path, "data.benign_eval=[xstest_safe]", corpus)
    data = P.start(cfg, models=False).data
    helpful = read_jsonl(data.artifact.file("align_helpful.jsonl"), ("prompt", "answer"))
    # rows 0-7: 5 controversial and 6 refused leave by `where`; 3 is XSTest's; 1 is a refusal to the judges
    assert [r["prompt"] for r in helpful] == [f"Placeholder look-alike {i}" for i in (0, 2, 4, 7)]
    meta = json.loads(data.artifact.file("meta.json").read_text())["align_corpus"]["helpful.phtest_mistral"]
    assert meta == {"rows": 6, "dropped_as_eval_overlap": 1, "dropped_by_keyword": 1, "dropped_by_keyword_qi": 0,
                    "kept": 4}
    with pytest.raises(ConfigError, match="compliant_by"):
        real_cfg(fixtures, tmp_path, corpus.replace("keyword_qi]", "openers]"))
