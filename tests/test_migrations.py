"""The migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from oncall_server.storage.engine import create_engine
from oncall_server.storage.models import Base


def test_every_index_of_the_models_has_its_own_name() -> None:
    """The naming convention names an index by its first column: two sharing it would collide."""
    names = Counter(index.name for table in Base.metadata.tables.values() for index in table.indexes)
    assert [name for name, count in names.items() if count > 1] == []


async def test_the_migrated_schema_is_the_models_schema(database_url: str) -> None:
    engine = create_engine(database_url)  # migrated by the session's backend_urls fixture
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
            indexes = await conn.run_sync(
                lambda sync: {i["name"] for i in sa.inspect(sync).get_indexes("incidents")}
            )
    finally:
        await engine.dispose()
    assert differences == []
    assert "ix_incidents_tenant_id_status" in indexes
