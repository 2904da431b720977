"""One tenant's rows of a table, a page at a time, in id order (ids are time-ordered uuid7)."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, select

T = TypeVar("T")


def tenant_page(model: type[T], tenant_id: str, page_size: int, after: str | None) -> Select[T]:
    """The query for up to ``page_size`` rows after the id ``after`` (None: from the start)."""
    table: Any = model
    query = select(model).where(table.tenant_id == tenant_id).order_by(table.id).limit(page_size)
    return query.where(table.id > after) if after else query
