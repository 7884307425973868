"""Optional call to the inference server's LoRA-loading endpoint (vLLM's API shape)."""

from __future__ import annotations

import httpx
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential


@retry(
    retry=retry_if_exception_type(httpx.TransportError),
    stop=stop_after_attempt(5),
    wait=wait_exponential(multiplier=0.5, max=8),
    reraise=True,
)
def notify_inference(url: str, lora_name: str, adapter_dir: str) -> None:
    """Ask the server to load the adapter; 4xx/5xx are final, connection errors are retried."""
    response = httpx.post(url, json={"lora_name": lora_name, "lora_path": adapter_dir}, timeout=30)
    response.raise_for_status()
