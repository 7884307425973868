"""sha256 of files and the `sha256sum -c`-compatible manifest written beside every adapter.

Shared because training writes the manifest and the orchestrator rewrites it when it adds
the AI-Act pack at hand-off; both must hash the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "SHA256SUMS"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path) -> dict[str, str]:
    """`SHA256SUMS` of every file; return name -> sha256, the manifest's own included."""
    sums = {str(p.relative_to(directory)): sha256_file(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (directory / MANIFEST).write_text("".join(f"{h}  {n}\n" for n, h in sums.items()))
    return {**sums, MANIFEST: sha256_file(directory / MANIFEST)}
