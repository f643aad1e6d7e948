"""List filters, the one way describe-style lists read and apply EC2's filters (volumes, snapshots).

A list names its filters once: EC2 filter name -> REST query parameter (e.g. "volume-id" ->
"volume_id"); either spelling is accepted. REST query parameters are repeatable, each a comma
separated list; `tag:<key>` takes one value (the last one given). Unknown EC2 filter names are
InvalidParameterValue (EC2 refuses them too). Tag filters run in SQL through the row's JSON tags
column, and a key no tag may carry never reaches a JSON path.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import false

from controller.errors import InvalidParameter
from controller.models.common import TAG_KEY_RE


def parse(names: Mapping[str, str],
          filters: Mapping[str, Iterable[str]]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """EC2 filter names (or their REST parameter names) with their values -> (values by REST
    parameter name, tags); empty values are dropped, tag:<key> keeps its last value."""
    by_rest: dict[str, list[str]] = {}
    tags: dict[str, str] = {}
    for name, values in filters.items():
        values = [v for v in values if v]
        if name.startswith("tag:"):
            if values:
                tags[name[4:]] = values[-1]
            continue
        rest = names.get(name, name if name in names.values() else None)
        if rest is None:
            raise InvalidParameter(f"unknown filter {name!r}", code="InvalidParameterValue")
        by_rest.setdefault(rest, []).extend(values)
    return by_rest, tags


def group_query(names: Mapping[str, str],
                params: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """REST query parameters -> filter name to values, for parse(): the comma separated lists
    split, tag:<key> as given; the paging parameters and anything else are not filters."""
    known = set(names) | set(names.values())
    grouped: dict[str, list[str]] = {}
    for k, raw in params:
        if k.startswith("tag:"):
            grouped[k] = [raw]
        elif k in known:
            grouped.setdefault(k, []).extend(raw.split(","))
    return grouped


def where_in(q, *conditions: tuple[Any, Sequence]):
    """`q` limited by each (column, values) whose values are not empty: the column is any of
    them."""
    for column, values in conditions:
        if values:
            q = q.where(column.in_(values))
    return q


def where_tags(q, model, tags: Mapping[str, str]):
    """`q` limited to rows of `model` carrying every tag key with its value."""
    if any(not TAG_KEY_RE.fullmatch(k) for k in tags):
        return q.where(false())  # no row carries such a key; never let it reach a JSON path
    for k, v in tags.items():
        q = q.where(model.tags[k].as_string() == v)
    return q
