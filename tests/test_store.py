import pytest

from pact.store import DONE, Store


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
    from pact.store import code_hash

    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.txt").write_text("ignored")
    before = code_hash(tmp_path)
    (tmp_path / "notes.txt").write_text("still ignored")
    assert code_hash(tmp_path) == before
    (tmp_path / "a.py").write_text("x = 2\n")
    assert code_hash(tmp_path) != before


@pytest.mark.slow  # over ~3 s: kept out of `make test-fast`
def test_seeded_run_copies_upstream_models_across_code_versions(micro_upstream, tmp_path, monkeypatch):
    """experiments.seeded: a store whose code hashes differ (another code version) gets the source store's base and
    aligned model copied in, bit for bit, instead of training them; an ambiguous source is refused."""
    import json
    import shutil

    from experiments.seeded import Seeder
    from pact import pipeline as P
    from pact.config import validate
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
