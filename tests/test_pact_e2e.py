"""PACT on real toy-world batches: cached and live references agree; a micro PACT run end to end."""

import json
import shutil

import pytest
import torch

from experiments.run import run
from pact.data import rows as D
from pact.data.labels import answer_positions
from pact.data.rows import SFTCollator
from pact.models.adapters import apply_lora
from pact.models.loading import load_model, load_tokenizer
from pact.pact_method import PactMethod
from pact.run import pipeline as P
from pact.run.config import validate
from pact.tokens_stage import direction_from_models, intra_op_threads
from pact.training.methods import FinetuneContext


@pytest.fixture(scope="module")
def toy(tmp_path_factory, micro_upstream):
    from tests.conftest import micro_cfg

    root = tmp_path_factory.mktemp("pact")
    shutil.copytree(micro_upstream, root / "store", ignore=shutil.ignore_patterns(".locks"))
    cfg = validate(micro_cfg(root, "method=pact", "poison.ratio=0.1"))
    up = P.start(cfg)
    return cfg, up.store, up.data, up.base, up.aligned


def _ctx(cfg, store, world, base, aligned, adapter):
    tok = load_tokenizer(aligned.tokenizer_path)
    return FinetuneContext(aligned=aligned, base=base, data=world, tokenizer=tok, prompt_format="chat",
                           max_len=int(cfg.model.max_len), seed=0, store=store, adapter=adapter)


def _batch(cfg, world, ctx, n=6):
    rows = P.finetune_rows(cfg, world)
    rows = [r for r in rows if r["poison"]][:3] + [r for r in rows if not r["poison"]][: n - 3]
    return D.encode_sft(rows, ctx.tokenizer, "chat", int(cfg.model.max_len))


def _method(cfg, **changes):
    m = cfg.method.copy()
    for k, v in changes.items():
        m[k] = v
    return PactMethod(m)


@pytest.mark.parametrize("adapter", ["full", "lora"])
def test_cached_and_live_reference_give_the_same_loss(toy, adapter):
    cfg, store, world, base, aligned = toy
    ctx = _ctx(cfg, store, world, base, aligned, adapter)
    cached, live = _method(cfg, reference="cache"), _method(cfg, reference="live")
    cached.prepare(ctx)
    live.prepare(ctx)
    examples = _batch(cfg, world, ctx)
    batch_c = SFTCollator(ctx.tokenizer.pad_token_id)(cached.prepare_examples(examples, ctx))
    batch_l = SFTCollator(ctx.tokenizer.pad_token_id)(examples)
    model = load_model(aligned.path)
    if adapter == "lora":
        model = apply_lora(model, cfg.finetune.lora)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference so the KL is not trivially zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    model.train()
    torch.manual_seed(1)  # same LoRA-dropout masks in both policy passes
    loss_c = cached.compute_loss(None, model, batch_c)
    kl_c = cached.last_kl
    torch.manual_seed(1)
    loss_l = live.compute_loss(None, model, batch_l)
    kl_l = live.last_kl
    assert kl_c > 1e-4
    assert abs(kl_c - kl_l) <= 1e-5 and abs(float(loss_c.detach()) - float(loss_l.detach())) <= 1e-5


def test_reference_cache_is_keyed_by_example_and_reused(toy, monkeypatch):
    cfg, store, world, base, aligned = toy
    ctx = _ctx(cfg, store, world, base, aligned, "full")
    m = _method(cfg)
    m.prepare(ctx)
    examples = _batch(cfg, world, ctx, n=8)
    first = m.prepare_examples(examples, ctx)
    files = sorted(m._cache_dir(ctx).glob("*.safetensors"))
    assert len(files) >= len({str(e["input_ids"]) for e in examples})
    calls = []
    monkeypatch.setattr(PactMethod, "reference", lambda self, *a: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("recomputed a cached example")))
    again = m.prepare_examples(list(reversed(examples)), ctx)  # other order (another seed): same entries
    assert not calls
    for e, f in zip(reversed(first), again):
        assert torch.equal(e["ref_full"], f["ref_full"])
    n = int((torch.as_tensor(examples[0]["labels"]) != D.IGNORE_INDEX).sum())
    assert first[0]["ref_full"].shape == (n, len(m.ids))


def test_answer_positions_and_header():
    labels = torch.tensor([[-100, -100, 5, 6, 7, -100], [-100, 8, 9, -100, -100, -100]])
    pos, mask = answer_positions(labels)
    assert pos.tolist() == [[1, 2, 3], [0, 1, 0]] and mask.tolist() == [[True] * 3, [True, True, False]]


