"""Archives recognised by their first bytes, so that a renamed one is refused like any other.

Training data is read as one JSONL, CSV or Parquet file; an archive (which could hold `../`
members, links or a decompression bomb) is never unpacked. The orchestrator checks local
files with it and the pre-flight stage its downloads, so it lives in the shared contract.
"""

from __future__ import annotations

from pathlib import Path

HEAD_BYTES = 262  # a tar header's "ustar" magic ends at offset 262

_MAGIC = (
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"(\xb5/\xfd", "zstd"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (257, b"ustar", "tar"),
)


def archive_kind(head: bytes) -> str | None:
    """The archive or compression format whose magic bytes `head` starts with, or None."""
    return next((kind for offset, magic, kind in _MAGIC
                 if head[offset:offset + len(magic)] == magic), None)


def file_archive_kind(path: Path) -> str | None:
    """`archive_kind` of the file's first bytes."""
    with path.open("rb") as fh:
        return archive_kind(fh.read(HEAD_BYTES))


def archive_rule(kind: str) -> str:
    """The one wording of the rule, for every party that applies it."""
    return (f"a {kind} archive or compressed file is not accepted; send one uncompressed "
            ".jsonl, .csv or .parquet file")
