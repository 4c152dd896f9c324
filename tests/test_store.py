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
