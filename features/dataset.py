"""A validated dataset: the three contract tables as Arrow, plus what validation found.

Everything downstream (features, labels, training, batch scoring, the API) takes a ``Dataset``; only
``features/validate.py`` makes one from raw files, and ``Dataset.from_records`` makes one from already-validated
records (the API's pydantic-checked request body), so both paths end in the same Arrow schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from features.contract import CUSTOMERS, EVENTS, TRANSACTIONS, TableContract


@dataclass(frozen=True)
class TableReport:
    """Row accounting for one input table: read = kept + sum(rejected)."""

    name: str
    source: str
    rows_read: int
    rows_kept: int
    rejected: dict[str, int] = field(default_factory=dict)
    ignored_columns: tuple[str, ...] = ()

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True)
class ValidationReport:
    tables: tuple[TableReport, ...]
    n_customers: int
    first_timestamp: datetime | None
    last_timestamp: datetime | None
    events_per_type: dict[str, int]

    @property
    def rows_read(self) -> int:
        return sum(t.rows_read for t in self.tables)

    @property
    def rows_kept(self) -> int:
        return sum(t.rows_kept for t in self.tables)

    @property
    def rows_rejected(self) -> int:
        return sum(t.rows_rejected for t in self.tables)

    def rejected_by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tables:
            for reason, n in t.rejected.items():
                out[f"{t.name}: {reason}"] = n
        return out


@dataclass(frozen=True)
class Dataset:
    """Clean contract tables (naive-UTC ``timestamp[us]``), ready for ``build_features`` and ``build_labels``."""

    transactions: pa.Table
    events: pa.Table
    customers: pa.Table
    report: ValidationReport | None = None

    def __post_init__(self) -> None:
        for contract in (TRANSACTIONS, EVENTS, CUSTOMERS):
            table = getattr(self, contract.name)
            if not table.schema.equals(contract.arrow_schema, check_metadata=False):
                raise TypeError(f"{contract.name} does not match the contract schema:\n{table.schema}")

    @property
    def data_end(self) -> datetime:
        """End of observation: the last transaction time stamp. Label windows must end by then."""
        if self.transactions.num_rows == 0:
            raise ValueError("the dataset has no transactions")
        return pc.max(self.transactions["timestamp"]).as_py()

    @property
    def data_start(self) -> datetime:
        if self.transactions.num_rows == 0:
            raise ValueError("the dataset has no transactions")
        return pc.min(self.transactions["timestamp"]).as_py()

    @classmethod
    def from_records(
        cls,
        transactions: Iterable[dict] | pa.Table,
        events: Iterable[dict] | pa.Table = (),
        customers: Iterable[dict] | pa.Table = (),
    ) -> Dataset:
        """Build from rows that are already valid (e.g. pydantic-checked); missing optional columns become null."""
        return cls(
            transactions=_to_contract(TRANSACTIONS, transactions),
            events=_to_contract(EVENTS, events),
            customers=_to_contract(CUSTOMERS, customers),
        )

    def customer_ids(self) -> pa.Array:
        """Every customer that appears in any clean table."""
        ids = pa.chunked_array(
            [t["customer_id"].combine_chunks() for t in (self.transactions, self.events, self.customers)],
            type=pa.string(),
        )
        return pc.unique(ids)


def _to_contract(contract: TableContract, data: Iterable[dict] | pa.Table) -> pa.Table:
    schema = contract.arrow_schema
    if not isinstance(data, pa.Table):
        rows = list(data)
        if not rows:
            return schema.empty_table()
        data = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
    columns = []
    for f in schema:
        column = data[f.name].cast(f.type) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
        if pa.types.is_timestamp(f.type):  # the contract keeps time stamps to the second
            column = pc.floor_temporal(column, unit="second")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
