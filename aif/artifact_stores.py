"""Where handed-off adapters are published, chosen by the URI scheme of `AIF_ARTIFACT_STORE`.

The layout suits directory-based loaders (vLLM's filesystem resolver, NIM's
`NIM_PEFT_SOURCE`, LoRAX): one directory per model version, named as the server will serve
it (`<store>/<served name>/adapter_config.json, adapter_model.safetensors, ...`). Every file
is read back from the store after upload and its sha256 compared with the one training
recorded, so bytes that changed on the shared file system or in transit stop the hand-off.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from stagefiles.checksums import sha256_file


class ArtifactStoreError(ValueError):
    """The store is misconfigured, or what it holds is not what training wrote."""


class ArtifactStore(Protocol):
    def publish(self, source: Path, served_name: str, files_sha256: dict[str, str]) -> str:
        """Copy `source`'s files as `served_name`, verify each digest; return the folder URI."""

    def remove(self, served_name: str) -> None:
        """Delete a published version (retire or erasure)."""


def _mismatch(name: str, expected: str, found: str) -> ArtifactStoreError:
    return ArtifactStoreError(f"artifact {name}: sha256 in the store is {found[:12]}..., "
                              f"training recorded {expected[:12]}...; the upload is corrupt")


@dataclass(frozen=True)
class FileStore:
    """The shared file system: a folder every inference server mounts."""

    root: Path

    def publish(self, source: Path, served_name: str, files_sha256: dict[str, str]) -> str:
        target = self.root / served_name
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True, mode=0o755)
        for name, expected in files_sha256.items():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, target / name)
            if (found := sha256_file(target / name)) != expected:
                raise _mismatch(name, expected, found)
        return target.resolve().as_uri()

    def remove(self, served_name: str) -> None:
        shutil.rmtree(self.root / served_name, ignore_errors=True)


@dataclass(frozen=True)
class S3Store:
    """An S3-compatible object store (AWS, MinIO, Ceph) through boto3."""

    bucket: str
    prefix: str
    endpoint_url: str | None

    def _client(self):  # boto3 clients have no static type
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def publish(self, source: Path, served_name: str, files_sha256: dict[str, str]) -> str:
        client, folder = self._client(), f"{self.prefix}{served_name}/"
        for name, expected in files_sha256.items():
            client.upload_file(str(source / name), self.bucket, folder + name)
            body = client.get_object(Bucket=self.bucket, Key=folder + name)["Body"]
            if (found := hashlib.file_digest(body, "sha256").hexdigest()) != expected:
                raise _mismatch(name, expected, found)
        return f"s3://{self.bucket}/{folder}"

    def remove(self, served_name: str) -> None:
        client, folder = self._client(), f"{self.prefix}{served_name}/"
        listed = client.list_objects_v2(Bucket=self.bucket, Prefix=folder).get("Contents", [])
        for item in listed:
            client.delete_object(Bucket=self.bucket, Key=item["Key"])


def _file(uri: str, endpoint_url: str | None) -> ArtifactStore:
    return FileStore(Path(urlsplit(uri).path))


def _s3(uri: str, endpoint_url: str | None) -> ArtifactStore:
    parts = urlsplit(uri)
    prefix = parts.path.lstrip("/")
    return S3Store(parts.netloc, prefix if not prefix or prefix.endswith("/") else prefix + "/",
                   endpoint_url)


STORES: dict[str, Callable[[str, str | None], ArtifactStore]] = {"file": _file, "s3": _s3}


def artifact_store(uri: str, endpoint_url: str | None = None) -> ArtifactStore:
    """The store a URI names; an unknown scheme is refused with the ones there are."""
    scheme = urlsplit(uri).scheme
    if scheme not in STORES:
        hint = get_close_matches(scheme, STORES, n=1, cutoff=0.5)
        did_you_mean = f" Did you mean {hint[0]!r}?" if hint else ""
        raise ArtifactStoreError(f"AIF_ARTIFACT_STORE: unknown scheme {scheme!r}.{did_you_mean}"
                                 f" Available: {', '.join(STORES)}")
    return STORES[scheme](uri, endpoint_url)
