"""Every model a run loads by name is checked before any stage builds (pact.run.hub): a missing local folder, a hub
model that is neither cached nor reachable, a gated or unknown one end in one line naming the config key, exit status 2,
and no store."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import errors

from pact.run.config import ConfigError, compose_config
from pact.run.hub import CONFIG_FILE, check_model, named_models

ALIGNED = "meta-llama/Llama-3.1-8B-Instruct"  # conf/model/llama3.1-8b-instruct.yaml


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, online (each test stubs the hub's metadata call itself)."""
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return cache


def _run_one_line(cfg, capsys, monkeypatch) -> str:
    """experiments.run's run() of ``cfg`` from the command line's wrapper: its one error line (exit status 2)."""
    from experiments.run import run
    from pact.run.cli import EXIT_USER_ERROR, run_cli

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: run(cfg))
    assert exit_.value.code == EXIT_USER_ERROR
    [line] = capsys.readouterr().err.strip().splitlines()
    return line


def test_the_models_a_run_names():
    assert named_models(compose_config([], check=False)) == []  # the toy model is trained here
    cfg = compose_config(["model=llama3.1-8b-instruct", "guard=llama_guard3", "guard.revision=abc"], check=False)
    assert named_models(cfg) == [("model.aligned", ALIGNED, None), ("model.base", "meta-llama/Llama-3.1-8B", None),
                                 ("guard.model", "meta-llama/Llama-Guard-3-8B", "abc")]
    assert named_models(compose_config(["experiment=smollm2_cpu"], check=False)) == []  # imported: its own stage


def test_offline_uncached_hub_model_stops_before_any_stage(tmp_path, empty_cache, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = compose_config(["model=llama3.1-8b-instruct", f"store_dir={tmp_path / 'store'}",
                          f"runs_dir={tmp_path / 'runs'}"], check=False)
    line = _run_one_line(cfg, capsys, monkeypatch)
    assert line.startswith(f"error: model.aligned={ALIGNED} is not in the local Hugging Face cache ({empty_cache}) "
                           "and HF_HUB_OFFLINE is set")
    assert f"`hf download {ALIGNED}`" in line and "point model.aligned=<local folder> at a local copy" in line
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()  # nothing ran


@pytest.mark.slow
def test_offline_command_names_the_model_in_one_line(tmp_path):
    from tests.test_architecture import _cli

    done = _cli(tmp_path, "experiments.run", "model=llama3.1-8b-instruct", "data=toy",
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")})
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: model.aligned={ALIGNED} is not in the local Hugging Face cache") and \
        "HF_HUB_OFFLINE" in line
    assert not (tmp_path / "outputs" / "store").exists()


def _hub_error(cls: type[Exception], status: int) -> Exception:
    """A hub error as huggingface_hub raises it for a response of ``status``."""
    import httpx2  # huggingface_hub's HTTP client: its errors carry the response

    url = huggingface_hub.hf_hub_url(ALIGNED, CONFIG_FILE)
    return cls("refused", response=httpx2.Response(status, request=httpx2.Request("HEAD", url)))


@pytest.mark.parametrize("raised, expected", [
    (lambda: _hub_error(errors.GatedRepoError, 401),
     f"error: model.aligned={ALIGNED} is gated on the Hugging Face hub and this machine has no access: log in with "
     f"`hf auth login` (or HF_TOKEN) and accept the licence at https://huggingface.co/{ALIGNED}, or point "
     "model.aligned=<local folder> at a local copy"),
    (lambda: _hub_error(errors.RepositoryNotFoundError, 404),
     f"error: model.aligned={ALIGNED}: no such model on the Hugging Face hub (or a private one: log in with `hf auth "
     "login` or HF_TOKEN); correct model.aligned, or point model.aligned=<local folder> at a local copy"),
    (lambda: OSError("[Errno -2] Name or service not known"),
     f"is not in the local Hugging Face cache ({{cache}}) and the hub is unreachable (OSError: [Errno -2] Name or "
     f"service not known): download it where the hub is reachable (`hf download {ALIGNED}`) or point "
     "model.aligned=<local folder> at a local copy"),
], ids=["gated", "not_found", "unreachable"])
def test_hub_failures_are_classified(tmp_path, empty_cache, capsys, monkeypatch, raised, expected):
    asked = []

    def metadata(url, **kwargs):
        asked.append(url)
        raise raised()

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    cfg = compose_config(["model=llama3.1-8b-instruct", f"store_dir={tmp_path / 'store'}"], check=False)
    line = _run_one_line(cfg, capsys, monkeypatch)
    assert expected.format(cache=empty_cache) in line, line
    assert asked == [huggingface_hub.hf_hub_url(ALIGNED, CONFIG_FILE)]  # one metadata request, the aligned model's
    assert not (tmp_path / "store").exists()


def test_a_guard_revision_that_does_not_exist_names_its_key(empty_cache, monkeypatch):
    def metadata(url, **kwargs):
        raise _hub_error(errors.RevisionNotFoundError, 404)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", metadata)
    with pytest.raises(ConfigError, match=r"^guard\.revision=abc: no such revision of guard\.model=org/guard "):
        check_model("guard.model", "org/guard", "abc")


def _cache_snapshot(cache: Path, repo_id: str, files: list[str]) -> None:
    """``files`` of ``repo_id``'s main as the Hugging Face cache lays them out."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name in files:
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / name).write_text("{}")


def test_a_cached_hub_model_needs_no_hub(empty_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _cache_snapshot(empty_cache, "org/cached", [CONFIG_FILE, "model.safetensors"])
    check_model("model.aligned", "org/cached")
    _cache_snapshot(empty_cache, "org/config_only", [CONFIG_FILE])  # its weights never downloaded
    with pytest.raises(ConfigError, match=r"^model\.base=org/config_only is not in the local Hugging Face cache"):
        check_model("model.base", "org/config_only")


def test_a_local_model_folder_must_exist_and_hold_a_model(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no_such_model"
    cfg = compose_config(["model=llama3.1-8b-instruct", f"model.aligned={missing}", f"store_dir={tmp_path / 'store'}"],
                         check=False)
    assert _run_one_line(cfg, capsys, monkeypatch) == (
        f"error: model.aligned={missing}: no such model directory; point model.aligned= at a folder holding the "
        "model's config.json, or at a hub id")
    assert not (tmp_path / "store").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^guard\.model=.*/empty: the folder holds no config\.json"):
        check_model("guard.model", str(tmp_path / "empty"))
    (tmp_path / "empty" / CONFIG_FILE).write_text("{}")
    check_model("guard.model", str(tmp_path / "empty"))
