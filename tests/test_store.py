import pytest

from pact.runtime.store import DONE, Store


def test_built_once_then_reused(tmp_path):
    store, calls = Store(tmp_path), []

    def build(d):
        calls.append(d)
        (d / "x.txt").write_text("1")
        return {"n": 1}

    a = store.build("s", {"a": 1}, {"up": "k"}, build)
    b = store.build("s", {"a": 1}, {"up": "k"}, build)
    assert a == b and len(calls) == 1 and (a.path / DONE).exists() and (a.path / "x.txt").exists()
    c = store.build("s", {"a": 2}, {"up": "k"}, build)
    d = store.build("s", {"a": 1}, {"up": "other"}, build)
    assert len({a.key, c.key, d.key}) == 3 and len(calls) == 3


def test_failed_build_leaves_nothing_that_looks_finished(tmp_path):
    store = Store(tmp_path)

    def boom(d):
        (d / "half.bin").write_text("partial")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.build("s", {"a": 1}, None, boom)
    key = store.key("s", {"a": 1}, None)
    assert not store.done("s", key) and not store.path("s", key).exists()
    art = store.build("s", {"a": 1}, None, lambda d: (d / "ok.txt").write_text("ok") and None)
    assert (art.path / "ok.txt").exists() and not (art.path / "half.bin").exists()
    assert not list(art.path.parent.glob("*.partial-*"))


def test_code_hash_follows_source_text(tmp_path):
    from pact.runtime.store import code_hash

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("ignored")
    before = code_hash(tmp_path)
    (tmp_path / "notes.txt").write_text("still ignored")
    assert code_hash(tmp_path) == before
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_hash(tmp_path) != before


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_seeded_run_copies_upstream_models_across_code_versions(micro_upstream, tmp_path, monkeypatch):
    """experiments.diagnostics.seeded: a store whose code hashes differ (another code version) gets the source store's
    base and aligned model copied in, bit for bit, instead of training them; an ambiguous source is refused."""
    import json
    import shutil

    from experiments.diagnostics.seeded import Seeder
    from pact.run import pipeline as P
    from pact.run.config import validate
    from tests.conftest import micro_cfg

    plain = Store._run_builder
    monkeypatch.setattr(Store, "_run_builder", plain)  # restored after the test
    monkeypatch.setattr(P, "TRAIN_CODE", "another-version")  # new keys for base and align
    Seeder(micro_upstream, {}).install()
    up = P.start(validate(micro_cfg(tmp_path)))
    for stage, ref in (("base", up.base), ("align", up.aligned)):
        [src] = [p for p in (micro_upstream / stage).iterdir() if (p / DONE).exists()]
        assert src.name != ref.key  # built under another key ...
        meta = json.loads((tmp_path / "store" / stage / ref.key / "meta.json").read_text())
        assert meta["seeded_from"] == str(src)  # ... from the source's artifact, byte for byte
        assert (src / "model" / "model.safetensors").read_bytes() == \
            (tmp_path / "store" / stage / ref.key / "model" / "model.safetensors").read_bytes()
    # a later process (a fresh Seeder) reuses the seeded base and still finds the alignment that was trained from
    # the base's source: the copy's meta.json names it (e.g. Vaccine's alignment, prepared in a second process)
    shutil.rmtree(tmp_path / "store" / "align" / up.aligned.key)
    monkeypatch.setattr(Store, "_run_builder", plain)
    Seeder(micro_upstream, {}).install()
    again = P.start(validate(micro_cfg(tmp_path)))
    assert json.loads((tmp_path / "store" / "align" / again.aligned.key / "meta.json").read_text())["seeded_from"] \
        == str(next(p for p in (micro_upstream / "align").iterdir() if (p / DONE).exists()))
    monkeypatch.setattr(Store, "_run_builder", plain)
    source = tmp_path / "ambiguous"
    shutil.copytree(micro_upstream, source, ignore=shutil.ignore_patterns(".locks"))
    [base] = [p for p in (source / "base").iterdir() if (p / DONE).exists()]
    shutil.copytree(base, base.parent / "another")
    Seeder(source, {}).install()
    with pytest.raises(SystemExit, match="--pick base=KEY"):
        P.start(validate(micro_cfg(tmp_path / "second")))


