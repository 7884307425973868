"""Training files a tenant uploads, for requests to name by `file_id` instead of a path.

An upload streams straight to the tenant's data root (`<data_root>/<tenant>/files/<id>/`,
owner-only), hashed and counted as it arrives, so a file over `max_upload_bytes` is refused
without ever being held whole. The stored file is then read by the rows check
(`aif.stages.ROWS_CHECK`, `python -m finetune.rows`) in a process of its own: the same
reading code as the pre-flight stage, without the web app importing any stage code. A file
it refuses is deleted, and the answer names lines and rules, never the file's contents. The
name the client sent is kept for people only; the stored path is ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from aif import audit, storage
from aif.db.models import DataFile
from aif.erasure import ErasureError, erase_file, jobs_trained_on
from aif.quotas import dataset_limit
from aif.stages import ROWS_CHECK
from aif.storage import private_dirs
from aif.web.deps import (
    CurrentTenant,
    Problem,
    SessionDep,
    SettingsDep,
    UtcDateTime,
    changeable,
    problems,
    readable,
    tenant_scope,
)

router = APIRouter(prefix="/v1/files", tags=["files"], responses=problems(401))

EXTENSIONS = (".jsonl", ".csv", ".parquet")
CHECK_TIMEOUT_S = 300.0
_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and part headers around the file
_MAX_NAME = 255


class FilePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    tenant: str
    filename: str
    sha256: str
    size_bytes: int
    rows: int
    created_at: UtcDateTime


class FilesPublic(BaseModel):
    data: list[FilePublic]


def _invalid(detail: str) -> Problem:
    return Problem(422, "Invalid request", detail, field="file")


def _display_name(sent: bytes) -> str:
    """The client's file name for people: its last path component, printable characters
    only, at most 255 characters with its extension kept."""
    name = sent.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c if c.isprintable() else "_" for c in name).strip()
    suffix = Path(name).suffix
    return name if len(name) <= _MAX_NAME else name[: _MAX_NAME - len(suffix)] + suffix


class _FilePart:
    """Multipart parser callbacks that write the one part named `file` into `folder`, with
    a running sha256 and size; any other part, or a second file, is refused."""

    def __init__(self, root: Path, folder: Path, limit: int, rule: str) -> None:
        self.root, self.folder, self.limit, self.rule = root, folder, limit, rule
        self.header_name = self.header_value = self.disposition = b""
        self.out: BinaryIO | None = None
        self.path: Path | None = None
        self.filename = ""
        self.digest = hashlib.sha256()
        self.size = 0
        self.complete = False

    def callbacks(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "on_part_begin", "on_header_field", "on_header_value", "on_header_end",
            "on_headers_finished", "on_part_data", "on_part_end")}

    def on_part_begin(self) -> None:
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if self.header_name.lower() == b"content-disposition":
            self.disposition = self.header_value
        self.header_name = self.header_value = b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if self.out is not None or options.get(b"name") != b"file" or b"filename" not in options:
            raise _invalid("file: send one multipart/form-data part named 'file', with a file "
                           "name, and no other part")
        self.filename = _display_name(options[b"filename"])
        suffix = Path(self.filename).suffix.lower()
        if suffix not in EXTENSIONS:
            raise _invalid("file: the file name must end in .jsonl, .csv or .parquet")
        private_dirs(self.root, self.folder)
        self.path = self.folder / f"data{suffix}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        self.out = os.fdopen(os.open(self.path, flags, 0o600), "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        assert self.out is not None  # headers come first
        chunk = data[start:end]
        self.size += len(chunk)
        if self.size > self.limit:
            raise _too_large(self.limit, self.rule)
        self.digest.update(chunk)
        self.out.write(chunk)

    def on_part_end(self) -> None:
        self.complete = True


def _too_large(limit: int, rule: str) -> Problem:
    return Problem(413, "Content too large", f"file: larger than the limit of {limit} bytes "
                   f"({rule})", field="file")


async def _receive(request: Request, part: _FilePart) -> None:
    """Stream the request body through the parser into `part`'s file."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise _invalid("file: send multipart/form-data with a part named 'file'")
    body_limit = part.limit + _OVERHEAD_BYTES
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > body_limit:
        raise _too_large(part.limit, part.rule)  # refused before a byte of it is read
    parser = MultipartParser(options[b"boundary"], part.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > body_limit:
                raise _too_large(part.limit, part.rule)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise _invalid("file: not a well-formed multipart/form-data body") from exc
    finally:
        if part.out is not None:
            part.out.close()
    if part.path is None or not part.complete:
        raise _invalid("file: the request has no complete part named 'file'")


def _check(path: Path, max_bad_fraction: float) -> dict[str, Any]:
    """The rows check's summary of the stored file; Problem 422 when it is unusable."""
    command = ROWS_CHECK.argv(path, max_bad_fraction)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise _invalid(f"file: not read within {CHECK_TIMEOUT_S:g} s") from exc
    try:
        summary = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        summary = None
    if done.returncode not in ROWS_CHECK.answers or not isinstance(summary, dict):
        raise Problem(500, "Internal error",
                      f"file: the check of the file failed (exit code {done.returncode})")
    if done.returncode != 0:
        listed = "; ".join(summary["problems"])
        more = f"; ... and {summary['more_problems']} more" if summary["more_problems"] else ""
        raise Problem(422, "Unusable file",
                      f"file: {summary['bad_rows']} bad row(s) in {summary['rows']} read, "
                      f"max_bad_fraction {max_bad_fraction:g}: {listed}{more}", field="file")
    return summary


@router.post(
    "", status_code=201, responses=problems(413, 422),
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": {"file": {
            "type": "string", "format": "binary",
            "description": "Training rows: .jsonl, .csv or .parquet."}}}}}}},
)
async def upload_file(
    request: Request, response: Response, principal: CurrentTenant, session: SessionDep,
    settings: SettingsDep,
    max_bad_fraction: Annotated[float, Query(
        ge=0.0, lt=1.0, description="Bad rows allowed, as a fraction of the rows read; the "
        "job's recipe checks its own fraction again.")] = 0.0,
) -> FilePublic:
    """Store a training file in the caller's data area after reading it as pre-flight does;
    answers its id and sha256. Refused: over `max_upload_bytes` or the tenant's dataset-size
    quota (413), another extension or bad rows beyond `max_bad_fraction` (422, naming lines
    and rules)."""
    limit, rule = settings.max_upload_bytes, "AIF_MAX_UPLOAD_BYTES"
    quota = dataset_limit(session, principal.tenant, settings.quota_defaults)
    if quota is not None and quota.value < limit:
        limit, rule = int(quota.value), f"quota: dataset size, {quota}"
    session.close()  # no database connection is held while the body streams in
    file_id = f"file-{secrets.token_hex(12)}"
    root = settings.data_root.resolve()
    folder = storage.data_root(root, principal.tenant) / "files" / file_id
    part = _FilePart(root, folder, limit, rule)
    try:
        await _receive(request, part)
        assert part.path is not None
        summary = await run_in_threadpool(_check, part.path, max_bad_fraction)
        row = DataFile(id=file_id, tenant=principal.tenant, filename=part.filename,
                       path=str(part.path), sha256=part.digest.hexdigest(),
                       size_bytes=part.size, rows=summary["rows"])
        session.add(row)
        audit.record(session, audit.Action.upload, actor=audit.api_actor(principal.key_id),
                     tenant=principal.tenant, file_id=file_id, payload_sha256=row.sha256)
        session.commit()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # refused or failed: keep no bytes
        raise
    response.headers["Location"] = f"{router.prefix}/{file_id}"
    return FilePublic.model_validate(row)


