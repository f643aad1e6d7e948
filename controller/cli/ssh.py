"""`kumo ssh ID [-- COMMAND...]`: SSH into a lab guest the way a user on the internet does: to its
public IP, from the lab's internet namespace `<prefix>-inet` (`ip netns exec`), so the instance's
security groups must allow tcp/22. The argv is built by a pure function (tested); the command then
replaces this process via execvp, with no shell in between.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Optional, Sequence

import typer

from .api import CliError
from .context import state
from .resources import default_key_dir

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def lab_namespace(prefix: str, name: str) -> str:
    """A lab namespace (`inet`, or a host id); both parts must be plain names."""
    for what, value in (("lab prefix", prefix), ("namespace", name)):
        if not _NAME.match(value or ""):
            raise CliError("InvalidParameterValue", f"invalid {what} {value!r}")
    return f"{prefix}-{name}"


def ssh_argv(*, namespace: str, ip: str, key_file: str | Path, user: str = "root",
             command: Sequence[str] = ()) -> list[str]:
    """`ip netns exec NS ssh -i KEY -o ... -- USER@IP COMMAND...` as an argv list.

    `--` ends ssh's options so a COMMAND starting with '-' is never taken as one.
    """
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise CliError("InvalidParameterValue", f"invalid instance address {ip!r}") from None
    if not _NAME.match(user):
        raise CliError("InvalidParameterValue", f"invalid user {user!r}")
    return ["ip", "netns", "exec", namespace,
            "ssh", "-i", str(key_file),
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "--", f"{user}@{ip}", *command]


def argv_for_instance(instance: dict, *, prefix: str, identity: Path | None,
                      user: str = "root", command: Sequence[str] = ()) -> list[str]:
    """The ssh argv for an instance object from the API (public_ip, key_name)."""
    iid = instance.get("instance_id")
    if instance.get("state") != "running":
        raise CliError("IncorrectInstanceState", f"{iid} is {instance.get('state')}, not running")
    ip = instance.get("public_ip")
    if not ip:
        raise CliError("NoPublicAddress", f"{iid} has no public IP: associate an elastic IP "
                       "(kumo eips associate) or launch it in a public subnet")
    if identity is None:
        key_name = instance.get("key_name")
        if not key_name:
            raise CliError("MissingIdentity",
                           f"{iid} was launched without a key pair; pass --identity FILE")
        identity = default_key_dir() / key_name
    if not identity.is_file():
        raise CliError("IdentityNotFound", f"private key file {identity} not found")
    return ssh_argv(namespace=lab_namespace(prefix, "inet"), ip=ip, key_file=identity,
                    user=user, command=command)


def ssh(ctx: typer.Context,
        instance_id: str,
        command: Annotated[Optional[list[str]], typer.Argument(
            help="Command to run on the guest (after --).")] = None,
        identity: Annotated[Optional[Path], typer.Option(
            "--identity", "-i", help="Private key (default ~/.kumo/keys/<key_name>).")] = None,
        user: Annotated[str, typer.Option("--user", "-l")] = "root",
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command, don't run it.")] = False,
        ) -> None:
    """SSH into a lab guest's public IP from the lab's internet namespace."""
    st = state(ctx)
    if "/" in instance_id:
        raise typer.BadParameter(f"invalid instance id {instance_id!r}")
    instance = st.api().get(f"/v1/instances/{instance_id}")
    prefix = os.environ.get("KUMO_LAB_PREFIX") or "kumo"
    command = list(command or ())
    if command[:1] == ["--"]:
        # click consumes the separator; keep this for a literal "--" passed through.
        command = command[1:]
    argv = argv_for_instance(instance, prefix=prefix, identity=identity, user=user,
                             command=command)
    if dry_run:
        typer.echo(shlex.join(argv))
        return
    st.close()
    try:
        st.execvp(argv[0], argv)
    except OSError as e:
        raise CliError("ExecFailed", f"cannot run {argv[0]}: {e}") from e
