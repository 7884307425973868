"""Active loading on vLLM-compatible inference servers (replicas), one outcome per endpoint.

`POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` (vLLM with
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`), then `GET /v1/models` to see that the adapter is
(or is no longer) listed. Connection errors and 5xx are retried with exponential back-off;
an endpoint that still fails is reported as failed without holding up the others. Adapter
names come from the registry (`<tenant>.<label>.v<n>`, tenants have no dots), so no tenant's
model name can address another tenant's adapter.
"""

from __future__ import annotations

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

LOADED, UNLOADED = "loaded", "unloaded"


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


class Endpoints:
    def __init__(self, urls: list[str], timeout_s: float, attempts: int) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout_s = timeout_s
        self._call = retry(retry=retry_if_exception(_transient),
                           stop=stop_after_attempt(attempts),
                           wait=wait_exponential(multiplier=0.5, max=8), reraise=True)(self._post)

    def _post(self, url: str, body: dict[str, str]) -> None:
        httpx.post(url, json=body, timeout=self.timeout_s).raise_for_status()

    def listed(self, base: str) -> set[str]:
        answer = httpx.get(f"{base}/v1/models", timeout=self.timeout_s)
        answer.raise_for_status()
        return {m["id"] for m in answer.json()["data"]}

    def load(self, served_name: str, path: str) -> dict[str, str]:
        """Load on every endpoint; endpoint -> `loaded` or `failed: <reason>`."""
        return {base: self._one(base, "load", served_name, path) for base in self.urls}

    def unload(self, served_name: str) -> dict[str, str]:
        return {base: self._one(base, "unload", served_name) for base in self.urls}

    def _one(self, base: str, verb: str, served_name: str, path: str | None = None) -> str:
        body = {"lora_name": served_name} | ({"lora_path": path} if path else {})
        try:
            if (served_name in self.listed(base)) == (verb == "load"):
                # Already so: a hand-off tried again after a crash, or a restarted server.
                return LOADED if verb == "load" else UNLOADED
            self._call(f"{base}/v1/{verb}_lora_adapter", body)
            present = served_name in self.listed(base)
        except httpx.HTTPStatusError as exc:
            return f"failed: {verb} answered HTTP {exc.response.status_code}"
        except httpx.HTTPError as exc:
            return f"failed: {type(exc).__name__}"
        if present != (verb == "load"):
            return f"failed: /v1/models {'still lists' if present else 'does not list'}"
        return LOADED if verb == "load" else UNLOADED
