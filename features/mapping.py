"""Column mapping: let users keep their own file and column names.

A ``churnguard.yaml`` in the data folder (or a file passed with ``--mapping``, or ``--map`` flags) says which
source column plays which contract column, and may derive a contract column from an arithmetic expression over
source columns. Example for the UCI Online Retail file (``examples/online_retail.yaml``)::

    transactions:
      file: online_retail.parquet
      columns: {customer_id: customer_id, timestamp: invoice_date, order_id: invoice,
                product_id: stock_code, quantity: quantity}
      derive: {amount: quantity * price}

Cancellation invoices there carry negative quantities, so ``quantity * price`` keeps them as negative amounts.
Expressions are parsed with :mod:`ast` and only allow column names, numbers, ``+ - * /`` and parentheses, so a
mapping file can never run code.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from features.contract import TABLES

MAPPING_FILE = "churnguard.yaml"


class TableMapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str | None = Field(
        None, description="File name (relative to the data folder) instead of <table>.csv/.parquet."
    )
    columns: dict[str, str] = Field(default_factory=dict, description="contract column -> source column")
    derive: dict[str, str] = Field(default_factory=dict, description="contract column -> arithmetic expression")
    timestamp_format: str | None = Field(
        None, description="strptime format for text time stamps, e.g. '%d/%m/%Y %H:%M'."
    )
    csv_delimiter: str = ","

    @field_validator("derive")
    @classmethod
    def _expressions_parse(cls, v: dict[str, str]) -> dict[str, str]:
        for target, expr in v.items():
            expression_columns(expr)  # raises ValueError with the reason
            if not target.isidentifier():
                raise ValueError(f"cannot derive {target!r}: not a column name")
        return v


class Mapping(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    transactions: TableMapping = TableMapping()
    events: TableMapping = TableMapping()
    customers: TableMapping = TableMapping()

    def for_table(self, name: str) -> TableMapping:
        return getattr(self, name)

    @model_validator(mode="after")
    def _known_columns(self) -> Mapping:
        """A mapped or derived column must be one of the contract's (a typo would otherwise be ignored)."""
        for contract in TABLES:
            table = self.for_table(contract.name)
            for target in [*table.columns, *table.derive]:
                if target not in contract.column_names:
                    raise ValueError(
                        f"{contract.name}: '{target}' is not a contract column "
                        f"(one of: {', '.join(contract.column_names)})"
                    )
        return self


_ALLOWED_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div)


def expression_columns(expr: str) -> list[str]:
    """Source columns an expression reads; raises ValueError if it is more than arithmetic on columns."""
    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse expression {expr!r}: {e.msg}") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            names.append(node.id)
        elif isinstance(node, ast.BinOp):
            if not isinstance(node.op, _ALLOWED_BINOPS):
                raise ValueError(f"expression {expr!r}: only + - * / are allowed")
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise ValueError(f"expression {expr!r}: only unary minus/plus is allowed")
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float) or isinstance(node.value, bool):
                raise ValueError(f"expression {expr!r}: only numeric constants are allowed")
        elif not isinstance(node, ast.Expression | ast.Load | ast.operator | ast.unaryop):
            raise ValueError(f"expression {expr!r}: {type(node).__name__} is not allowed")
    return list(dict.fromkeys(names))


def expression_sql(expr: str, column_sql: dict[str, str]) -> str:
    """Translate a checked expression to SQL, with each column replaced by ``column_sql[name]``."""
    tree = ast.parse(expr, mode="eval").body

    def emit(node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return column_sql[node.id]
        if isinstance(node, ast.Constant):
            return repr(float(node.value))
        if isinstance(node, ast.UnaryOp):
            return f"({'-' if isinstance(node.op, ast.USub) else '+'}{emit(node.operand)})"
        assert isinstance(node, ast.BinOp)
        op = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}[type(node.op)]
        return f"({emit(node.left)} {op} {emit(node.right)})"

    expression_columns(expr)
    return emit(tree)


def load_mapping(data_dir: Path, mapping_file: Path | None = None, flags: list[str] | None = None) -> Mapping:
    """The mapping for a data folder: ``--mapping`` file, else ``<data>/churnguard.yaml``, then ``--map`` flags."""
    raw: dict[str, Any] = {}
    path = mapping_file or (data_dir / MAPPING_FILE)
    if mapping_file is not None and not mapping_file.exists():
        raise FileNotFoundError(f"mapping file not found: {mapping_file}")
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            raise ValueError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of table names to settings")
        raw = loaded
    for flag in flags or []:
        _apply_flag(raw, flag)
    try:
        return Mapping.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise ValueError(f"{path if path.exists() else '--map'}: {where + ': ' if where else ''}{message}") from None


def _apply_flag(raw: dict[str, Any], flag: str) -> None:
    """``[table.]column=source`` maps a column; a value with an operator derives it; ``table.file=NAME`` sets
    the file."""
    if "=" not in flag:
        raise ValueError(f"--map {flag!r}: expected [table.]column=source")
    key, value = (s.strip() for s in flag.split("=", 1))
    table, _, column = key.rpartition(".")
    table = table or "transactions"
    if table not in {t.name for t in TABLES}:
        raise ValueError(f"--map {flag!r}: unknown table {table!r}")
    section = raw.setdefault(table, {})
    if column in ("file", "timestamp_format", "csv_delimiter"):
        section[column] = value
    elif value.isidentifier():
        section.setdefault("columns", {})[column] = value
    else:
        section.setdefault("derive", {})[column] = value
