"""Tenants and their credentials: API keys for HTTP, signing keys for Kafka request events.

An API key reads `aif_<id>_<secret>`: the id finds its row, the secret is compared by its
sha256 in constant time, and only the hash is stored, so a copy of the database lets no one
call the API. A signing key is a shared HMAC secret a partner signs its Kafka records with
(see `events.signing`); it must be kept as is to verify signatures. Both are shown once, when
created. A staff key belongs to the centre's operators and may read every tenant.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from aif import audit
from aif.db.models import ApiKey, SigningKey, Tenant, utcnow

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")  # as the CloudEvents `tenant` attribute
_KEY = re.compile(r"^aif_([a-z0-9]{12})_([A-Za-z0-9_-]{43})$")


class Role(StrEnum):
    tenant = "tenant"  # reads and writes its own tenant's resources
    staff = "staff"  # the centre's operators: read every tenant


class TenantError(ValueError):
    """A tenant command cannot be carried out; the message says which rule."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant whose resources it may see, and whether it is staff."""

    tenant: str
    role: Role
    key_id: str

    @property
    def staff(self) -> bool:
        return self.role is Role.staff

    def may_read(self, tenant: str) -> bool:
        """A tenant reads its own resources; staff read every tenant's."""
        return self.staff or tenant == self.tenant


@dataclass(frozen=True)
class Credentials:
    """What `aif tenants create` prints once."""

    tenant: str
    api_key_id: str
    api_key: str
    signing_key_id: str
    signing_secret: str


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _new_id() -> str:
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))


def create_tenant(session: Session, name: str, role: Role = Role.tenant) -> Credentials:
    """A new tenant with one API key and one signing key; the caller commits."""
    if not TENANT_NAME.match(name):
        raise TenantError("tenant: lowercase letters, digits and '-', at most 63 characters, "
                          "starting with a letter or digit")
    if (existing := session.get(Tenant, name)) is not None:
        erased = " (erased; a name is never given out again)" if existing.erased_at else ""
        raise TenantError(f"tenant {name} exists already{erased}")
    session.add(Tenant(name=name))
    session.flush()  # the keys refer to it; without a relationship the ORM cannot order them
    api_id, api_key = add_api_key(session, name, role)
    signing_id, signing_secret = add_signing_key(session, name)
    return Credentials(name, api_id, api_key, signing_id, signing_secret)


def add_api_key(session: Session, tenant: str, role: Role = Role.tenant) -> tuple[str, str]:
    """(key id, the key itself): the key is not stored and cannot be shown again."""
    key_id, secret = _new_id(), secrets.token_urlsafe(32)
    session.add(ApiKey(id=key_id, tenant=tenant, role=role.value, secret_sha256=_sha256(secret)))
    audit.record(session, audit.Action.key_created, actor=audit.OPERATOR, tenant=tenant,
                 key_id=key_id, kind="api", role=role.value)
    return key_id, f"aif_{key_id}_{secret}"


def another_api_key(session: Session, tenant: str, role: Role = Role.tenant
                    ) -> tuple[str, str]:
    """A new API key of an existing tenant (`aif tenants add-key`): one whose key was lost, or
    never shown, as the demo's tenant's; (key id, the key). The caller commits."""
    row = session.get(Tenant, tenant)
    if row is None:
        raise TenantError(f"tenant {tenant}: no such tenant")
    if row.erased_at is not None:
        raise TenantError(f"tenant {tenant}: erased; it gets no keys")
    return add_api_key(session, tenant, role)


def add_signing_key(session: Session, tenant: str) -> tuple[str, str]:
    key_id, secret = _new_id(), secrets.token_hex(32)
    session.add(SigningKey(id=key_id, tenant=tenant, secret=secret))
    audit.record(session, audit.Action.key_created, actor=audit.OPERATOR, tenant=tenant,
                 key_id=key_id, kind="signing")
    return key_id, secret


def authenticate(session: Session, bearer: str) -> Principal | None:
    """The principal of a valid, unrevoked API key; None for anything else."""
    match = _KEY.match(bearer)
    if match is None:
        return None
    row = session.get(ApiKey, match[1])
    # Compare even without a row, so a wrong id costs the same time as a wrong secret.
    expected = row.secret_sha256 if row is not None else "0" * 64
    if not hmac.compare_digest(expected, _sha256(match[2])) or row is None:
        return None
    if row.revoked_at is not None:
        return None
    return Principal(tenant=row.tenant, role=Role(row.role), key_id=row.id)


def signing_secret(session: Session, key_id: str) -> tuple[str, str] | None:
    """(tenant, secret) of an unrevoked signing key."""
    row = session.get(SigningKey, key_id)
    if row is None or row.revoked_at is not None:
        return None
    return row.tenant, row.secret


def revoke(session: Session, tenant: str, key_id: str | None = None) -> list[str]:
    """Revoke one key of the tenant (API or signing), or all of them; the ids revoked."""
    if session.get(Tenant, tenant) is None:
        raise TenantError(f"tenant {tenant}: no such tenant")
    now, revoked = utcnow(), []
    for model in (ApiKey, SigningKey):
        query = select(model).where(model.tenant == tenant, model.revoked_at.is_(None))
        if key_id is not None:
            query = query.where(model.id == key_id)
        for row in session.scalars(query):
            row.revoked_at = now
            revoked.append(row.id)
            audit.record(session, audit.Action.key_revoked, actor=audit.OPERATOR,
                         tenant=tenant, key_id=row.id)
    if key_id is not None and not revoked:
        raise TenantError(f"tenant {tenant}: no unrevoked key {key_id}")
    return revoked


@dataclass(frozen=True)
class KeyInfo:
    id: str
    kind: str  # "api" or "signing"
    role: str
    created_at: str
    revoked: bool


def list_tenants(session: Session) -> dict[str, list[KeyInfo]]:
    """Every tenant with its keys (ids and dates only, never secrets)."""
    out: dict[str, list[KeyInfo]] = {t: [] for t in session.scalars(
        select(Tenant.name).order_by(Tenant.name))}
    for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at)):
        out[row.tenant].append(KeyInfo(row.id, "api", row.role, row.created_at.isoformat(),
                                       row.revoked_at is not None))
    for srow in session.scalars(select(SigningKey).order_by(SigningKey.created_at)):
        out[srow.tenant].append(KeyInfo(srow.id, "signing", "-", srow.created_at.isoformat(),
                                        srow.revoked_at is not None))
    return out


def erased_tenants(session: Session) -> set[str]:
    """Names kept as tombstones by `aif tenants erase`: never given out again."""
    return set(session.scalars(select(Tenant.name).where(Tenant.erased_at.is_not(None))))
