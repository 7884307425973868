"""Content hashes of large files, computed once and remembered.

Caches keyed by a file's content (a base model's scores, a GGUF file's tokenizer) must not
trust its path, size or modification time alone: a file rewritten in place within the
clock's resolution, or a different file at the same path, would hit. So the key is always
the sha256 of the bytes; only the *lookup* of a hash already computed goes through
(path, size, mtime_ns, inode), so a 500 MB model is read once, not per job.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from stagefiles.checksums import sha256_file

MEMO_FILE = "content_hashes.json"


def remembered_sha256(path: Path, memo_dir: Path | None) -> str:
    """sha256 of `path`; looked up in (or added to) `memo_dir`'s memo when one is given."""
    path = path.resolve()
    if memo_dir is None:
        return sha256_file(path)
    stat = path.stat()
    stamp = f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"
    memo_path = memo_dir / MEMO_FILE
    try:
        memo = json.loads(memo_path.read_text())
    except (FileNotFoundError, ValueError):
        memo = {}
    known = memo.get(str(path))
    if isinstance(known, dict) and known.get("stamp") == stamp:
        return str(known["sha256"])
    digest = sha256_file(path)
    memo[str(path)] = {"stamp": stamp, "sha256": digest}
    memo_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{MEMO_FILE}.", dir=memo_dir)
    with os.fdopen(fd, "w") as fh:
        json.dump(memo, fh, indent=1, sort_keys=True)
    os.replace(tmp, memo_path)  # atomic: a concurrent writer's entry may be lost, no file torn
    return digest


def tree_sha256(root: Path, memo_dir: Path | None) -> str:
    """One hash over every regular file under `root`: relative names and contents."""
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(root)}\0{remembered_sha256(file, memo_dir)}\n".encode())
    return digest.hexdigest()
