"""Alembic environment: the engine comes from ``voms.db.migrate`` or the settings."""

from alembic import context

from voms.config import get_settings
from voms.db.engine import make_engine
from voms.db.tables import metadata

engine = context.config.attributes.get("engine") or make_engine(get_settings())

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
