"""`kumo admin status`: the controller processes, which one leads, and the reconcile lag."""
from __future__ import annotations

import typer

from .context import Output, OutputOpt, state
from .output import emit_list, emit_record, print_json

app = typer.Typer(help="The cloud's own state (admin).", no_args_is_help=True)

CONTROLLER_COLUMNS = [("CONTROLLER", "controller_id"), ("LEADER", "leader"),
                      ("ALIVE", "alive"), ("HOST", "hostname"), ("PID", "pid"),
                      ("API URL", "api_url"), ("VERSION", "version"),
                      ("STARTED", "started_at"), ("LAST SEEN", "last_seen")]


@app.command("status")
def status(ctx: typer.Context, output: OutputOpt = None) -> None:
    """Show the controllers, the leader (lease holder, epoch, since) and the reconcile lag."""
    st = state(ctx, output)
    data = st.api().get("/v1/admin/status")
    if st.output == Output.json:  # the API's object as it is
        print_json(data)
        return
    leader, lag = data["leader"], data["reconcile"]
    emit_record(st, {
        "leader": leader["controller_id"] or "none (lease free: a takeover is due)",
        "epoch": leader["epoch"], "leader_since": leader["since"],
        "lease_expires_at": leader["expires_at"],
        "last_reconcile_pass": lag["last_pass_at"],
        "last_reconcile_pass_age_s": lag["last_pass_age_s"],
        "unacknowledged_instances": lag["unacknowledged_instances"],
        "oldest_unacknowledged_age_s": lag["oldest_unacknowledged_age_s"],
        "unacknowledged_networks": lag["unacknowledged_networks"],
        "answered_by": data["answered_by"]})
    emit_list(st, data["controllers"], CONTROLLER_COLUMNS, title="controllers")
