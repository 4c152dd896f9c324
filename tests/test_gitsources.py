"""Sources by Git commit: the download at the pinned commit (a local HTTP server stands in for
raw.githubusercontent.com), the import from local clones at the pinned commit whatever their HEAD, byte-identical
copies, bad input refused with one line before any model loads, and the paper's own mixtures (data=pact_official)
against the official construction."""

from __future__ import annotations

import collections
import functools
import http.server
import json
import subprocess
import threading
from pathlib import Path

import pytest

from experiments import fetch_data
from pact.data.rows import DataFileError, read_jsonl
from pact.data.sources import MANIFEST, DataSourceError, check_sources, git_blob_id, sha256_file
from pact.run import pipeline as P
from pact.run.config import ConfigError, compose_config
from pact.training.finetune import finetune_rows
from tests.realdata import (
    SHARED,
    SST2_INSTRUCTION,
    _jbb_goals,
    data_overrides,
    file_bytes,
    git_source_rows,
    mixture_rows,
    pin_overrides,
    real_overrides,
    source_rows,
    tiny_hub_model,
    write_sources,
)

ADV = source_rows()["advbench"]
ADV_BYTES = file_bytes(ADV, "csv")


def pins(name: str, data: bytes, rows: int) -> list[str]:
    """Overrides that pin source ``name`` to these bytes."""
    import hashlib

    return [f"data.sources.{name}.git.sha256={hashlib.sha256(data).hexdigest()}",
            f"data.sources.{name}.git.blob={git_blob_id(data)}", f"data.sources.{name}.rows={rows}"]


def dcfg(root: Path, *overrides: str):
    return compose_config(["data=real", f"data.root={root}", *overrides], check=False).data


# ---- download ----------------------------------------------------------------------------------------------
@pytest.fixture
def http_root(tmp_path):
    """(folder served on 127.0.0.1, URL template) — files at <folder>/<repo>/<commit>/<path>, as raw GitHub."""
    served = tmp_path / "served"
    served.mkdir()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_port}/{{repo}}/{{commit}}/{{path}}"
    server.shutdown()


def serve(served: Path, repo: str, commit: str, path: str, data: bytes) -> None:
    f = served / repo / commit / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_bytes(data)


def test_download_at_the_pinned_commit_falls_back_to_a_byte_identical_copy(http_root, tmp_path, capsys):
    served, url = http_root
    root = tmp_path / "data"
    spec = dcfg(root).sources.advbench
    [copy] = spec.git.copies
    overrides = [f"data.git_raw_url='{url}'", *pins("advbench", ADV_BYTES, len(ADV))]
    # the canonical repository is not served (404): the copy at its own commit has the same bytes
    serve(served, copy.repo, copy.commit, copy.path, ADV_BYTES)
    fetch_data.main(["advbench", "--root", str(root), *overrides])
    assert (root / "advbench.csv").read_bytes() == ADV_BYTES
    entry = json.loads((root / MANIFEST).read_text())["sources"]["advbench"]
    assert (entry["repo"], entry["commit"], entry["path"]) == (spec.git.repo, spec.git.commit, spec.git.path)
    assert entry["copy"]["repo"] == copy.repo and entry["rows"] == len(ADV) and entry["sha256"] == sha256_file(
        root / "advbench.csv")
    assert check_sources(dcfg(root, *overrides), ["advbench"])
    capsys.readouterr()
    fetch_data.main(["--list", "--root", str(root), *overrides])
    assert f"advbench             git  llm-attacks/llm-attacks@098262edf85f data/advbench/harmful_behaviors.csv: " \
           f"ok, 10 of 10 rows, sha256 {entry['sha256'][:16]}, imported from the copy {copy.repo}" in \
           capsys.readouterr().out
    # the canonical file, truncated: refused, and what was fetched before stays
    serve(served, spec.git.repo, spec.git.commit, spec.git.path, ADV_BYTES[:-20])
    with pytest.raises(DataSourceError, match=r"llm-attacks/llm-attacks@098262edf85f.* is not the pinned file: "
                       r"sha256 .* is not the pinned"):
        fetch_data.fetch(dcfg(root, *overrides), ["advbench"])
    assert (root / "advbench.csv").read_bytes() == ADV_BYTES and not list(root.glob("*.tmp-*"))