def test_safety_set_is_printed_and_saved(toy, capsys):
    cfg, store, world, base, aligned = toy
    from experiments.safety_tokens import main

    main([f"store_dir={cfg.store_dir}", f"runs_dir={cfg.runs_dir}", *_micro_overrides()])
    out = capsys.readouterr().out
    assert "token" in out and "mean aligned prob" in out
    [art] = (store.root / "tokens").iterdir()
    meta = json.loads((art / "meta.json").read_text())
    assert meta["size"] == 50 and len(meta["safety_set"]) == 50


def _micro_overrides():
    from tests.conftest import MICRO

    return [*MICRO, "method=pact"]


def test_micro_pact_run_end_to_end(toy):
    cfg, store, world, base, aligned = toy
    metrics = run(cfg)
    assert 0 <= metrics["harmful_score"] <= 100
    [ft] = [p for p in (store.root / "finetune").iterdir() if (p / "DONE").exists()]
    meta = json.loads((ft / "meta.json").read_text())
    assert meta["config"]["method"]["_target_"] == "pact.pact_method.PactMethod"


def test_post_bos_ablation_prefixes_the_post_only_input(toy):
    cfg, store, world, base, aligned = toy
    ctx = _ctx(cfg, store, world, base, aligned, "full")
    official, with_bos = _method(cfg), _method(cfg, post_bos=True)
    official.prepare(ctx)
    with_bos.prepare(ctx)
    assert ctx.tokenizer.bos_token_id not in official.header
    assert with_bos.header == [ctx.tokenizer.bos_token_id, *official.header]
    examples = _batch(cfg, world, ctx)
    batch = SFTCollator(ctx.tokenizer.pad_token_id)(examples)
    ids, _ = with_bos._post_only_batch(batch["labels"], batch["input_ids"], ctx.tokenizer.pad_token_id)
    assert (ids[:, 0] == ctx.tokenizer.bos_token_id).all()


def test_step0_measures(toy, tmp_path, capsys):
    """At step 0 the policy is the aligned model: with uniform weights and the gate off PACT's target is the
    aligned model's own distribution on S (KL 0); with the official raw weights it is not."""
    cfg, store, world, base, aligned = toy
    from experiments.pact_step0 import main

    common = [f"store_dir={cfg.store_dir}", f"runs_dir={cfg.runs_dir}", *_micro_overrides(), "poison.ratio=0.1"]
    out = tmp_path / "step0.csv"
    main([*common, "--out", str(out)])
    import pandas as pd

    table = pd.read_csv(out).set_index("rows")
    assert table.loc["all", "n_rows"] == cfg.finetune.n == table.loc["task", "n_rows"] + table.loc["poison", "n_rows"]
    assert table.loc["poison", "n_rows"] == round(0.1 * cfg.finetune.n)
    assert ((table["gate"] >= 0) & (table["gate"] <= 1)).all()
    assert (table["target_mass_top1"] <= table["target_mass_top5"] + 1e-9).all()
    assert (table["kl_gate_off"] > 1e-3).all()
    # the CE (from the reference's own full-context pass) is the model's token-mean loss on the training rows
    rows = P.finetune_rows(cfg, world)
    tok = load_tokenizer(aligned.tokenizer_path)
    batch = SFTCollator(tok.pad_token_id)(D.encode_sft(rows, tok, "chat", int(cfg.model.max_len)))
    with torch.no_grad():
        loss = load_model(aligned.path).eval()(**batch).loss
    assert table.loc["all", "ce"] == pytest.approx(float(loss), rel=1e-4)
    built = sorted((store.root / "step0").iterdir())
    main([*common, "--out", str(out)])  # a rerun reads the artifact
    assert sorted((store.root / "step0").iterdir()) == built
    assert pd.read_csv(out).set_index("rows").equals(table)
    main([*common, "method.weights=uniform", "--out", str(out)])  # replaces the model's rows
    uniform = pd.read_csv(out)
    assert len(uniform) == 3 and (uniform["kl_gate_off"].abs() < 1e-5).all()
    assert (uniform["kl_gate_on"] > 0).all()  # the post-only reference differs from the full context
    assert "kl_gate_on" in capsys.readouterr().out
    assert len(list((store.root / "step0").iterdir())) == len(built) + 1


def spy_passes(monkeypatch, module) -> list[tuple[int, int]]:
    """Record (intra-op threads, Python thread id) of every ``module.response_logits`` call into the list returned."""
    import threading

    seen = []
    forward = module.response_logits

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), threading.get_ident()))
        return forward(*args, **kwargs)

    monkeypatch.setattr(module, "response_logits", spy)
    return seen


