"""The controller's FastAPI app factory: create_app(settings) builds the database, runs
migrations, bootstraps the admin account and default instance types, wakes the reconciler on
every committed change, mounts the routers under /v1 (each operation declaring the error statuses
it can answer, controller/api/responses.py), installs error handlers, and runs the reconciler
loop (and the metrics, Auto Scaling and alarm passes) in the lifespan, while this process holds
the leader lease (controller/leadership.py: several controllers may share one database)."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from controller import change_feed, db_migrate
from controller.agent_tls import ControllerTls
from controller.agents import AgentPool, HttpFactory
from controller.api import accounts, events, hosts, images, instance_types, instances, key_pairs
from controller.api import elastic_ips, internet_gateways, nat_gateways, route_tables, subnets, vpcs
from controller.api import metrics, security_groups, snapshots, volumes
from controller.api import alarms, autoscaling_groups, autoscaling_policies, launch_templates
from controller.api import billing
from controller.api import admin
from controller.api import console as console_api, console_users
from controller import console
from controller.api.deps import AppContext
from controller.api.responses import with_errors, without_validation_422
from controller.db import Database
from controller.errors import install_handlers
from controller.controller_registry import Registry
from controller.lease import Lease, lease_engine, new_controller_id
from controller.leadership import Elector, Leadership, fence_commit, margin_for
from controller.periodic import Loops
from controller.reconciler import Reconciler
from controller.services import accounts as account_service
from controller.services import instance_types as type_service
from controller.services import alarm_controller, autoscaling_controller, metric_rollup
from controller.ids import utcnow
from controller.services import budgets, metering_backfill, prices
from controller.services.console_sessions import SignInThrottle
from controller.services.metrics import IngestCounters
from controller.settings import Settings
from controller import storage_cert_renewal
from controller.storage import StorageClient

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *,
               agent_http_factory: HttpFactory | None = None,
               storage_http_factory: HttpFactory | None = None) -> FastAPI:
    """`agent_http_factory(url, token, timeout) -> httpx.Client` (and `storage_http_factory`,
    the same for the storage node at settings.storage_url) lets tests route agent calls
    to in-process fakes; by default agent.contract.transport builds real clients."""
    settings = settings or Settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url())
    db_migrate.upgrade(db)
    account_service.bootstrap_admin(db, settings.state_dir)
    if settings.seed_instance_types:
        type_service.seed(db)
    prices.seed(db)  # every instance type and usage type priced (services/prices.py)
    with db.session() as s:  # resources billable since before metering (an upgrade)
        opened = metering_backfill.backfill(s, utcnow())
    if opened:
        log.info("metering: opened %d usage intervals for resources from before metering",
                 opened)
    # Controller <-> agent mutual TLS (docs/security.md): the cloud CA and the controller's
    # certificate, made at first start; app.state.agent_tls serves the agent-facing listeners.
    agent_tls = ControllerTls(settings.state_dir) if settings.agent_auth == "mtls" else None
    pool = AgentPool(settings.agent_token if agent_tls is None else None,
                     settings.agent_timeout_s, agent_http_factory, tls=agent_tls)
    # The storage node's API over mutual TLS when it serves one (docs/security.md "Storage
    # access"): the controller's own certificate, and the node's checked to be a storage node's.
    storage_tls = None
    if settings.storage_url and settings.storage_mtls:
        storage_tls = (agent_tls or ControllerTls(settings.state_dir)).storage_client
    storage = (StorageClient(settings.storage_url, settings.agent_token, settings.agent_timeout_s,
                             storage_http_factory, tls=storage_tls)
               if settings.storage_url else None)
    reconciler = Reconciler(db, settings, pool, storage)
    # Any committed change (an instance action, a route, an elastic IP, a security group...)
    # may change what agents must carry, whoever made it: run a reconciler tick now, not at
    # the next period.
    db.on_change(reconciler.wake)
    # Several controllers may share the database: only the leader lease's holder runs the
    # background loops (controller/leadership.py); a loop's commit after its leadership ended
    # is refused.
    db.before_commit(fence_commit)
    controller_id = new_controller_id()
    lease_db = lease_engine(settings.resolved_database_url())
    # A commit on any controller wakes the leader's reconciler (controller/change_feed.py).
    feed = settings.change_feed and change_feed.is_postgres(settings.resolved_database_url())
    if feed:
        db.notify_on_commit(change_feed.CHANNEL, controller_id)

    def start_loops(loops: Loops) -> None:
        # each one off when its interval is 0 (tests drive the passes)
        if settings.reconcile_interval_s > 0:
            loops.start("kumo-reconciler", reconciler.run_forever())
            if feed:
                loops.start("kumo-change-feed", change_feed.listen(
                    settings.resolved_database_url(), reconciler.wake, controller_id))
        if settings.metrics_maintenance_interval_s > 0:
            loops.start("kumo-metrics-rollup", metric_rollup.run_forever(db, settings))
        if settings.autoscaling_interval_s > 0:
            loops.start("kumo-autoscaling", autoscaling_controller.run_forever(db, settings))
        if settings.alarm_interval_s > 0:
            loops.start("kumo-alarms", alarm_controller.run_forever(db, settings))
        if settings.budget_interval_s > 0:
            loops.start("kumo-budgets", budgets.run_forever(db, settings))
        if storage_tls is not None and settings.storage_cert_check_interval_s > 0:
            loops.start("kumo-storage-cert", storage_cert_renewal.run_forever(
                settings.storage_url, storage_tls, settings.state_dir,
                settings.storage_cert_renew_days, settings.storage_cert_check_interval_s,
                settings.agent_timeout_s))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ttl, renew = settings.leader_lease_ttl_s, settings.leader_renew_interval_s
        elector = Elector(Lease(lease_db, controller_id, ttl), ttl, margin_for(ttl, renew))
        registry = Registry(lease_db, controller_id, settings.resolved_api_url())
        app.state.kumo_leadership = leadership = Leadership(
            elector, registry, start_loops, renew, lambda: reconciler.last_tick_at)
        loops = Loops()
        loops.start("kumo-leadership", leadership.run())
        try:
            yield
        finally:
            await loops.stop()  # stops the background loops and releases the lease

    app = FastAPI(title="Kumo", version="1", lifespan=lifespan)
    app.state.kumo = AppContext(settings=settings, db=db, pool=pool, reconciler=reconciler)
    app.state.metric_counters = IngestCounters()
    app.state.kumo_controller_id = controller_id
    app.state.kumo_lease_engine = lease_db
    app.state.agent_tls = agent_tls
    app.state.console_throttle = SignInThrottle(settings.console_signin_max_failures,
                                                settings.console_signin_window_s)
    install_handlers(app)

    # Every operation declares the error statuses it can answer (controller/api/responses.py).
    v1 = APIRouter(prefix="/v1")
    for r in (accounts, instance_types, images, key_pairs, instances, hosts, events):
        v1.include_router(with_errors(r.router))
    for r in (vpcs, subnets, internet_gateways, route_tables, elastic_ips, nat_gateways,
              security_groups, volumes, snapshots, metrics, launch_templates, autoscaling_groups,
              autoscaling_policies, alarms, billing, admin):
        v1.include_router(with_errors(r.router))
    v1.include_router(with_errors(console_users.router))
    app.include_router(v1)
    app.include_router(with_errors(metrics.prometheus))
    # The web console (issue 15): its session API, then its static pages at /console/.
    app.include_router(console_api.router)
    console.mount(app)
    without_validation_422(app)

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"ok": True}

    return app


def close_app(app: FastAPI) -> None:
    """Release the app's resources (database pool, agent clients, reconciler threads)."""
    ctx: AppContext = app.state.kumo
    ctx.reconciler.close()
    ctx.pool.close()
    ctx.db.dispose()
    app.state.kumo_lease_engine.dispose()