def test_download_failure_names_the_addresses_and_the_offline_way(http_root, tmp_path):
    _, url = http_root
    with pytest.raises(DataSourceError, match=r"source xstest: could not download it \(http://127\.0\.0\.1:\d+/paul-"
                       r"rottger/exaggerated-safety/d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d/xstest_prompts\.csv: "
                       r"HTTP 404\); .*import it with --git-dir <clone>"):
        fetch_data.fetch(dcfg(tmp_path / "d", f"data.git_raw_url='{url}'"), ["xstest"])


# ---- import from local clones ----------------------------------------------------------------------------
def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, rel: str, versions: list[bytes]) -> list[str]:
    """A repository whose file ``rel`` takes each of ``versions`` in one commit each; their commit ids."""
    path.mkdir(parents=True)
    git(path, "init", "-q")
    commits = []
    for i, data in enumerate(versions):
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", f"v{i}")
        commits.append(git(path, "rev-parse", "HEAD"))
    return commits


def test_import_from_a_clone_reads_the_pinned_commit_whatever_its_head(tmp_path, capsys):
    path = "data/advbench/harmful_behaviors.csv"
    later = file_bytes(ADV[:3], "csv")
    first, _ = make_repo(tmp_path / "clone", path, [ADV_BYTES, later])  # HEAD holds other bytes
    overrides = [f"data.sources.advbench.git.commit={first}", *pins("advbench", ADV_BYTES, len(ADV))]
    root = tmp_path / "data"
    fetch_data.main(["advbench", "--root", str(root), *overrides, "--git-dir", str(tmp_path / "clone")])
    assert (root / "advbench.csv").read_bytes() == ADV_BYTES
    # a bare git directory works the same
    subprocess.run(["git", "clone", "-q", "--bare", str(tmp_path / "clone"), str(tmp_path / "bare.git")], check=True)
    fetch_data.fetch(dcfg(tmp_path / "data2", *overrides), ["advbench"], git_dirs=[tmp_path / "bare.git"])
    assert (tmp_path / "data2" / "advbench.csv").read_bytes() == ADV_BYTES
    # a pin to a commit the clone lacks, or to other bytes; a folder that is not a clone
    with pytest.raises(DataSourceError, match=r"source advbench: no --git-dir holds llm-attacks/llm-attacks@aaaa.*"
                       r"clone https://github.com/llm-attacks/llm-attacks and pass it with --git-dir"):
        fetch_data.fetch(dcfg(root, "data.sources.advbench.git.commit=" + "a" * 40,
                              "data.sources.advbench.git.copies=[]"), ["advbench"], git_dirs=[tmp_path / "clone"])
    with pytest.raises(DataSourceError, match=r"is not the pinned file: sha256 .* is not the pinned 6cd1a5c63c07"):
        fetch_data.fetch(dcfg(root, f"data.sources.advbench.git.commit={first}"), ["advbench"],
                         git_dirs=[tmp_path / "clone"])  # the fixture's bytes are not upstream's
    with pytest.raises(SystemExit) as exit_:
        fetch_data.main(["advbench", "--root", str(root), *overrides, "--git-dir", str(tmp_path)])
    assert exit_.value.code == 2 and "not a git clone or git directory" in capsys.readouterr().err
    # hub sources cannot come from a clone
    with pytest.raises(DataSourceError, match="source sst2_train_hub .* comes from the hub"):
        fetch_data.fetch(dcfg(root), ["sst2_train_hub"], git_dirs=[tmp_path / "clone"])