def test_safety_set_does_not_depend_on_threads_or_chunks(toy, monkeypatch):
    """The two models' passes side by side on two threads, in small chunks, give the one-thread result bit for bit;
    every pass runs on one intra-op thread."""
    from pact import tokens_stage

    cfg, store, world, base, aligned = toy
    tok = load_tokenizer(aligned.tokenizer_path)
    pairs = D.read_jsonl(world.artifact.file("safety_pairs.jsonl"), ("prompt", "refusal"))[:12]
    models = load_model(aligned.path), load_model(base.path)
    seen = spy_passes(monkeypatch, tokens_stage)
    with intra_op_threads(1):
        v1, r1 = direction_from_models(*models, tok, pairs, top_k=10)
    assert len({ident for _, ident in seen}) == 1
    seen.clear()
    with intra_op_threads(2):
        v2, r2 = direction_from_models(*models, tok, pairs, top_k=10, chunk=5)
        assert torch.get_num_threads() == 2  # restored after the passes
    assert {n for n, _ in seen} == {1} and len({ident for _, ident in seen}) == 2 and len(seen) == 24
    assert torch.equal(v1, v2) and torch.equal(r1, r2) and int((v1 != 0).sum()) == 10


def test_the_tokens_stage_reuses_the_aligned_model_it_is_given(toy, tmp_path, monkeypatch):
    """A fine-tune's aligned model, already loaded, makes the aligned passes: only the base model is loaded (on an
    8B model one copy, 16 GB, fewer), and the direction is the one a fresh copy gives, bit for bit."""
    from pact.models import loading as M
    from pact.runtime.store import Store
    from pact.tokens_stage import load_direction, tokens_stage

    cfg, store, world, base, aligned = toy
    tcfg = cfg.method.tokens.copy()
    tcfg.top_k = 7  # a safety set no other test built
    fresh = tokens_stage(Store(tmp_path / "fresh"), tcfg, aligned, base, world, cfg.model.dtype)
    loaded, real_load = [], M.load_model
    monkeypatch.setattr(M, "load_model", lambda path, *a, **k: loaded.append(str(path)) or real_load(path, *a, **k))
    held = real_load(aligned.path, cfg.model.dtype)
    reused = tokens_stage(Store(tmp_path / "reused"), tcfg, aligned, base, world, cfg.model.dtype,
                          model=held, tokenizer=load_tokenizer(aligned.tokenizer_path))
    assert loaded == [str(base.path)]
    (v1, r1), (v2, r2) = load_direction(fresh), load_direction(reused)
    assert torch.equal(v1, v2) and torch.equal(r1, r2) and int((v1 != 0).sum()) == 7


def test_token_confidence_passes_do_not_depend_on_threads(toy, monkeypatch):
    """The curves' teacher-forced passes: on two threads, two at a time on one intra-op thread each, in row order,
    bit for bit the one-thread result; the thread count comes back after."""
    from analysis import token_confidence as TC

    cfg, store, world, base, aligned = toy
    tok = load_tokenizer(aligned.tokenizer_path)
    rows = D.read_jsonl(world.artifact.file("harmful_eval.jsonl"), ("prompt", "refusal"))[:10]
    model = load_model(aligned.path).eval()
    seen = spy_passes(monkeypatch, TC)
    with intra_op_threads(1):
        one = TC.log_probs(model, tok, rows, 16)
    assert len({ident for _, ident in seen}) == 1
    seen.clear()
    with intra_op_threads(2):
        two = TC.log_probs(model, tok, rows, 16)
        assert torch.get_num_threads() == 2
    assert {n for n, _ in seen} == {1} and len({ident for _, ident in seen}) == 2 and len(seen) == 10
    assert len(two) == 10 and all(torch.equal(a, b) for a, b in zip(one, two))
    assert all(torch.equal(a, TC.log_probs(model, tok, [row], 16)[0]) for a, row in zip(two, rows))  # row order


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_token_confidence_curves_are_cached_in_the_store(toy, tmp_path, monkeypatch):
    cfg, store, world, base, aligned = toy
    import pandas as pd

    from analysis import token_confidence as TC

    run(cfg)  # the micro PACT run's record (cached when another test made it)
    monkeypatch.setenv("PACT_STORE", str(store.root))
    args = ["--runs", str(cfg.runs_dir), "--experiment", str(cfg.experiment_name), "--p", "0.1", "--seed", "0",
            "--methods", "pact", "--out", str(tmp_path)]
    TC.main(args)
    csv = tmp_path / "figures" / f"{cfg.experiment_name}_token_confidence.csv"
    df = pd.read_csv(csv)
    assert set(df["model"]) == {"aligned", "pact (p=0.1)"}
    assert (df[df["model"] == "aligned"]["kl_to_aligned"].abs() < 1e-6).all()
    assert df["mass_on_S"].between(0, 1).all()
    monkeypatch.setattr(TC, "position_curves", lambda *a, **k: pytest.fail("recomputed cached curves"))
    csv.unlink()
    TC.main(args)
    assert pd.read_csv(csv).equals(df)


