"""Rendering command results: JSON (stable, the API's own field names) or rich tables.

Tables go to stdout; progress and notes go to stderr so `--output json` stays machine-readable.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence, Union

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from .context import CliState, Output

Column = tuple[str, Union[str, Callable[[dict], Any]]]


def stdout() -> Console:
    # Built per call so CliRunner's swapped sys.stdout is honoured. Piped output gets a wide
    # virtual width so rows stay on one line for grep/awk instead of folding at 80 columns.
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 240
    return console


def stderr() -> Console:
    return Console(stderr=True, highlight=False)


def note(message: str) -> None:
    """A human-facing remark on stderr (never part of the JSON output)."""
    typer.echo(message, err=True)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


def _get(item: dict, col: Union[str, Callable[[dict], Any]]) -> Any:
    return col(item) if callable(col) else item.get(col)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def emit_list(st: CliState, items: list[dict], columns: Sequence[Column],
              title: str | None = None) -> None:
    """A list result: `{"items": [...], "next_token": null}` in JSON (all pages merged)."""
    if st.output == Output.json:
        print_json({"items": items, "next_token": None})
        return
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for header, _ in columns:
        table.add_column(header, overflow="fold")
    for item in items:
        table.add_row(*(_cell(_get(item, c)) for _, c in columns))
    stdout().print(table)
    if not items:
        note("(none)")


def emit_one(st: CliState, item: dict, columns: Sequence[Column]) -> None:
    """One resource in a list's shape: the API's object in JSON, else a one-row table."""
    if st.output == Output.json:
        print_json(item)
    else:
        emit_list(st, [item], columns)


def emit_record(st: CliState, item: Any, fields: Sequence[Column] | None = None) -> None:
    """One resource: the API's object in JSON, else a two-column field/value table."""
    if st.output == Output.json:
        print_json(item)
        return
    if not isinstance(item, dict):
        typer.echo("" if item is None else str(item))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    pairs = [(h, _get(item, c)) for h, c in fields] if fields else list(item.items())
    for header, value in pairs:
        if isinstance(value, dict) and value and not fields:
            value = json.dumps(value)
        table.add_row(header, _cell(value))
    stdout().print(table)