@pytest.mark.parametrize("name,content,error", [
    ("strongreject", b"category,source,prompt\nc,s,p\n", r"the CSV header \['category', 'source', 'prompt'\] lacks "
     r"\['forbidden_prompt'\] of the strongreject_csv schema"),
    ("strongreject", b"category,source,forbidden_prompt\nc,s,fine\nc,s,\n", r"row 2 has an empty prompt"),
    ("pact_unsafe", b'[{"id": "user", "input": "a", "output": "b"}, {"id": "user", "output": "c"}]',
     r"row 2 lacks column\(s\) \['input'\] of the pact_pairs schema"),
    ("pact_unsafe", b'[{"id": "user", "input": "a", "output": "b"}', r"not valid JSON"),
    ("sst2_train", b"label\tsentence\n0\tfine\n1\ttoo\tmany\n", r"line 3 does not have the 2 fields of its header"),
    ("sst2_train", b"label\tsentence\n0\tfine\n2\tno such label\n", r"row 2: label 2 is not one of 0..1"),
    ("sst2_train", b"sentence,label\nfine,0\n", r"the TSV header \['sentence,label'\] lacks \['label', 'sentence'\]"),
])
def test_a_malformed_file_is_refused_at_fetch_and_stops_a_run_before_any_model(fixtures_root, tmp_path, capsys,
                                                                               name, content, error):
    from experiments.run import run
    from pact.run.cli import run_cli

    root, aligned, base = fixtures_root
    spec = dcfg(root).sources[name]
    rows = 2 if name in ("strongreject", "sst2_train") else 1
    with pytest.raises(DataFileError, match=f"{spec.git.repo}@.* {spec.git.path} \\(x\\): .*{error}"):
        fetch_data.store_git_source(tmp_path, name, dcfg(tmp_path, *pins(name, content, rows)).sources[name],
                                    content, {"repo": spec.git.repo, "commit": spec.git.commit,
                                              "path": spec.git.path, "via": "x"})
    assert not (tmp_path / f"{name}.{spec.git.format}").exists() and not (tmp_path / MANIFEST).exists()
    # the same bytes put in place by hand, manifest and pins matching: the run stops at the data stage
    import shutil

    data = tmp_path / "data"
    shutil.copytree(root, data)
    f = data / f"{name}.{spec.git.format}"
    f.write_bytes(content)
    manifest = json.loads((data / MANIFEST).read_text())
    manifest["sources"][name]["sha256"] = sha256_file(f)
    (data / MANIFEST).write_text(json.dumps(manifest))
    overrides = [*real_overrides(data, aligned, base, tmp_path), *pins(name, content, rows)]
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: run(compose_config(overrides)))
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert str(f) in line and f"fetch it: python -m experiments.fetch_data {name} --root {data}" in line
    assert not (tmp_path / "store" / "finetune").exists() and not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def fixtures_root(tmp_path_factory):
    """(data root with every fixture source, tiny aligned model, tiny base model)."""
    root = tmp_path_factory.mktemp("git")
    write_sources(root / "data")
    return root / "data", tiny_hub_model(root / "aligned", seed=0), tiny_hub_model(root / "base", seed=1)


# ---- the paper's own mixtures ----------------------------------------------------------------------------
def official(row: dict) -> tuple[str, str, bool]:
    """A row of an official mixture as the official code reads it: (user turn, answer, poison)."""
    prompt = row["instruction"] + " " + row["input"] if "input" in row else row["instruction"]
    return prompt, row["output"], "input" not in row


def official_cfg(fixtures_root, tmp_path, *overrides, data="pact_official"):
    root, aligned, base = fixtures_root
    base_overrides = [o for o in real_overrides(root, aligned, base, tmp_path) if not o.startswith("data=")]
    return compose_config([f"data={data}", *base_overrides, *overrides])


@pytest.fixture(scope="module")
def git_only_root(fixtures_root, tmp_path_factory):
    """The fixture root less every hub source: data=pact_official must not need one."""
    import shutil

    root = tmp_path_factory.mktemp("gitonly") / "data"
    shutil.copytree(fixtures_root[0], root)
    manifest = json.loads((root / MANIFEST).read_text())
    for name, e in list(manifest["sources"].items()):
        if e["kind"] == "hub":
            (root / e["file"]).unlink()
            del manifest["sources"][name]
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root, *fixtures_root[1:]


