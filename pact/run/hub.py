"""Where the models a run loads by name come from, checked before any work: a local folder must hold a model, a
hub id must be in the local Hugging Face cache or reachable on the hub with access granted. Every failure is a
:class:`pact.run.config.ConfigError` naming the config key, the model and what to do, so the command line prints one
line and exits with status 2 (pact.run.cli) instead of failing in the first stage that loads the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pact.models.loading import ADAPTER_BASE, looks_local
from pact.run.config import NO_GUARD, ConfigError

CONFIG_FILE = "config.json"  # what transformers reads first from a model's folder or hub repository


def named_models(cfg: Any) -> list[tuple[str, str, str | None]]:
    """(config key, model, revision) of every model a run of ``cfg`` loads by name: a hub-kind model's aligned and
    base model, and the guard. The toy model is trained here and an imported model's source is checked by its own
    import stage (pact.models.model_import)."""
    out: list[tuple[str, str, str | None]] = []
    m = cfg.model
    if m.kind == "hub":
        out += [(f"model.{role}", str(m[role]), m.get("revision") or None) for role in ("aligned", "base") if m[role]]
    if cfg.guard.name != NO_GUARD and cfg.guard.model:
        out.append(("guard.model", str(cfg.guard.model), cfg.guard.get("revision") or None))
    return out


def check_named_models(cfg: Any, resolve_hub: bool = True) -> None:
    """:func:`check_model` on every model of :func:`named_models`; ``resolve_hub=False`` checks local folders only."""
    for key, name, revision in named_models(cfg):
        check_model(key, name, revision, resolve_hub)


def check_model(key: str, name: str, revision: str | None = None, resolve_hub: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``name`` (the value of config key ``key``) can be loaded: a local folder
    (a path, or a name that exists on disk as transformers reads it) must hold a saved model or adapter; a hub id
    must resolve (:func:`check_hub_model`, skipped when ``resolve_hub`` is False)."""
    folder = Path(name).expanduser()
    if looks_local(name) or folder.is_dir():
        if not folder.is_dir():
            raise ConfigError(f"{key}={name}: no such model directory; point {key}= at a folder holding the model's "
                              f"{CONFIG_FILE}, or at a hub id")
        if not any((folder / f).is_file() for f in (CONFIG_FILE, ADAPTER_BASE)):
            raise ConfigError(f"{key}={name}: the folder holds no {CONFIG_FILE} (nor a saved adapter's "
                              f"{ADAPTER_BASE}); point {key}= at the folder save_pretrained or `hf download "
                              "--local-dir` wrote")
        return
    if resolve_hub:
        check_hub_model(key, name, revision)


def _weights_cached(repo_id: str, revision: str | None) -> bool:
    """Whether the local Hugging Face cache holds the config and weights (or their shard index) of ``repo_id`` at
    ``revision``: what transformers loads without the hub. Reads the cache only."""
    import huggingface_hub as hub
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME

    def cached(filename: str) -> bool:
        return isinstance(hub.try_to_load_from_cache(repo_id, filename, revision=revision), str)

    weights = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    return cached(CONFIG_FILE) and any(cached(f) for f in weights)


def check_hub_model(key: str, repo_id: str, revision: str | None = None) -> None:
    """Raise :class:`ConfigError` unless hub model ``repo_id`` (at ``revision``; None: main) is in the local cache
    or, with ``HF_HUB_OFFLINE`` unset, its config file answers a metadata request (one HEAD request, no download):
    the failure is classified as gated, no such model, revision or config file, or hub unreachable."""
    import huggingface_hub as hub
    from huggingface_hub import errors

    at = f"@{revision}" if revision else ""
    local = f"or point {key}=<local folder> at a local copy"
    pinned = f" --revision {revision}" if revision else ""
    download = f"download it where the hub is reachable (`hf download {repo_id}{pinned}`) {local}"
    try:
        if _weights_cached(repo_id, revision):
            return
    except errors.HFValidationError as err:  # neither a repo id nor a folder that exists
        raise ConfigError(f"{key}={repo_id}: no such model directory, nor a hub id ({err})") from None
    cache = hub.constants.HF_HUB_CACHE
    if hub.constants.HF_HUB_OFFLINE:
        raise ConfigError(f"{key}={repo_id}{at} is not in the local Hugging Face cache ({cache}) and HF_HUB_OFFLINE "
                          f"is set: {download}")
    url = hub.hf_hub_url(repo_id, CONFIG_FILE, revision=revision)
    try:
        hub.get_hf_file_metadata(url, timeout=hub.constants.HF_HUB_ETAG_TIMEOUT)
    except errors.GatedRepoError:  # before RepositoryNotFoundError, its parent class
        raise ConfigError(f"{key}={repo_id} is gated on the Hugging Face hub and this machine has no access: log in "
                          f"with `hf auth login` (or HF_TOKEN) and accept the licence at "
                          f"{hub.constants.ENDPOINT}/{repo_id}, {local}") from None
    except errors.RevisionNotFoundError:
        raise ConfigError(f"{key.rpartition('.')[0]}.revision={revision}: no such revision of {key}={repo_id} on the "
                          f"Hugging Face hub; pin an existing commit or branch, {local}") from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(f"{key}={repo_id}: no such model on the Hugging Face hub (or a private one: log in with "
                          f"`hf auth login` or HF_TOKEN); correct {key}, {local}") from None
    except errors.EntryNotFoundError:
        raise ConfigError(f"{key}={repo_id}{at} has no {CONFIG_FILE} on the Hugging Face hub: not a transformers "
                          f"model; correct {key}, {local}") from None
    except (OSError, errors.HTTPError) as err:  # no network, DNS, proxy, timeout, a server error
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ConfigError(f"{key}={repo_id}{at} is not in the local Hugging Face cache ({cache}) and the hub is "
                          f"unreachable ({type(err).__name__}: {reason}): {download}") from None
