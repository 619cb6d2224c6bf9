"""The pull route's logic: one page of the trigger outbox after a cursor (``GET /v1/outbox?after=&limit=``).

Items come in ``seq`` order (commit order, see ``features/store/outbox.py``); ``next_after`` is the ``seq`` of the
page's last item (or ``after`` itself when the page is empty), so a client that stores it after processing a page
gets every item at least once, in a stable order, however often it retries. Control items are in the pages, marked
(``control: true``, ``state: "control"``): the CRM records them and contacts nobody. Reading does not change an
item's delivery state: pull and push are independent ways to read the same outbox.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100


def page(store: Any, after: int = 0, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
    """``{"items": [...], "next_after": int, "has_more": bool}``; ``after`` < 0 or ``limit`` outside 1..1000
    raise ``ValueError`` naming the parameter (the route answers 400 with it)."""
    if after < 0:
        raise ValueError("after: must be 0 or a seq returned as next_after")
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit: must be between 1 and {MAX_LIMIT}")
    table = store.outbox_after(after, limit + 1)  # one more, to know whether another page follows
    rows = table.to_pylist()
    more = len(rows) > limit
    items = [_item(r) for r in rows[:limit]]
    return {"items": items, "next_after": items[-1]["seq"] if items else after, "has_more": more}


def _item(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in row.items()}
    out["fields"] = json.loads(row["fields"])
    return out


def _iso(v: datetime) -> str:
    """Naive UTC (the contract) as ISO 8601 with a Z: the same format as the webhook body."""
    return v.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