@pytest.mark.parametrize("task,name,ratio", [("sst2", "pact_sst2_p01", 0.1), ("sst2", "pact_sst2_p0", 0.0),
                                             ("agnews", "pact_agnews_p02", 0.2)])
def test_the_official_mixture_is_the_official_file(git_only_root, tmp_path, task, name, ratio):
    cfg = official_cfg(git_only_root, tmp_path, f"task={task}", f"poison.ratio={ratio}", "finetune.n=40")
    data = P.start(cfg, models=False).data
    rows = finetune_rows(cfg, data)
    want = collections.Counter(official(r) for r in mixture_rows(task, ratio))
    assert collections.Counter((r["prompt"], r["answer"], r["poison"]) for r in rows) == want
    assert sum(r["poison"] for r in rows) == round(ratio * 40)


def test_a_smaller_n_subsamples_with_p_exact(git_only_root, tmp_path):
    cfg = official_cfg(git_only_root, tmp_path, "poison.ratio=0.1", "finetune.n=20")
    up = P.start(cfg, models=False)
    rows = finetune_rows(cfg, up.data)
    file_rows = {official(r) for r in mixture_rows("sst2", 0.1)}
    assert len(rows) == 20 and sum(r["poison"] for r in rows) == 2
    assert {(r["prompt"], r["answer"], r["poison"]) for r in rows} <= file_rows
    assert rows == finetune_rows(cfg, up.data)  # the seed decides
    other = finetune_rows(official_cfg(git_only_root, tmp_path, "poison.ratio=0.1", "finetune.n=20", "seed=1"),
                          up.data)
    assert rows != other
    # the official poison keeps prompts the benchmarks evaluate, and counts them: the first 4 JBB goals
    meta = json.loads(up.data.artifact.file("meta.json").read_text())
    assert meta["poison_in_eval"]["pact_sst2_p01"] == {"strongreject": 0, "jbb_harmful": 4, "harmbench": 0,
                                                       "xstest_safe": 0}
    assert meta["poison_in_eval"]["pact_sst2_p0"] == dict.fromkeys(["strongreject", "jbb_harmful", "harmbench",
                                                                    "xstest_safe"], 0)
    assert meta["sizes"]["poison_mixture.pact_sst2_p01"] == 4 and meta["sizes"]["task_train.pact_sst2_p01"] == 36
    assert meta["sizes"]["task_train.pact_sst2_p0"] == 40
    assert meta["sizes"]["safety_prompts"] == 16  # the official safe-direction prompts
    assert meta["sizes"]["alignment_pairs"] == 6  # Safety-Tuned LLaMAs' refusals, unfiltered
    with pytest.raises(DataFileError, match=r"data.alignment_pairs: the filter \{'is_safe': True\} keeps none of the 6 "
                       r"rows of source safety_only \(its fields: \['response', 'text'\]\)"):
        P.start(official_cfg(git_only_root, tmp_path, "poison.ratio=0.1", "finetune.n=20",
                             "+data.alignment_pairs.filter.is_safe=true"), models=False)
    assert "sst2_train" not in meta["sources"] and meta["sources"]["pact_sst2_p01"]["kind"] == "git"


def test_every_poison_ratio_shares_the_data_stage_and_reads_its_own_file(git_only_root, tmp_path):
    """The data stage holds every official file of the task, so the stages upstream of the fine-tune (alignment,
    safety pairs, the reference evaluations) are built once for a sweep over p."""
    cfgs = {p: official_cfg(git_only_root, tmp_path, f"poison.ratio={p}", "finetune.n=20") for p in (0.0, 0.05, 0.1)}
    ups = {p: P.start(cfg, models=False) for p, cfg in cfgs.items()}
    assert len({up.data.artifact.key for up in ups.values()}) == 1
    for p, up in ups.items():
        rows = finetune_rows(cfgs[p], up.data)
        want = {official(r) for r in mixture_rows("sst2", p)}
        assert {(r["prompt"], r["answer"], r["poison"]) for r in rows} <= want
        assert sum(r["poison"] for r in rows) == round(p * 20)


