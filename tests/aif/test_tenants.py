"""Tenants and their keys on a real database: created once, shown once, stored hashed."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from aif.cli import app
from aif.db.models import ApiKey, Tenant, utcnow
from aif.db.session import session_factory
from aif.settings import get_settings
from aif.tenants import (
    Role,
    TenantError,
    authenticate,
    create_tenant,
    list_tenants,
    revoke,
    signing_secret,
)


@pytest.mark.store
def test_a_key_authenticates_its_tenant_until_revoked(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        acme = create_tenant(s, "acme")
        staff = create_tenant(s, "centre", Role.staff)
        s.commit()
        assert authenticate(s, acme.api_key).tenant == "acme"
        assert not authenticate(s, acme.api_key).staff
        assert authenticate(s, staff.api_key).staff
        # Only a hash is stored: the key itself is nowhere in the row.
        row = s.get_one(ApiKey, acme.api_key_id)
        assert acme.api_key.rsplit("_", 1)[1] not in (row.secret_sha256, row.id)
        flipped = acme.api_key[:-1] + ("A" if acme.api_key[-1] != "A" else "B")
        for wrong in ("", "Bearer x", acme.api_key + "x", flipped,
                      staff.api_key.replace(staff.api_key_id, acme.api_key_id)):
            assert authenticate(s, wrong) is None
        assert signing_secret(s, acme.signing_key_id) == ("acme", acme.signing_secret)
        assert revoke(s, "acme", acme.api_key_id) == [acme.api_key_id]
        s.commit()
        assert authenticate(s, acme.api_key) is None
        assert signing_secret(s, acme.signing_key_id) is not None  # only that key went
        assert sorted(revoke(s, "acme")) == [acme.signing_key_id]
        s.commit()
        assert signing_secret(s, acme.signing_key_id) is None


@pytest.mark.parametrize(("name", "rule"), [("Acme", "lowercase"), ("-x", "starting with"),
                                           ("a" * 64, "at most 63")])
def test_bad_tenant_names_are_refused(sessions: sessionmaker[Session], name: str,
                                      rule: str) -> None:
    with sessions() as s, pytest.raises(TenantError, match=rule):
        create_tenant(s, name)


@pytest.mark.store
def test_a_tenant_is_created_once(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        create_tenant(s, "acme")
        s.commit()
        with pytest.raises(TenantError, match="exists already"):
            create_tenant(s, "acme")
        with pytest.raises(TenantError, match="no unrevoked key nope"):
            revoke(s, "acme", "nope")
        with pytest.raises(TenantError, match="no such tenant"):
            revoke(s, "nobody")


def test_cli_prints_keys_once_and_lists_no_secret(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    made = runner.invoke(app, ["tenants", "create", "acme"])
    assert made.exit_code == 0, made.output
    key = next(w for w in made.output.split() if w.startswith("aif_"))
    secret = made.output.split("(HMAC-SHA256)")[1].split()[0]
    listed = runner.invoke(app, ["tenants", "list"])
    assert listed.exit_code == 0 and "acme" in listed.output
    assert key not in listed.output and secret not in listed.output
    assert runner.invoke(app, ["tenants", "create", "acme"]).exit_code == 2
    revoked = runner.invoke(app, ["tenants", "revoke", "acme"])
    assert revoked.exit_code == 0 and "revoked 2 key(s)" in revoked.output
    with session_factory(get_settings().db_url)() as s:
        assert authenticate(s, key) is None
        assert list(list_tenants(s)) == ["acme"]
        assert s.scalars(select(ApiKey.revoked_at)).one() is not None


def test_add_key_gives_an_existing_tenant_another_key_shown_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's tenant is made by `make demo`, whose API key is never shown: `aif tenants
    add-key demo` is how one signs in as it."""
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    with session_factory(get_settings().db_url)() as s:
        create_tenant(s, "demo")
        s.commit()
    runner = CliRunner()
    added = runner.invoke(app, ["tenants", "add-key", "demo"])
    assert added.exit_code == 0, added.output
    key = next(w for w in added.output.split() if w.startswith("aif_"))
    with session_factory(get_settings().db_url)() as s:
        who = authenticate(s, key)
        assert who is not None and (who.tenant, who.role) == ("demo", Role.tenant)
    listed = runner.invoke(app, ["tenants", "list"]).output
    kinds = [line.split("│")[3].strip() for line in listed.splitlines() if "│ demo" in line]
    assert key not in listed and kinds.count("api") == 2
    staff = runner.invoke(app, ["tenants", "add-key", "demo", "--staff"])
    with session_factory(get_settings().db_url)() as s:
        staff_key = next(w for w in staff.output.split() if w.startswith("aif_"))
        assert authenticate(s, staff_key).staff  # type: ignore[union-attr]
    refused = runner.invoke(app, ["tenants", "add-key", "nobody"])
    assert refused.exit_code == 2 and "tenant nobody: no such tenant" in refused.output
    with session_factory(get_settings().db_url)() as s:
        s.get_one(Tenant, "demo").erased_at = utcnow()
        s.commit()
    refused = runner.invoke(app, ["tenants", "add-key", "demo"])
    assert refused.exit_code == 2 and "erased" in refused.output
