"""The `kumo` entry point: global options, error reporting and the sub-command tree.

Exit status: 0 success, 1 an API or runtime error (printed as `error: <code>: <message>` on
stderr), 2 a usage error (click's convention).
"""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from . import (admin, autoscaling, images, instances, local, metrics, networks, resources,
               security_groups, snapshots, ssh, volumes)
from . import autoscaling_policies  # noqa: F401 (registers its commands on autoscaling.groups)
from . import alarms, billing
from . import admin_status
from . import admin_backup  # noqa: F401 (registers backup/restore on admin_status.app)
from . import users
from .api import CliError
from .context import DEFAULT_URL, CliState, Output, OutputOpt, state


class KumoGroup(TyperGroup):
    """Root group that turns CliError from any sub-command into a one-line error and exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CliError as e:
            message = e.message
            st = ctx.find_object(CliState)
            if getattr(e, "status", None) == 401 and st is not None and not st.api_key:
                message += " (no API key: set KUMO_API_KEY or pass --api-key)"
            typer.echo(f"error: {e.code}: {message}", err=True)
            raise typer.Exit(1) from None
        finally:
            st = ctx.find_object(CliState)
            if st is not None:
                st.close()


app = typer.Typer(cls=KumoGroup, no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Kumo: EC2-like instances on your own KVM hosts.")


@app.callback()
def root(ctx: typer.Context,
         url: Annotated[str, typer.Option("--url", envvar="KUMO_URL",
                                          help="API URL: http(s)://host:port or unix:/path.sock.")] = DEFAULT_URL,
         api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="KUMO_API_KEY",
                                                        show_default=False)] = None,
         output: OutputOpt = None) -> None:
    st = ctx.obj if isinstance(ctx.obj, CliState) else CliState()
    st.url, st.api_key = url, api_key
    if output is not None:
        st.output = output
    ctx.obj = st


app.add_typer(instances.app, name="instances")
app.add_typer(resources.images, name="images")
app.add_typer(resources.keys, name="keys")
app.add_typer(admin.types, name="types")
app.add_typer(admin.hosts, name="hosts")
app.add_typer(admin.events, name="events")
app.add_typer(admin.accounts, name="accounts")
app.add_typer(admin_status.app, name="admin")
app.add_typer(users.app, name="users")
for _name, _sub in (("vpcs", networks.vpcs), ("subnets", networks.subnets), ("igws", networks.igws),
                    ("route-tables", networks.route_tables), ("eips", networks.eips),
                    ("nat-gateways", networks.nat_gateways)):
    app.add_typer(_sub, name=_name)
app.add_typer(security_groups.app, name="security-groups")
app.add_typer(volumes.app, name="volumes")
app.add_typer(snapshots.app, name="snapshots")
app.add_typer(metrics.app, name="metrics")
app.add_typer(alarms.app, name="alarms")
app.add_typer(billing.prices, name="prices")
app.add_typer(billing.budget, name="budget")
app.command("usage")(billing.usage)
app.command("bill")(billing.bill)
app.add_typer(autoscaling.templates, name="launch-templates")
app.add_typer(autoscaling.groups, name="autoscaling-groups")
# Options may follow the instance id; the remote command starts after `--` (kumo ssh ID [-- CMD]).
app.command("ssh")(ssh.ssh)
app.command("console", help="Print an instance's serial console output.")(instances.console)
app.add_typer(local.image, name="image")
app.add_typer(local.lab, name="lab")

__all__ = ["app", "main", "CliState", "Output", "state"]


def main() -> None:
    app(prog_name="kumo")


if __name__ == "__main__":
    main()
