"""``build_features(data, entities)``: the one point-in-time entry point for training, batch scoring and the API.

``entities`` is a table of (``customer_id``, ``as_of``) pairs, as in Feast's ``get_historical_features``: training
passes many historical snapshots, batch scoring passes every customer at one date, the API passes the customers
of one request. For each pair only rows strictly before ``as_of`` are used, so appending later rows never changes
a feature (``tests/test_features.py`` checks exactly that).

The query is built once with Ibis from the registry (``features/registry.py``) over *unbound* tables and compiled
to SQL; the SQL is cached and run on DuckDB over Arrow tables. That keeps one definition for every caller, costs
no compilation per API request, and lets the same Ibis expression run on another Ibis backend (e.g. Spark) by
configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from functools import lru_cache

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import CUSTOMERS, EVENTS, TRANSACTIONS
from features.dataset import Dataset
from features.duck import connect
from features.engines import POSITION, TABLE_NAMES, Engine, default_engine
from features.registry import DEFAULT_EVENT_TYPES, FeatureSpec, feature_registry

KEYS = ("customer_id", "as_of")
ROUND_DECIMALS = 9
ENTITY_SCHEMA = pa.schema([("customer_id", pa.string()), ("as_of", pa.timestamp("us"))])
_QUERY_ENTITY_SCHEMA = pa.schema([*ENTITY_SCHEMA, pa.field(POSITION, pa.int64())])


def build_features(
    data: Dataset,
    entities: pa.Table,
    *,
    event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES,
    engine: Engine | None = None,
) -> pa.Table:
    """Features for each (customer_id, as_of) entity: ``customer_id``, ``as_of`` and one column per feature.

    Rows come back in the order of ``entities``. One query covers every as_of: with several dates, what does not
    depend on the date (order parts, purchase days and their gaps, first purchases per category and channel, events
    older than every window) is aggregated once per customer and then joined to the entities; with one date every
    row is cut first. Every feature aggregate groups by the entity's integer position (a customer at a date).
    """
    entities = check_entities(entities)
    engine = (engine or default_engine()).for_size(data.transactions.num_rows + data.events.num_rows)
    sql = compiled_sql(tuple(event_types), engine.dialect, single_date(entities))
    schema = _result_schema(tuple(event_types))
    indexed = entities.append_column(POSITION, pa.array(np.arange(entities.num_rows, dtype=np.int64)))
    if not indexed.num_rows:
        return _empty_features(event_types)
    out = engine.run(sql, data, indexed, schema)
    order = np.argsort(out[POSITION].to_numpy(), kind="stable")
    return out.take(pa.array(order)).drop_columns([POSITION])


def feature_names(event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES) -> list[str]:
    return [s.name for s in feature_registry(tuple(event_types))]


SMALL_ENTITY_ROWS = 50_000  # up to this many rows (an API lookup), entities_at runs on pyarrow: no DuckDB set-up


def entities_at(data: Dataset, as_of: datetime | date | Sequence[datetime | date]) -> pa.Table:
    """Every customer known before ``as_of`` (a transaction, event or sign-up before it), one row per as_of."""
    dates = [as_of] if isinstance(as_of, date | datetime) else list(as_of)
    rows = data.transactions.num_rows + data.events.num_rows + data.customers.num_rows
    if rows <= SMALL_ENTITY_ROWS:  # the same rule on a few rows: DuckDB's connection and temp table cost ~10 ms
        return _small_entities_at(data, [_as_timestamp(d) for d in dates])
    con = connect()
    con.register("tx", data.transactions.select(["customer_id", "timestamp"]))
    con.register("ev", data.events.select(["customer_id", "timestamp"]))
    con.register(
        "cu", data.customers.select(["customer_id", "signup_date"]).rename_columns(["customer_id", "timestamp"])
    )
    con.execute(
        "CREATE TEMP TABLE first_seen AS SELECT customer_id, min(timestamp) AS first_ts FROM "
        "(SELECT * FROM tx UNION ALL SELECT * FROM ev UNION ALL SELECT * FROM cu WHERE timestamp IS NOT NULL) "
        "GROUP BY customer_id"
    )
    parts = []
    for d in dates:
        ts = _as_timestamp(d)
        ids = con.execute(
            "SELECT customer_id FROM first_seen WHERE first_ts < ? ORDER BY customer_id", [ts]
        ).to_arrow_table()["customer_id"]
        parts.append(pa.table({"customer_id": ids, "as_of": pa.array([ts] * len(ids), pa.timestamp("us"))}))
    con.close()
    return pa.concat_tables(parts).cast(ENTITY_SCHEMA) if parts else ENTITY_SCHEMA.empty_table()


def _small_entities_at(data: Dataset, dates: list[datetime]) -> pa.Table:
    schema = pa.schema([("customer_id", pa.string()), ("timestamp", pa.timestamp("us"))])
    parts = [
        data.transactions.select(["customer_id", "timestamp"]),
        data.events.select(["customer_id", "timestamp"]),
        data.customers.select(["customer_id", "signup_date"]),
    ]
    times = pa.concat_tables([pa.Table.from_arrays(p.columns, schema=schema) for p in parts])
    times = times.filter(pc.is_valid(times["timestamp"]))
    first = times.group_by("customer_id").aggregate([("timestamp", "min")])
    out = []
    for ts in dates:
        ids = first.filter(pc.less(first["timestamp_min"], pa.scalar(ts, pa.timestamp("us"))))["customer_id"]
        ids = pc.take(ids, pc.sort_indices(ids)) if len(ids) else ids
        out.append(pa.table({"customer_id": ids, "as_of": pa.array([ts] * len(ids), pa.timestamp("us"))}))
    return pa.concat_tables(out).cast(ENTITY_SCHEMA) if out else ENTITY_SCHEMA.empty_table()


# --------------------------------------------------------------------------------------------- the query


@lru_cache(maxsize=16)
def compiled_sql(event_types: tuple[str, ...], dialect: str = "duckdb", one_date: bool = False) -> str:
    return ibis.to_sql(feature_query(event_types, one_date), dialect=dialect)


def single_date(entities: pa.Table) -> bool:
    """Whether every entity has the same as_of: the query for one date needs no join per source."""
    return entities.num_rows > 0 and pc.count_distinct(entities["as_of"]).as_py() == 1


def feature_query(event_types: tuple[str, ...], one_date: bool = False) -> ir.Table:
    """The whole feature computation as one Ibis expression over unbound contract tables.

    The entity table may hold many as_of dates; sources aggregate per entity position (a customer at a date).
    """
    specs = feature_registry(event_types)
    tx, ev, cu, _ = contract_tables()
    ent = ibis.table(ibis.Schema.from_pyarrow(_QUERY_ENTITY_SCHEMA), name=TABLE_NAMES["entities"])
    sources = _sources(tx, ev, cu, ent, one_date)
    wide = ent
    for source, table in sources.items():
        aggregates = {s.name: s.expr(table) for s in specs if s.source == source}
        if not aggregates:
            continue
        agg = table.group_by(POSITION).aggregate(**aggregates)
        joined = wide.left_join(agg, POSITION)
        wide = joined.select(*[wide[c] for c in wide.columns], *[agg[c] for c in aggregates])
    wide = wide.mutate(
        **{s.name: wide[s.name].fill_null(s.fill) for s in specs if s.fill is not None and s.source != "derived"}
    )
    for spec in (s for s in specs if s.source == "derived"):
        wide = wide.mutate(**{spec.name: spec.expr(wide)})
    return wide.select(*KEYS, *[_final(wide[s.name], s) for s in specs], POSITION)


def _final(value: ir.Value, spec: FeatureSpec) -> ir.Value:
    """Floats are rounded to 9 decimals: parallel sums add in varying order, and bits that differ from run to run
    (1e-12 on a total) would make training irreproducible and batch and API scores differ in the last digit."""
    value = value.cast(spec.dtype)
    if spec.dtype == "float64":
        value = value.round(ROUND_DECIMALS)
    return value.name(spec.name)


def contract_tables() -> tuple[ir.Table, ir.Table, ir.Table, ir.Table]:
    """Unbound Ibis tables (transactions, events, customers, entities) that queries are written against."""
    schemas = (TRANSACTIONS.arrow_schema, EVENTS.arrow_schema, CUSTOMERS.arrow_schema, ENTITY_SCHEMA)
    names = ("transactions", "events", "customers", "entities")
    return tuple(
        ibis.table(ibis.Schema.from_pyarrow(s), name=TABLE_NAMES[n]) for s, n in zip(schemas, names, strict=True)
    )


KEY = "customer_key"  # an integer per customer inside the query
# the event features look back at most this far (``n_30``, ``n_prev_30``, ``n_90`` below)
EVENT_WINDOW_DAYS = 90


def _sources(tx: ir.Table, ev: ir.Table, cu: ir.Table, entities: ir.Table, one_date: bool) -> dict[str, ir.Table]:
    """The per-entity sources the registry aggregates (see ``features/registry.py``).

    What does not depend on as_of is aggregated once per customer, then cut at each entity's as_of, so that a
    query for many dates does it once: transaction lines become order *parts* (lines sharing customer, order id
    and time stamp: the cut keeps or drops a part whole), purchase days get their gap to the previous one, the
    first purchase per category and channel is kept, and the events too old for any window collapse to their
    first and last time stamp per customer and type. With one as_of (``one_date``) every row is cut before any of
    that and the customer key is the entity position, so no source joins the entities again.
    """
    if one_date:
        keys = entities.select("customer_id", "as_of", **{KEY: entities[POSITION]})
        ent = entities.aggregate(as_of=entities.as_of.max())  # one row: the date
    else:  # an integer key per customer (its first entity position): string keys cost more than a group-by
        keys = entities.group_by("customer_id").aggregate(**{KEY: entities[POSITION].min()})
        ent = entities.join(keys, "customer_id").select(KEY, "as_of", POSITION)

    def keyed(table: ir.Table) -> ir.Table:  # also drops the rows of customers that are not entities
        joined = table.join(keys, "customer_id")
        if one_date:
            joined = _cut(joined, joined.as_of)
        return joined.select(KEY, *[c for c in table.columns if c != "customer_id"])

    def before(table: ir.Table) -> ir.Table:
        return _at_entity(table, ent) if one_date else _before(table, ent)

    raw = keyed(tx.select("customer_id", "order_id", "timestamp", "amount"))
    bought = raw.amount >= 0
    parts = raw.group_by([KEY, "order_id", "timestamp"]).aggregate(
        amount=raw.amount.sum(),
        refund=raw.amount.sum(where=~bought),
        # counts as doubles: DuckDB sums BIGINT into HUGEINT, which Ibis would not cast back (exact below 2**53)
        refund_lines=raw.count(where=~bought).cast("float64"),
        purchase_lines=raw.count(where=bought),
    )
    # an order: parts sharing an order id; without an id, the lines of one time stamp. Refund lines that share the
    # id count against its value; groups of refund lines alone (cancellation invoices) are not orders.
    at = ibis.ifelse(parts.order_id.isnull(), parts.timestamp, None).name("at")
    parts = parts.mutate(at)
    # Each source below joins its own narrow slice of the parts to the entities: one shared joined table would be
    # materialised by the engine (as_of dates x parts rows); separate joins stream into their aggregates.
    lines = before(parts.select(KEY, "timestamp", "amount", "refund", "refund_lines"))
    several = parts
    if not one_date:  # most orders are one part: the order itself whenever it is before as_of, whatever the date
        parts = parts.mutate(n_parts=parts.count().over(group_by=[KEY, "order_id", "at"]))
        single = parts.filter((parts.n_parts == 1) & (parts.purchase_lines > 0))
        single = before(single.select(KEY, "timestamp", value="amount"))
        several = parts.filter(parts.n_parts > 1)
    several = before(several.select(KEY, "timestamp", "order_id", "at", "amount", "purchase_lines"))
    bought_part = several.purchase_lines > 0
    orders = several.group_by([POSITION, "order_id", "at"]).aggregate(
        value=several.amount.sum(), age=several.age.max(where=bought_part), purchase_lines=several.purchase_lines.max()
    )
    orders = orders.filter(orders.purchase_lines > 0).select(POSITION, "value", "age")
    if not one_date:
        orders = single.select(POSITION, "value", "age").union(orders)

    # purchase days and the gap to the previous one: the days before a day are before as_of whenever it is
    purchases = parts.filter(parts.purchase_lines > 0).select(KEY, "timestamp")
    day_index = (purchases.timestamp.truncate("D").epoch_seconds() / 86400).round().cast("int64")
    days = purchases.mutate(day=day_index).group_by([KEY, "day"]).aggregate(timestamp=purchases.timestamp.min())
    days = days.mutate(gap=(days.day - days.day.lag().over(group_by=KEY, order_by=days.day)).cast("float64"))
    days = before(days)

    # the first purchase of each category and channel: bought before as_of = first bought before as_of
    bought_lines = keyed(tx.filter(tx.amount >= 0).select("customer_id", "category", "channel", "timestamp"))
    kinds = bought_lines.group_by([KEY, "category", "channel"]).aggregate(timestamp=bought_lines.timestamp.min())
    firsts = [
        kinds.filter(kinds[kind].notnull())
        .group_by([KEY, kinds[kind].name("value")])
        .aggregate(timestamp=kinds.timestamp.min())
        .mutate(kind=ibis.literal(kind))
        for kind in ("category", "channel")
    ]
    firsts = before(firsts[0].union(firsts[1]))

    # events older than every window of every entity (before the earliest as_of minus the longest window) count
    # only for the first and last event: one row per customer and type instead of one per event (many dates only)
    horizon = entities.as_of.min().epoch_seconds() - EVENT_WINDOW_DAYS * 86400
    recent = ev if one_date else ev.filter(ev.timestamp.epoch_seconds() > horizon)
    recent = before(keyed(recent))
    event_types = recent.group_by([POSITION, "event_type"]).aggregate(
        n_30=recent.count(where=recent.age < 30).cast("float64"),
        n_90=recent.count(where=recent.age < EVENT_WINDOW_DAYS).cast("float64"),
        n_prev_30=recent.count(where=(recent.age >= 30) & (recent.age < 60)).cast("float64"),
        last_age=recent.age.min(),
        first_age=recent.age.max(),
    )
    if not one_date:
        old = keyed(ev.filter(ev.timestamp.epoch_seconds() <= horizon))
        old = old.group_by([KEY, "event_type"]).aggregate(timestamp=old.timestamp.max(), first_seen=old.timestamp.min())
        old = before(old)  # the cut on the last time stamp keeps every event of the group before as_of
        zero = ibis.literal(0.0, "float64")
        old = old.select(
            POSITION,
            "event_type",
            n_30=zero,
            n_90=zero,
            n_prev_30=zero,
            last_age=old.age,
            first_age=days_between(old.first_seen, old.as_of),
        )
        # up to two rows per (entity, type): the registry only sums counts and takes min / max of ages over them
        event_types = old.union(event_types)

    customers = cu.join(entities, "customer_id")
    customers = customers.mutate(
        signup_age=ibis.ifelse(
            customers.signup_date < customers.as_of, days_between(customers.signup_date, customers.as_of), None
        ),
        cancelled=ibis.ifelse(customers.churn_date < customers.as_of, 1, 0),
    )
    return {
        "orders": orders,
        "lines": lines,
        "firsts": firsts,
        "days": days,
        "event_types": event_types,
        "customers": customers,
    }


def _before(table: ir.Table, ent: ir.Table) -> ir.Table:
    """Rows strictly before each entity's as_of, with the entity's position and ``age`` in days.

    ``table`` and ``ent`` carry the integer customer key; every later group-by and join keys on the position (one
    per customer and as_of).
    """
    joined = table.join(ent, KEY)
    joined = _cut(joined, joined.as_of)
    return joined.mutate(age=days_between(joined.timestamp, joined.as_of))


def _at_entity(table: ir.Table, date: ir.Table) -> ir.Table:
    """One as_of (``date``: one row): rows were cut already (``keyed``), the customer key is the entity position."""
    joined = table.cross_join(date)
    joined = _cut(joined, joined.as_of)  # a no-op on rows cut before, and the cut holds for rows aggregated from them
    return joined.mutate(**{POSITION: joined[KEY], "age": days_between(joined.timestamp, joined.as_of)})


def _cut(table: ir.Table, as_of: ir.TimestampValue) -> ir.Table:
    """Rows strictly before as_of. The point-in-time cut lives here only."""
    return table.filter(table.timestamp < as_of)


def days_between(start: ir.TimestampValue, end: ir.TimestampValue) -> ir.FloatingValue:
    return (end.epoch_seconds() - start.epoch_seconds()).cast("float64") / 86400.0


# --------------------------------------------------------------------------------------------- running


# --------------------------------------------------------------------------------------------- helpers


def check_entities(entities: pa.Table) -> pa.Table:
    missing = [c for c in KEYS if c not in entities.column_names]
    if missing:
        raise ValueError(f"entities need columns customer_id and as_of (missing: {', '.join(missing)})")
    entities = entities.select(list(KEYS)).cast(ENTITY_SCHEMA)
    if entities.num_rows and pc.any(pc.is_null(entities["as_of"])).as_py():
        raise ValueError("entities: as_of must not be null")
    if entities.num_rows and pc.any(pc.is_null(entities["customer_id"])).as_py():
        raise ValueError("entities: customer_id must not be null")
    if entities.group_by(list(KEYS)).aggregate([]).num_rows != entities.num_rows:
        raise ValueError("entities: each (customer_id, as_of) pair must appear once")
    return entities


def feature_schema(event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES) -> pa.Schema:
    """customer_id, as_of and every registry feature with its dtype: what ``build_features`` returns."""
    fields = [
        pa.field(s.name, pa.int64() if s.dtype == "int64" else pa.float64()) for s in feature_registry(event_types)
    ]
    return pa.schema([*ENTITY_SCHEMA, *fields])


@lru_cache(maxsize=16)
def _result_schema(event_types: tuple[str, ...]) -> pa.Schema:
    return pa.schema([*feature_schema(event_types), pa.field(POSITION, pa.int64())])


def _empty_features(event_types: tuple[str, ...]) -> pa.Table:
    return feature_schema(event_types).empty_table()


def _as_timestamp(d: date | datetime) -> datetime:
    return d if isinstance(d, datetime) else datetime(d.year, d.month, d.day)


def as_entities(customer_ids: Iterable[str], as_of: datetime | date) -> pa.Table:
    ids = list(customer_ids)
    ts = _as_timestamp(as_of)
    return pa.table({"customer_id": pa.array(ids, pa.string()), "as_of": pa.array([ts] * len(ids), pa.timestamp("us"))})
