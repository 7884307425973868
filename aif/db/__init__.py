"""Job store: SQLAlchemy models, engine/session factory and Alembic migrations."""
