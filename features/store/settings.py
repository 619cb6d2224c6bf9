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


class EmptyStoreError(ValueError):
    """A read found no data in the store: nothing has been ingested there yet (bad input, not an outage)."""

    def __init__(self, location: str) -> None:
        super().__init__(
            f"the customer store at {location} holds no transactions yet: load your data with "
            "`churn ingest --data DIR`, or pass --data DIR to read files"
        )
        self.location = location