@pytest.mark.slow  # a micro study and three timed variants (~8 s)
def test_gpu_check_runs_on_cpu_with_a_tiny_shape(toy, tmp_path):
    """The GPU check's two parts on the CPU: the toy world's stages (device checks skipped without CUDA) and the
    SFT / PACT cached / PACT live step timing on a random tiny Llama."""
    from experiments.diagnostics import gpu_check

    cfg, store, world, base, aligned = toy
    shutil.copytree(store.root, tmp_path / "store", ignore=shutil.ignore_patterns(".locks", "finetune", "generate",
                                                                                  "evaluate"))
    toy_part = gpu_check.toy_world(tmp_path, _micro_overrides()[:-1] + ["method=pact_lora", "poison.ratio=0.1"])
    built = [s["stage"] for s in toy_part["stages"]]
    assert "finetune" in built and "generate" in built
    if not torch.cuda.is_available():
        assert all(v.startswith("skipped") for v in toy_part["checks"].values())
    timing = gpu_check.step_timing("tiny")
    assert [r["variant"] for r in timing][:3] == ["SFT", "PACT, reference cache", "PACT, live reference (official)"]
    assert timing[0]["step_ratio"] == 1.0 and all(r["step_s"] > 0 for r in timing)
    gpu_check.main(["--shape", "tiny", "--skip-toy", "--out", str(tmp_path / "out")])
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "| SFT |" in report and "PACT, live reference (official)" in report
    parts = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]
    g, t = parts["generation"]["result"], parts["trainer_step"]["result"]
    assert g["check"] == "ok" and g["answer_lengths"] == [gpu_check.SETTINGS.generation.tiny.new_tokens]
    assert t["check"] == "ok" and t["answer_logits"] and t["bf16"] and t["kl"] > 0.1  # the gate's post-only part
    assert parts["memory"]["result"]["check"] == ("ok" if torch.cuda.is_available() else "skipped (no CUDA)")
    assert parts["guard"]["status"] == "ok"


def test_gpu_check_fails_when_a_checked_number_is_wrong(tmp_path, monkeypatch):
    """The trainer-step check reads numbers: with the output layer at every position, or a KL in the Trainer's step
    that is not the plain forward's, it fails; answers that end early fail the generation check."""
    from experiments.diagnostics import gpu_check
    from pact.training import methods

    monkeypatch.setattr(methods, "answers_only", lambda trainer, model: False)
    assert "every position" in gpu_check.trainer_step("tiny", tmp_path)["check"]
    monkeypatch.undo()
    from pact import pact_method

    real_kl = pact_method.pact_kl  # a KL that the answer-position path (the Trainer's) doubles
    monkeypatch.setattr(pact_method, "pact_kl", lambda policy, *a, **k: real_kl(policy, *a, **k) *
                        (2 if policy.requires_grad else 1))
    failed = gpu_check.trainer_step("tiny", tmp_path)["check"]
    assert failed.startswith("FAILED") and "step KL" in failed
    from pact.evaluation.generation import HFEngine

    real_generate = HFEngine.generate  # one answer ends 2 tokens early
    monkeypatch.setattr(HFEngine, "generate", lambda self, *a, **k: [str(int(x) - (i == 0) * 2) for i, x in
                                                                     enumerate(real_generate(self, *a, **k))])
    assert gpu_check.generation("tiny")["check"].startswith("FAILED: answer lengths")


@pytest.mark.slow  # a subprocess
def test_gpu_check_runs_without_hydra_or_omegaconf(tmp_path):
    """A bare GPU box has torch, transformers and peft: the check's parts 2-5 and 7 run there, part 1 says what to
    install."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules.update(hydra=None, omegaconf=None)\n"
            "from experiments.diagnostics import gpu_check\n"
            f"gpu_check.main(['--shape', 'tiny', '--out', {str(tmp_path)!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    parts = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]
    assert parts["toy"]["status"] == "skipped"
    assert parts["toy"]["detail"].startswith("needs this package's dependencies")
    assert [parts[k]["status"] for k in ("timing", "generation", "memory", "trainer_step", "guard")] == ["ok"] * 5