@router.get("")
def list_files(principal: CurrentTenant, session: SessionDep) -> FilesPublic:
    """The caller's files, newest first (staff: every tenant's)."""
    query = (select(DataFile).where(tenant_scope(principal, DataFile.tenant))
             .order_by(DataFile.created_at.desc(), DataFile.id))
    return FilesPublic(data=[FilePublic.model_validate(f) for f in session.scalars(query)])


def get_file(file_id: str, principal: CurrentTenant, session: SessionDep) -> DataFile:
    return readable(session, DataFile, file_id, principal, "file_id")


FileDep = Annotated[DataFile, Depends(get_file)]


@router.get("/{file_id}", responses=problems(404))
def read_file(file: FileDep) -> FilePublic:
    return FilePublic.model_validate(file)


@router.delete("/{file_id}", status_code=204, responses=problems(403, 404, 409, 503))
def delete_file(
    file: FileDep, principal: CurrentTenant, session: SessionDep, settings: SettingsDep,
    request: Request,
    cascade: Annotated[bool, Query(description="Also erase every job trained on the file: "
                                   "its adapter, scores, samples and events; handed-off "
                                   "models are announced as `model.retired`.")] = False,
) -> Response:
    """Remove the stored bytes, then the record (bytes that cannot be removed keep the
    record, so the delete can be retried). While jobs that named the file exist, only
    `cascade=true` deletes it (409 otherwise), erasing them with it."""
    changeable(file, principal, "file_id")
    actor = audit.api_actor(principal.key_id)
    if cascade:
        session.close()  # erasure waits for running stages to stop, in sessions of its own
        try:
            erase_file(request.app.state.sessions, settings, file.id, actor)
        except ErasureError as exc:
            raise Problem(503, "Service unavailable", f"file_id: {exc}",
                          field="file_id") from exc
        return Response(status_code=204)
    if trained := jobs_trained_on(session, file):
        raise Problem(409, "Conflict", f"file_id: {len(trained)} job(s) were trained on this "
                      "file; delete with cascade=true to erase them too", field="file_id")
    folder = Path(file.path).parent
    # The file's own folder, never one above it.
    removed = storage.remove(folder if folder.name == file.id else Path(file.path))
    audit.record(session, audit.Action.file_deleted, actor=actor, tenant=file.tenant,
                 file_id=file.id, cascade=False, files_sha256=removed)
    session.delete(file)
    session.commit()
    return Response(status_code=204)
