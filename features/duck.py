"""Embedded DuckDB connections, configured the one way churnguard needs them.

The session time zone is pinned to UTC: the data contract is naive UTC, and any other zone shifts casts between
TIMESTAMP and TIMESTAMPTZ by DST hours (``../shared/docs/stack-notes.md``).
"""

from __future__ import annotations

import duckdb


def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | int] = {}
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    con = duckdb.connect(config=config)
    con.execute("SET TimeZone = 'UTC'")  # ICU is statically linked but only loads after connect
    return con


def quote(identifier: str) -> str:
    """Quote a column or table name for DuckDB SQL."""
    return '"' + identifier.replace('"', '""') + '"'