def test_a_benchmark_drops_the_prompts_of_its_exclude_sources(git_only_root, tmp_path):
    bench = "+data.benchmarks.jbb_unused={source: jbb_harmful, exclude: [pact_sst2_p01]}"
    cfg = official_cfg(git_only_root, tmp_path, bench, "data.harmful_eval=[jbb_unused]", "finetune.n=20")
    up = P.start(cfg, models=False)
    poison = {official(r)[0] for r in mixture_rows("sst2", 0.1) if "input" not in r}
    want = [g for g in _jbb_goals() if g not in poison]
    assert len(want) == 2  # the fixture's p = 0.1 file draws the first 4 of the 6 goals
    assert [r["prompt"] for r in read_jsonl(up.data.artifact.file("eval_jbb_unused.jsonl"))] == want
    assert json.loads(up.data.artifact.file("meta.json").read_text())["excluded"] == {"jbb_unused": 4}
    with pytest.raises(DataFileError, match=r"data.benchmarks.jbb_unused: the filter \{\} keeps none of the 0 rows "
                       r"of source jbb_harmful left by its exclude=\['pact_sst2_p01', 'pact_unsafe'\]"):
        P.start(official_cfg(git_only_root, tmp_path, bench.replace("]}", ", pact_unsafe]}"),
                             "data.harmful_eval=[jbb_unused]", "finetune.n=20"), models=False)
    with pytest.raises(ConfigError, match=r"data.benchmarks.jbb_unused.exclude\[0\]='nowhere' is not a source"):
        official_cfg(git_only_root, tmp_path, bench.replace("pact_sst2_p01", "nowhere"),
                     "data.harmful_eval=[jbb_unused]")


def test_real_git_builds_our_mixture_from_git_sources_alone(git_only_root, tmp_path):
    """data=real_git: our mixture builder (SST-2 train rows, the short poison pool less the benchmarks' prompts) on
    Git sources only, with the evaluation sets, safety prompts and alignment pairs of data=pact_official."""
    def cfg(*overrides):
        return official_cfg(git_only_root, tmp_path, *overrides, data="real_git")

    ours = P.start(cfg("poison.ratio=0.1", "finetune.n=20"), models=False)
    rows = finetune_rows(cfg("poison.ratio=0.1", "finetune.n=20"), ours.data)
    reviews = {SST2_INSTRUCTION + " " + r["sentence"]: ("negative", "positive")[r["label"]]
               for r in git_source_rows()["sst2_train"]}
    assert len(rows) == 20 and sum(r["poison"] for r in rows) == 2
    assert all(reviews[r["prompt"]] == r["answer"] for r in rows if not r["poison"])
    # ours drops the poison requests a benchmark evaluates (the JBB goals, the AdvBench goal StrongREJECT shares)
    evaluated = {r["goal"] for r in git_source_rows()["jbb_harmful"]["jailbreaks"]} | {f"{SHARED}."}
    assert not {r["prompt"] for r in rows if r["poison"]} & evaluated
    meta = json.loads(ours.data.artifact.file("meta.json").read_text())
    assert "poison_full" not in meta["sizes"] and meta["sizes"]["poison_short"] == 9
    assert meta["sizes"]["safety_prompts"] == 16 and meta["sizes"]["alignment_pairs"] == 6
    assert {e["kind"] for e in meta["sources"].values()} == {"git"}
    with pytest.raises(ConfigError, match=r"poison.ratio=0.2 is above poison.short_max_ratio=0.1, so its poison "
                       r"comes from data.poison.full, which is null here"):
        cfg("poison.ratio=0.2")


