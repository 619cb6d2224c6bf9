"""The store's settings section (composed into ``churnguard/settings.py``) and its error, importable without
loading the store itself."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from features.settings import Section


class StoreSettings(Section):
    """Where the customer store lives (``CHURN_STORE__URL``, ``CHURN_STORE__PATH``, ...)."""

    url: str | None = Field(
        None, description="postgresql://user:pass@host:port/db for PostgreSQL; unset: the embedded store."
    )
    path: Path | None = Field(None, description="Folder of the embedded store; default <data_dir>/store.")
    compact_after: int = Field(
        16, ge=2, description="Embedded store: merge the segment files once an ingest leaves more than this many."
    )


class StoreError(ValueError):
    """The store cannot be used as asked: unreachable, written by an incompatible version, locked, ..."""
