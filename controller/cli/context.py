"""Per-invocation CLI state (URL, key, output format, injected client factory, clock) and the
option types and small parsers shared by every command module."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated, Callable, Optional

import typer

from .api import Api, ClientFactory, default_client_factory

DEFAULT_URL = "http://127.0.0.1:8787"


class Output(str, Enum):
    table = "table"
    json = "json"


OutputOpt = Annotated[Optional[Output], typer.Option(
    "--output", "-o", help="table (default) or json (the REST API's field names).",
    show_default=False)]
#: --wait's limits, for commands that can wait.
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds to --wait before failing.")]
IntervalOpt = Annotated[float, typer.Option("--poll-interval", help="Seconds between polls.",
                                            hidden=True)]


@dataclass
class CliState:
    """Everything a command needs besides its arguments. Tests pass one as CliRunner's `obj`."""

    url: str = DEFAULT_URL
    api_key: str | None = None
    output: Output = Output.table
    client_factory: ClientFactory = default_client_factory
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    # os.execvp for `kumo ssh`; tests replace it to capture the argv.
    execvp: Callable[[str, list[str]], None] = os.execvp
    _api: Api | None = field(default=None, repr=False)

    def api(self) -> Api:
        if self._api is None:
            self._api = Api(self.client_factory(self.url, self.api_key), self.url)
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.client.close()
            self._api = None


def state(ctx: typer.Context, output: Output | None = None) -> CliState:
    """The invocation's CliState, with a per-command --output overriding the global one."""
    st = ctx.find_object(CliState)
    if st is None:  # a sub-app invoked on its own (tests); use defaults
        st = CliState()
        ctx.obj = st
    if output is not None:
        st.output = output
    return st


def parse_tag(text: str) -> tuple[str, str]:
    """`K=V` -> (K, V). An empty key is a usage error; the value may be empty or contain '='."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise typer.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--tag")
    return key, value


def parse_tags(texts: list[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for t in texts or []:
        k, v = parse_tag(t)
        tags[k] = v
    return tags


def list_params(tags: list[str] | None, **filters: str | None) -> dict[str, str]:
    """A list command's query parameters: the filters given (empty ones left out), then
    tag:KEY=VALUE for each --tag."""
    params = {k: v for k, v in filters.items() if v}
    for k, v in parse_tags(tags).items():
        params[f"tag:{k}"] = v
    return params


def id_path(collection: str, what: str, resource_id: str, action: str = "") -> str:
    """/v1/<collection>/<id>[/<action>]. Ids go into URL paths: one that would change the path
    is a usage error ("invalid <what> id")."""
    if (not resource_id or "/" in resource_id or "?" in resource_id or "#" in resource_id
            or resource_id in (".", "..")):
        raise typer.BadParameter(f"invalid {what} id {resource_id!r}")
    return f"/v1/{collection}/{resource_id}" + (f"/{action}" if action else "")