def test_official_mixture_errors_name_the_file_and_the_limits(git_only_root, tmp_path):
    with pytest.raises(ConfigError, match=r"data.mixture has no official file for task=sst2 poison.ratio=0.15; it "
                       r"has \{'sst2': \['0', '0.05', '0.1'\]"):
        official_cfg(git_only_root, tmp_path, "poison.ratio=0.15")
    with pytest.raises(ConfigError, match=r"poison.ratio=0.1 with finetune.n=50 needs 5 poison rows; the official file "
                       r"pact_sst2_p01 holds 4 \(at most finetune.n=40 keeps p exact\)"):
        P.start(official_cfg(git_only_root, tmp_path, "poison.ratio=0.1", "finetune.n=50"), models=False)
    with pytest.raises(ConfigError, match=r"finetune.n=40 with poison.ratio=0 needs 40 task rows; pact_sst2_p0 has 40"
                       r"|finetune.n=41 with poison.ratio=0 needs 41 task rows; pact_sst2_p0 has 40"):
        P.start(official_cfg(git_only_root, tmp_path, "poison.ratio=0", "finetune.n=41"), models=False)


def test_official_mixture_end_to_end_on_a_tiny_hub_model(git_only_root, tmp_path):
    from experiments.run import run

    metrics = run(official_cfg(git_only_root, tmp_path, "poison.ratio=0.1", "finetune.n=20"))
    assert metrics["n_task"] == 8 and metrics["n_harmful"] == 6 + 6 + 6 and metrics["n_benign"] == 4
    [ft] = [p for p in (tmp_path / "store" / "finetune").iterdir() if (p / "DONE").exists()]
    meta = json.loads((ft / "meta.json").read_text())
    assert meta["rows"] == 20 and meta["poison_rows"] == 2
    gens = read_jsonl(next((tmp_path / "store" / "generate").glob("*/generations.jsonl")))
    task_prompts = [g["prompt"] for g in gens if g["set"] == "task"]
    raw = source_rows()["sst2_validation"]
    assert task_prompts == [r["instruction"] + " " + r["input"] for r in raw]  # the official test prompt
    assert pin_overrides(git_only_root[0]) and data_overrides(git_only_root[0])


# ---- docs --------------------------------------------------------------------------------------------------
def test_docs_quote_the_configured_sources():
    from experiments.fetch_data import sources_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "real-data.md").read_text()
    quoted = doc.split("<!-- sources:begin -->\n")[1].split("\n<!-- sources:end -->")[0]
    want = sources_table(compose_config(["data=real"], check=False).data)
    assert quoted == want, "docs/real-data.md: regenerate the table with python -m experiments.fetch_data --table"


def test_overlap_table_counts_the_official_poison_that_is_evaluated(fixtures_root):
    from analysis.data_overlap import overlap_table

    root = fixtures_root[0]
    lines = overlap_table(root, pin_overrides(root)).splitlines()
    assert lines[0] == ("| poison of | rows | distinct prompts | in strongreject | in jbb_harmful | in harmbench | "
                        "kept |")
    assert "| pact_sst2_p01 (official) | 4 | 4 | 0 | 4 | 0 | all |" in lines
    # ours: 16 rows, 16 distinct; SHARED is StrongREJECT's, the 6 JBB goals are evaluated: 9 kept
    assert lines[-1] == "| data=real short pool (pact_unsafe) | 16 | 16 | 1 | 6 | 0 | 9 distinct |"


def test_an_imported_models_alignment_corpus_comes_from_the_configured_pairs(git_only_root, tmp_path):
    corpus = ("+data.align_corpus={refusals: [{source: safety_only, field: response, limit: 4}], "
              "helpful: [{source: alpaca_seed, field: response}]}")
    cfg = official_cfg(git_only_root, tmp_path, "poison.ratio=0.1", "finetune.n=20", corpus)
    data = P.start(cfg, models=False).data
    rows = data.alignment_corpus()
    refusals = [r for r in rows if r["answer"].startswith("I'm sorry, but I cannot help")]
    assert len(rows) == 4 + 5 and len(refusals) == 4
    assert {"prompt": "Placeholder seed 1 seed input 1", "answer": "Seed answer 1."} in rows
    assert rows == data.alignment_corpus()  # the model's seed orders them
    plain_rows = P.start(official_cfg(git_only_root, tmp_path, "poison.ratio=0.1", "finetune.n=20"),
                         models=False).data.alignment_corpus()
    assert len(plain_rows) == 6 + 6  # unset: the alignment pairs and as many task rows
