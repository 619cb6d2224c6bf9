"""Embedded DuckDB connections, configured the one way churnguard needs them.

The session time zone is pinned to UTC: the data contract is naive UTC, and any other zone shifts casts between
TIMESTAMP and TIMESTAMPTZ by DST hours (``../shared/docs/stack-notes.md``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb


def connect(threads: int | None = None, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    # spill to the system temp dir, not a .tmp/ folder in whatever directory the user happens to be in
    config: dict[str, str | int] = {"temp_directory": str(Path(tempfile.gettempdir()) / "churnguard-duckdb")}
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
