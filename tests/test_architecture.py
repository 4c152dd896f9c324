"""The house rules: the library never imports its plugins, has no import circle, takes a new method as one module
plus one yaml, keys a fine-tune by its own method's code only, and ends bad input in one line."""

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pact.run import pipeline as P
from pact.run.config import ConfigError, validate
from pact.runtime.store import imported_modules, module_sources
from pact.training import finetune as F

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = ("baselines", "experiments", "analysis")


def _library_imports() -> dict[str, set[str]]:
    """module -> absolute names it imports (anywhere in the file), for every module of pact/."""
    out = {}
    for path in sorted((ROOT / "pact").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[module] = imported_modules(path, module)
    return out


def test_library_never_imports_baselines_experiments_or_analysis():
    bad = {m: sorted(n for n in names if n.split(".")[0] in PLUGIN_PACKAGES)
           for m, names in _library_imports().items()}
    assert not {m: n for m, n in bad.items() if n}


def test_library_has_no_import_circle():
    graph = _library_imports()
    edges = {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_pact_math_imports_only_torch():
    for module in ("pact.tokens", "pact.loss", "pact.data.labels"):
        names = _library_imports()[module]
        assert {n.split(".")[0] for n in names} <= {"torch", "__future__"}, (module, names)


# pact's layers, lowest first: a module imports from its own layer or lower ones. PACT's own modules (pact/*.py) sit
# above the library they use and below the run that chains the stages.
LAYERS = ("pact.runtime", "pact.world", "pact.data", "pact.models", "pact.training", "pact.evaluation", "pact",
          "pact.run")
# The one way up: a run's safety pairs are the aligned model's own answers, so the run's data generates and judges
# them (inside the function that does: reading data loads no model code)
UPWARD = {("pact.data.rundata", "pact.evaluation.generation"), ("pact.data.rundata", "pact.evaluation.judges"),
          ("pact.data.rundata", "pact.models.loading")}


def _layer(module: str) -> int:
    package = ".".join(module.split(".")[:2])
    return LAYERS.index(package if package in LAYERS else "pact")


def test_library_modules_import_only_their_own_layer_or_lower_ones():
    graph = _library_imports()
    packages = {m for m in graph if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}
    assert packages == set(LAYERS)   # a new sub-package gets a layer
    up = {(m, n) for m, names in graph.items() for n in names
          if n in graph and n != "pact" and _layer(n) > _layer(m)}
    assert up == UPWARD


def test_every_method_yaml_names_a_method_class_and_its_own_label():
    from omegaconf import OmegaConf

    from pact.run.config import compose_config
    from pact.training.methods import Method, method_class

    def load(stem: str):  # a method yaml over the one its defaults name (how Hydra composes them)
        node = OmegaConf.load(ROOT / "conf" / "method" / f"{stem}.yaml")
        parents = [d for d in node.pop("defaults", []) if d != "_self_"]
        return OmegaConf.merge(*(load(p) for p in parents), node)

    for path in sorted((ROOT / "conf" / "method").glob("*.yaml")):
        method = load(path.stem)
        assert method.id == path.stem  # records, tables and error messages name the yaml by its id
        assert "name" not in method and issubclass(method_class(method), Method)
    assert compose_config(["method=pact_lora"]).method == load("pact_lora")  # as Hydra composes it


PLUGIN = '''
from pact.training.methods import Method


class KeepFirst(Method):
    """Fine-tune on the first `keep` rows only."""

    def transform_data(self, rows, ctx):
        self.stats["rows_in"] = len(rows)
        return rows[: int(self.cfg.keep)]
'''


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_a_method_from_one_module_and_one_yaml_runs_a_micro_study(micro, tmp_path, monkeypatch):
    from analysis.report import report
    from experiments.run import run

    (tmp_path / "myplugins").mkdir()
    (tmp_path / "myplugins" / "__init__.py").write_text("")
    (tmp_path / "myplugins" / "keep.py").write_text(PLUGIN)
    conf = tmp_path / "myconf" / "method"
    conf.mkdir(parents=True)
    (conf / "keep_first.yaml").write_text("_target_: myplugins.keep.KeepFirst\nid: keep_first\nadapter: full\n"
                                          "keep: 40\n")
    (conf / "broken.yaml").write_text("_target_: myplugins.keep.Missing\nid: broken\nadapter: full\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    search = f"hydra.searchpath=[file://{tmp_path / 'myconf'}]"
    with pytest.raises(ConfigError, match=r"method 'broken' \(conf/method/broken\.yaml\).*does not exist"):
        validate(micro(search, "method=broken"))
    for method in ("sft", "keep_first"):
        run(micro(search, f"method={method}", "experiment_name=plugin_study"))
    df = report(tmp_path / "runs", tmp_path / "report")
    assert set(df["method"]) == {"base", "aligned", "sft", "keep_first"}
    metas = [json.loads(p.read_text()) for p in (tmp_path / "store" / "finetune").glob("*/meta.json")]
    [mine] = [m for m in metas if m["config"]["method"]["id"] == "keep_first"]
    assert mine["rows"] == 40 and mine["method_stats"]["rows_in"] == 80
    table = (tmp_path / "report" / "tables" / "plugin_study_toy_small_sentiment_paper.md").read_text()
    assert "| keep_first |" in table and "| sft |" in table


def _code_files(target_module: str) -> set[str]:
    return {str(p.relative_to(ROOT)) for p in module_sources(*F.FINETUNE_LIBRARY, target_module)
            if p.is_relative_to(ROOT)}


def test_finetune_code_covers_the_library_and_its_own_method_only():
    sft, lisa, pact_ = (_code_files(m) for m in ("pact.training.methods", "baselines.lisa", "pact.pact_method"))
    assert not any(f.startswith("baselines/") for f in sft)
    assert {f for f in lisa if f.startswith("baselines/")} == {"baselines/lisa.py"}
    assert {"pact/pact_method.py", "pact/loss.py", "pact/tokens.py"} <= pact_
    assert not any(f.startswith("baselines/") for f in pact_)


def test_editing_a_baseline_changes_its_finetune_key_and_not_sfts(micro, tmp_path, monkeypatch):
    package = tmp_path / "mybaselines"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(ROOT / "baselines" / "lisa.py", package / "lisa.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    lisa_cfg = validate(micro("method=lisa", "method._target_=mybaselines.lisa.Lisa"))
    sft_cfg = validate(micro("method=sft"))

    def keys():
        F._finetune_code.cache_clear()
        return {name: P.finetune_slice(c)["code"] for name, c in (("lisa", lisa_cfg), ("sft", sft_cfg))}

    before = keys()
    with open(package / "lisa.py", "a") as fh:
        fh.write("\n# an edit\n")
    after = keys()
    assert after["lisa"] != before["lisa"] and after["sft"] == before["sft"]
    F._finetune_code.cache_clear()


# ---- clean errors ----------------------------------------------------------------------------------------------
def _cli(tmp_path, *args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=full_env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (("experiments.run", "poison.ratio=1.5"), "error: poison.ratio=1.5 is out of range: must be >= 0 and <= 1"),
    (("experiments.run", "task=poetry"), "error: task=poetry: no such option in conf/task/; choose one of "
     "['agnews', 'arithmetic', 'gsm8k', 'sentiment', 'sst2', 'topic']"),
])
def test_hydra_entry_point_prints_one_line_and_exits_2(tmp_path, args, message):
    done = _cli(tmp_path, *args)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [message]


@pytest.mark.slow  # a subprocess: this pytest process has the whole stack loaded already
def test_checking_a_config_loads_no_model_or_trainer_code():
    """The entry points' one-line errors and ``--help`` come before the model and Trainer code loads (several
    seconds of imports): importing them and the pipeline, the stages' code keys, composing and validating a config,
    every method's class included, import torch but not transformers' models, its Trainer or peft."""
    heavy = ("peft", "transformers.modeling_utils", "transformers.trainer", "transformers.trainer_callback")
    code = ("import sys\nfrom pathlib import Path\nfrom omegaconf import OmegaConf\n"
            "import experiments.run, experiments.prepare, experiments.pact_step0, experiments.safety_tokens\n"
            "import experiments.bench, experiments.judge, pact.evaluation.utility\n"
            "from pact.run.config import compose_config, validate\nfrom pact.training.methods import method_class\n"
            "validate(compose_config(['method=pact']))\n"
            "for path in Path('conf/method').glob('*.yaml'):  # each class (the others inherit one)\n"
            "    if '_target_' in (method := OmegaConf.load(path)):\n        method_class(method)\n"
            f"print([m for m in {heavy!r} if m in sys.modules])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_hydra_full_error_still_shows_the_traceback(tmp_path):
    done = _cli(tmp_path, "experiments.run", "poison.ratio=1.5", env={"HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "poison.ratio=1.5" in done.stderr


@pytest.mark.parametrize("argv,message", [
    (["seed=abc"], "error: seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["model.base_train.lr=-1"], "error: model.base_train.lr=-1.0 is out of range: must be > 0"),
    (["task=poetry"], "error: task=poetry: no such option in conf/task/; choose one of ['agnews', 'arithmetic', "
                      "'gsm8k', 'sentiment', 'sst2', 'topic']"),
    (["method=sft", "method._target_=baselines.nope.Nope"], "error: invalid method config: method 'sft' "
     "(conf/method/sft.yaml): _target_='baselines.nope.Nope' cannot be imported (No module named 'baselines.nope')"),
    (["model=llama3.1-8b-instruct", "model.aligned=./no/such/model"],
     "error: model.aligned=./no/such/model: no such model directory; point model.aligned= at a folder holding the "
     "model's config.json, or at a hub id"),
])
def test_entry_points_print_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    from experiments.prepare import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")  # the user asks for the traceback: the exception itself
    with pytest.raises(Exception, match="no such|Value|out of range|cannot be imported|Could not find"):
        main(argv)


def test_report_on_a_missing_runs_directory_is_one_line(tmp_path, capsys, monkeypatch):
    from analysis.report import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["--runs", str(tmp_path / "no_runs"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --runs {tmp_path / 'no_runs'}: no such directory")


def test_malformed_data_file_ends_in_one_line(micro, tmp_path, capsys):
    from experiments.run import run
    from pact.run.cli import EXIT_USER_ERROR, run_cli

    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "refusal": "r"}) + "\n{oops\n")
    cfg = micro("method=safety_mix", f"method.pairs_file={bad}", "method.count=1")
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: run(cfg))
    assert exit_.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()  # above it: the progress bars of the stages that ran
    assert err[-1] == f"error: {bad}:2: not valid JSON (Expecting property name enclosed in double quotes)"
    # what was built before the bad file is kept: the next run reuses it
    assert all(any((tmp_path / "store" / s).glob("*/DONE")) for s in ("world", "base", "align"))


def test_evaluate_stage_hands_back_its_judged_generations(micro):
    cfg = validate(micro())
    up = P.start(cfg)
    evaluation = P.evaluate_stage(up.store, cfg, up.aligned, up.data)
    metrics = P.load_metrics(evaluation)
    rows = [json.loads(line) for line in evaluation.file("generations.jsonl").read_text().splitlines()]
    harmful = [r for r in rows if r["set"] == "harmful"]
    assert harmful and all(set(r["verdicts"]) == {"oracle", "keyword"} for r in harmful)
    share = 100 * sum(r["verdicts"]["oracle"] == "compliance" for r in harmful) / len(harmful)
    assert share == pytest.approx(metrics["harmful_score"])
    task = pd.DataFrame([r for r in rows if r["set"] == "task"])
    assert 100 * task["correct"].mean() == pytest.approx(metrics["finetune_accuracy"])


def test_bench_variant_measures_one_stage(micro, tmp_path):
    from experiments.bench import ANALYSIS
    from experiments.bench_variant import measure
    from tests.conftest import MICRO

    assert "SFT" in {v.label for v in ANALYSIS.bench.variants}  # the bench's ratios are taken against these rows
    res = measure("finetune", [*MICRO, f"store_dir={tmp_path / 'store'}", "method=sft_lora"])
    assert res["wall"] > 0 and res["train"]["train_runtime"] > 0 and res["max_rss_mb"] > 100


def test_bench_sections_replace_only_themselves(tmp_path):
    """`make bench` writes one section per settings block of conf/analysis.yaml into one bench.md."""
    from experiments.bench import ANALYSIS, TITLE, write_section

    for block in ("bench", "bench_smollm2"):  # each ratio is taken against an SFT row with the same adapter
        labels = {(v.label, "lora" in " ".join(v.overrides)) for v in ANALYSIS[block].variants}
        assert {("SFT", False), ("SFT", True)} <= labels
    out = tmp_path / "bench.md"
    out.write_text("# old file without sections\n| a | b |\n")
    write_section(out, "toy", ["toy v1"])
    write_section(out, "smol", ["smol v1"])
    write_section(out, "toy", ["toy v2"])
    assert out.read_text() == f"{TITLE}\n\n## toy\n\ntoy v2\n\n## smol\n\nsmol v1\n"


@pytest.mark.slow
def test_bench_child_reports_its_own_peak_memory_not_its_parents(tmp_path):
    ballast = bytearray(2 * 1024**3)  # the parent's peak: 2 GiB
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page so it is resident
    code = "from experiments.bench_variant import peak_rss_mb; print(peak_rss_mb())"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    del ballast
    assert 50 < float(done.stdout.strip().splitlines()[-1]) < 1500, done.stderr[-2000:]


def test_prepare_evaluate_builds_the_reference_rows_evaluations(micro, tmp_path, caplog):
    """`prepare --evaluate` leaves the base and aligned model's evaluations in the store, so a sweep reuses them;
    on two threads it builds them side by side in two one-thread processes, with the answers that one thread gives
    one model after the other (the same keys: a store built either way serves the other)."""
    import torch

    from experiments.prepare import main
    from tests.conftest import MICRO

    cfg = micro("eval.limit=6")  # other evaluation settings than the copied store holds
    shutil.copytree(tmp_path / "store", tmp_path / "store_seq")
    before = set((tmp_path / "store" / "evaluate").iterdir())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO, logger="experiments.prepare"):
            main([f"store_dir={cfg.store_dir}", f"runs_dir={cfg.runs_dir}", *MICRO, "eval.limit=6", "--evaluate"])
        assert "evaluating base and aligned side by side, one thread each" in caplog.text
        main([f"store_dir={tmp_path / 'store_seq'}", f"runs_dir={cfg.runs_dir}", *MICRO, "eval.limit=6", "threads=1",
              "--evaluate"])
    finally:
        torch.set_num_threads(threads)
    new = set((tmp_path / "store" / "evaluate").iterdir()) - before
    assert len(new) == 2 and all((p / "DONE").is_file() for p in new)
    # and their records, the study's reference rows, as its sweep's first run writes them
    records = [json.loads(p.read_text()) for p in Path(cfg.runs_dir).rglob("*-ref-*.json")]
    assert {r["method"] for r in records} == {"base", "aligned"}
    assert {Path(r["evaluation_path"]).name for r in records} == {p.name for p in new}  # same keys either way
    for stage in ("generate", "evaluate"):
        side = {p.name for p in (tmp_path / "store" / stage).iterdir() if (p / "DONE").is_file()}
        seq = {p.name for p in (tmp_path / "store_seq" / stage).iterdir() if (p / "DONE").is_file()}
        assert side == seq
    for art in new:
        for name in ("generations.jsonl", "metrics.json"):
            assert (art / name).read_bytes() == (tmp_path / "store_seq" / "evaluate" / art.name / name).read_bytes()
    # cached: no process started; one missing: built here, on one thread, the same bytes
    one = sorted(new)[0]
    kept = (one / "generations.jsonl").read_bytes()
    shutil.rmtree(tmp_path / "store" / "generate" / json.loads((one / "meta.json").read_text())["upstream"]["generate"])
    shutil.rmtree(one)
    caplog.clear()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.INFO):
            main([f"store_dir={cfg.store_dir}", f"runs_dir={cfg.runs_dir}", *MICRO, "eval.limit=6", "--evaluate"])
    finally:
        torch.set_num_threads(threads)
    assert "side by side" not in caplog.text and "stage generate: built" in caplog.text
    assert (one / "generations.jsonl").read_bytes() == kept


def test_prepare_builds_the_safety_set_of_a_pact_method(micro, tmp_path):
    """`prepare method=pact` leaves the tokens stage in the store (built with every thread, before the sweep)."""
    from experiments.prepare import main
    from tests.conftest import MICRO

    cfg = micro()
    shutil.rmtree(tmp_path / "store" / "tokens", ignore_errors=True)  # the copied micro store may hold it
    main([f"store_dir={cfg.store_dir}", f"runs_dir={cfg.runs_dir}", *MICRO, "method=pact"])
    [art] = (tmp_path / "store" / "tokens").iterdir()
    assert (art / "DONE").is_file()
