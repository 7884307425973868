"""POST/GET/DELETE /v1/files on a real database: streamed to the tenant's data area, read by
the pre-flight's own row reader, refused without a word of the file's contents."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import DataFile
from aif.settings import Settings
from aif.tenants import Role, create_tenant
from aif.web.deps import install_problem_handlers
from aif.web.routes import files

SECRET = "SECRET-MARKER-93c1"
ROWS = [{"text": f"Sparks from pole {i}", "label": "emergency"} for i in range(5)]


def _client(sessions: sessionmaker[Session], home: Path, **settings: object) -> TestClient:
    """The files router alone, on an app set up as aif.web.deps expects."""
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(files.router)
    app.state.sessions = sessions
    app.state.settings = Settings(home=home, **settings)  # type: ignore[arg-type]
    return TestClient(app)


@pytest.fixture
def keys(sessions: sessionmaker[Session]) -> dict[str, dict[str, str]]:
    """Authorization headers of two tenants and of the centre's staff."""
    with sessions() as s:
        made = {name: create_tenant(s, name, role) for name, role in
                (("acme", Role.tenant), ("globex", Role.tenant), ("centre", Role.staff))}
        s.commit()
    return {name: {"Authorization": f"Bearer {c.api_key}"} for name, c in made.items()}


def _jsonl(rows: list[object]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _csv(rows: list[dict[str, str]]) -> bytes:
    return ("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows)).encode()


def _parquet(rows: list[dict[str, str]]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


def _stored(home: Path) -> list[Path]:
    return sorted(p for p in (home / "data").rglob("*") if p.is_file())


@pytest.mark.parametrize(("name", "content"), [("tickets.jsonl", _jsonl(ROWS)),
                                               ("tickets.csv", _csv(ROWS)),
                                               ("Tickets.PARQUET", _parquet(ROWS))])
def test_a_good_file_is_stored_owner_only_with_its_sha256(
    sessions: sessionmaker[Session], tmp_path: Path, keys: dict, name: str, content: bytes
) -> None:
    client = _client(sessions, tmp_path)
    answer = client.post("/v1/files", headers=keys["acme"], files={"file": (name, content)})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert (body["filename"], body["tenant"], body["rows"]) == (name, "acme", len(ROWS))
    assert body["size_bytes"] == len(content)
    assert answer.headers["location"] == f"/v1/files/{body['id']}"
    [path] = _stored(tmp_path)
    suffix = Path(name).suffix.lower()
    assert path == (tmp_path / "data" / "acme" / "files" / body["id"] / f"data{suffix}")
    assert path.read_bytes() == content and path.stat().st_mode & 0o777 == 0o600
    for folder in (path.parent, *path.parent.parents):
        if folder == tmp_path:
            break
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    with sessions() as s:
        assert s.get_one(DataFile, body["id"]).path == str(path)
    assert client.get(f"/v1/files/{body['id']}", headers=keys["acme"]).json() == body
    assert client.get("/v1/files", headers=keys["acme"]).json() == {"data": [body]}


def test_bad_rows_are_refused_by_line_and_rule_without_their_contents(
    sessions: sessionmaker[Session], tmp_path: Path, keys: dict
) -> None:
    client = _client(sessions, tmp_path)
    content = (_jsonl(ROWS[:2]) + f'{{"text": "{SECRET}" oops\n'.encode() + _jsonl([[SECRET]])
               + SECRET.encode() + b"\xff\n" + _jsonl(ROWS[2:]))
    answer = client.post("/v1/files", headers=keys["acme"],
                         files={"file": ("tickets.jsonl", content)})
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["field"] == "file" and problem["title"] == "Unusable file"
    assert "3 bad row(s) in 8 read" in problem["detail"]
    assert "line 3: invalid JSON: Expecting ',' delimiter (column" in problem["detail"]
    assert "line 4: expected an object with columns, got list" in problem["detail"]
    assert "line 5: not UTF-8 text (byte 18)" in problem["detail"]
    assert SECRET not in answer.text
    assert _stored(tmp_path) == []
    assert client.get("/v1/files", headers=keys["acme"]).json() == {"data": []}
    # Within a fraction the caller allows, the same file is taken (the job checks again).
    allowed = client.post("/v1/files?max_bad_fraction=0.5", headers=keys["acme"],
                          files={"file": ("tickets.jsonl", content)})
    assert allowed.status_code == 201 and allowed.json()["rows"] == 8


@pytest.mark.parametrize(("name", "content", "rule"), [
    ("t.parquet", b"PAR1 not really " + SECRET.encode(), "not a readable Parquet file"),
    ("t.csv", b"text,label\n" + SECRET.encode() + b",\xff\xfe\n", "not a UTF-8 CSV file"),
    ("t.jsonl", b"\n\n", "there are no rows"),
])
def test_an_unreadable_file_is_refused_and_deleted(
    sessions: sessionmaker[Session], tmp_path: Path, keys: dict, name: str, content: bytes,
    rule: str
) -> None:
    answer = _client(sessions, tmp_path).post("/v1/files", headers=keys["acme"],
                                              files={"file": (name, content)})
    assert answer.status_code == 422 and rule in answer.json()["detail"]
    assert SECRET not in answer.text and _stored(tmp_path) == []


@pytest.mark.parametrize("size", [1500, 200_000])  # over the limit streamed / declared
def test_a_file_over_the_limit_is_refused_with_413(
    sessions: sessionmaker[Session], tmp_path: Path, keys: dict, size: int
) -> None:
    client = _client(sessions, tmp_path, max_upload_bytes=1000)
    content = _jsonl([{"text": "x" * size, "label": "y"}])
    answer = client.post("/v1/files", headers=keys["acme"], files={"file": ("t.jsonl", content)})
    assert answer.status_code == 413
    assert answer.json()["detail"] == ("file: larger than the limit of 1000 bytes "
                                       "(AIF_MAX_UPLOAD_BYTES)")
    assert _stored(tmp_path) == []
    small = client.post("/v1/files", headers=keys["acme"],
                        files={"file": ("t.jsonl", _jsonl(ROWS))})
    assert small.status_code == 201


@pytest.mark.parametrize(("request_kwargs", "rule"), [
    ({"files": {"file": ("tickets.txt", b"{}\n")}}, "must end in .jsonl, .csv or .parquet"),
    ({"files": {"file": ("tickets", b"{}\n")}}, "must end in .jsonl, .csv or .parquet"),
    ({"files": {"data": ("t.jsonl", b"{}\n")}}, "one multipart/form-data part named 'file'"),
    ({"files": {"file": ("t.jsonl", b"{}\n")}, "data": {"x": "1"}}, "and no other part"),
    ({"json": {"file": "t.jsonl"}}, "send multipart/form-data"),
])
def test_a_malformed_upload_is_refused_naming_the_rule(
    sessions: sessionmaker[Session], tmp_path: Path, keys: dict, request_kwargs: dict, rule: str
) -> None:
    answer = _client(sessions, tmp_path).post("/v1/files", headers=keys["acme"],
                                              **request_kwargs)
    assert answer.status_code == 422 and rule in answer.json()["detail"], answer.text
    assert answer.json()["field"] == "file" and _stored(tmp_path) == []


def test_the_sent_name_is_metadata_only(sessions: sessionmaker[Session], tmp_path: Path,
                                        keys: dict) -> None:
    # Raw, as a client that does not escape the name would send it.
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; '
            b'filename="..\\..\\../etc/ev\til\x1bname.jsonl"\r\n\r\n'
            + _jsonl(ROWS) + b"\r\n--b--\r\n")
    answer = _client(sessions, tmp_path).post(
        "/v1/files", content=body,
        headers={**keys["acme"], "Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["filename"] == "ev_il_name.jsonl"
    [path] = _stored(tmp_path)
    assert path.name == "data.jsonl" and path.parent.name == answer.json()["id"]


def test_files_are_scoped_to_their_tenant_and_deleted_with_their_bytes(
    sessions: sessionmaker[Session], tmp_path: Path, keys: dict
) -> None:
    client = _client(sessions, tmp_path)
    file_id = client.post("/v1/files", headers=keys["acme"],
                          files={"file": ("t.jsonl", _jsonl(ROWS))}).json()["id"]
    unknown = client.get("/v1/files/file-000000000000000000000000", headers=keys["globex"])
    other = client.get(f"/v1/files/{file_id}", headers=keys["globex"])
    assert other.status_code == unknown.status_code == 404
    assert other.json() == {**unknown.json(), "detail": f"no file {file_id}"}
    assert client.get("/v1/files", headers=keys["globex"]).json() == {"data": []}
    assert client.delete(f"/v1/files/{file_id}", headers=keys["globex"]).status_code == 404
    for method in ("get", "delete"):
        anonymous = client.request(method, f"/v1/files/{file_id}")
        assert anonymous.status_code == 401 and file_id not in anonymous.text
    assert client.post("/v1/files", files={"file": ("t.jsonl", b"{}\n")}).status_code == 401
    # Staff read every tenant's files but delete only their own.
    assert client.get(f"/v1/files/{file_id}", headers=keys["centre"]).json()["tenant"] == "acme"
    assert [f["id"] for f in client.get("/v1/files", headers=keys["centre"]).json()["data"]] \
        == [file_id]
    assert client.delete(f"/v1/files/{file_id}", headers=keys["centre"]).status_code == 403
    assert len(_stored(tmp_path)) == 1

    assert client.delete(f"/v1/files/{file_id}", headers=keys["acme"]).status_code == 204
    assert _stored(tmp_path) == []
    assert not (tmp_path / "data" / "acme" / "files" / file_id).exists()
    assert client.get(f"/v1/files/{file_id}", headers=keys["acme"]).status_code == 404
    assert client.delete(f"/v1/files/{file_id}", headers=keys["acme"]).status_code == 404
    with sessions() as s:
        assert s.get(DataFile, file_id) is None


def test_a_body_cut_short_stores_nothing(sessions: sessionmaker[Session], tmp_path: Path,
                                         keys: dict) -> None:
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
            + _jsonl(ROWS))  # no closing boundary: the client went away mid-file
    answer = _client(sessions, tmp_path).post(
        "/v1/files", content=body,
        headers={**keys["acme"], "Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 422 and "no complete part named 'file'" in answer.text
    assert _stored(tmp_path) == []
