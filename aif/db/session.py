"""Engine and session factory; the schema is created and upgraded by Alembic only."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _sqlite_dir(url: str) -> None:
    """A SQLite file's folder must exist before anything, Alembic included, opens it."""
    path = url.removeprefix("sqlite:///")
    if url.startswith("sqlite") and path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        _sqlite_dir(url)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            # WAL lets the web app read while the orchestrator writes; FKs for cascades.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def upgrade(url: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def session_factory(url: str) -> sessionmaker[Session]:
    """Migrate to the newest schema, then hand out sessions bound to one engine."""
    _sqlite_dir(url)
    upgrade(url)
    return sessionmaker(make_engine(url), expire_on_commit=False)


def transaction_cache(session: Session, name: str) -> dict:
    """A dict of the session's current transaction, empty again in the next one: what one
    transaction reads once and reuses (intake's batch of records shares one), such as rows
    that the identity map would not keep (it holds them weakly) and lookups of absent rows
    (which it does not keep at all)."""
    transaction = session.get_transaction()
    kept = session.info.get(name)
    if kept is None or kept[0] is not transaction:
        kept = session.info[name] = (transaction, {})
    return kept[1]
