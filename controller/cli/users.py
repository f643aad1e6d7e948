"""`kumo users create|list|delete`: the web console's users of the caller's account, or of any
account with --account (admin). Passwords are read from a hidden prompt or stdin, never argv
(argv is visible to every user of the machine in ps)."""
from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from .context import OutputOpt, state
from .output import emit_list, emit_record

app = typer.Typer(help="Web console users (sign in at /console/).", no_args_is_help=True)

USER_COLUMNS = [("USER", "user_id"), ("USERNAME", "username"), ("ACCOUNT", "account_id"),
                ("CREATED", "created_at")]

AccountOpt = Annotated[Optional[str], typer.Option(
    "--account", help="Another account's id (admin); default: the caller's own account.")]


def _base(account: str | None) -> str:
    if account is None:
        return "/v1/account/users"
    if not account or any(c in account for c in "/?#") or account in (".", ".."):
        raise typer.BadParameter(f"invalid account id {account!r}")
    return f"/v1/accounts/{account}/users"


@app.command("create")
def users_create(ctx: typer.Context, username: str, account: AccountOpt = None,
                 password_stdin: Annotated[bool, typer.Option(
                     "--password-stdin", help="Read the password from stdin's first line.")] = False,
                 output: OutputOpt = None) -> None:
    """Create a console user (password: 10-256 characters)."""
    st = state(ctx, output)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    emit_record(st, st.api().post(_base(account), json={"username": username,
                                                          "password": password}))


@app.command("list")
def users_list(ctx: typer.Context, account: AccountOpt = None, output: OutputOpt = None) -> None:
    """List console users."""
    st = state(ctx, output)
    emit_list(st, st.api().paginate(_base(account)), USER_COLUMNS)


@app.command("delete")
def users_delete(ctx: typer.Context, username: str, account: AccountOpt = None,
                 output: OutputOpt = None) -> None:
    """Delete a console user (its console sessions end at once)."""
    st = state(ctx, output)
    if not username or any(c in username for c in "/?#") or username in (".", ".."):
        raise typer.BadParameter(f"invalid username {username!r}")
    emit_record(st, st.api().delete(f"{_base(account)}/{username}"))