# ---- torchrun: which rank builds what --------------------------------------------------------------------------
def _ranks(monkeypatch, rank: int, collectives: list[str]):
    """Pretend this process is ``rank`` of two under torchrun; collective calls are recorded, not made."""
    from pact.runtime import dist

    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    monkeypatch.setattr(dist, "rank", lambda: rank)
    monkeypatch.setattr(dist, "is_main", lambda: rank == 0)
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    monkeypatch.setattr(dist, "broadcast", lambda value: collectives.append("broadcast") or value)
    monkeypatch.setattr(dist, "barrier", lambda: collectives.append("barrier"))


def test_under_torchrun_rank_0_alone_builds_a_stage_that_is_not_collective(tmp_path, monkeypatch):
    """Generation, judging, safety tokens: rank 0 builds and publishes with no collective call (an 8B model's
    generation may outlast the process group's timeout); another rank never runs the builder and returns the
    artifact once rank 0 has published it."""
    import json
    import threading
    import time

    from pact.runtime import store as S

    collectives: list[str] = []
    calls: list[int] = []
    _ranks(monkeypatch, 0, collectives)
    art = Store(tmp_path).build("generate", {"a": 1}, None, lambda d: calls.append(0) or {"n": 1})
    assert calls == [0] and collectives == []
    meta = json.loads(art.file("meta.json").read_text())
    assert (meta["world_size"], meta["ranks"]) == (2, 1)

    _ranks(monkeypatch, 1, collectives)
    monkeypatch.setattr(S, "WAIT_POLL_SECONDS", 0.01)
    store = Store(tmp_path / "other")
    key = store.key("generate", {"a": 1}, None)

    def publish_later():  # rank 0, in another process, finishes after a while
        time.sleep(0.3)
        (store.path("generate", key)).mkdir(parents=True)
        (store.path("generate", key) / DONE).write_text("now")

    rank0 = threading.Thread(target=publish_later)
    rank0.start()
    start = time.monotonic()
    waited = store.build("generate", {"a": 1}, None, lambda d: calls.append(1))
    rank0.join()
    assert calls == [0] and collectives == []  # rank 1 ran nothing and made no collective call
    assert time.monotonic() - start >= 0.25 and waited.path == store.path("generate", key)


def test_under_torchrun_a_collective_stage_runs_on_every_rank_and_rank_0_publishes(tmp_path, monkeypatch):
    import json

    collectives: list[str] = []
    calls: list[int] = []
    _ranks(monkeypatch, 1, collectives)
    art = Store(tmp_path).build("finetune", {"a": 1}, None, lambda d: calls.append(1), collective=True)
    assert calls == [1] and collectives == ["broadcast", "barrier"] and not art.path.exists()
    _ranks(monkeypatch, 0, collectives)
    art = Store(tmp_path).build("finetune", {"a": 1}, None, lambda d: calls.append(0), collective=True)
    meta = json.loads(art.file("meta.json").read_text())
    assert calls == [1, 0] and (meta["world_size"], meta["ranks"]) == (2, 2)


def test_the_training_stages_are_collective_and_the_others_are_not():
    """Which call sites ask every rank: the stages that train (base, alignment, imported alignment, fine-tune)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    found = {}
    for path in [*root.glob("pact/**/*.py"), *root.glob("baselines/*.py"), *root.glob("experiments/**/*.py"),
                 *root.glob("analysis/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "build" and len(node.args) >= 4:
                stage = node.args[0].value if isinstance(node.args[0], ast.Constant) else node.args[0].id
                collective = any(k.arg == "collective" and k.value.value for k in node.keywords)
                found[(path.name, stage)] = collective
    assert {k for k, v in found.items() if v} == {("pipeline.py", "stage"), ("pipeline.py", "align"),
                                                  ("finetune.py", "finetune")}
    assert ("pipeline.py", "generate") in found and ("tokens_stage.py", "tokens") in found
