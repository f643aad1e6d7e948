"""Controller settings, read from the environment (prefix KUMO_) by pydantic-settings.

Owns every tunable of the controller process: where state lives, how it listens, how agents reach
it, and the deadlines the reconciler applies to transitional states.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KUMO_", extra="ignore")

    #: Directory for the database, admin.key and imported images.
    state_dir: Path = Path("/var/lib/kumo/controller")
    #: SQLAlchemy URL; default: sqlite file in state_dir (WAL mode, busy timeout).
    database_url: str | None = None
    #: host:port of the user-facing HTTP listener.
    listen: str = "127.0.0.1:8787"
    #: An inherited, already listening socket to serve the user-facing API on instead of
    #: binding `listen` (which then only names it, e.g. for api_url): how the lab runs the
    #: controller inside its own network namespace while users reach it on the root namespace's
    #: loopback (a socket keeps the namespace it was created in).
    listen_fd: int | None = Field(default=None, ge=0)
    #: Optional unix socket path serving the same app (agents in lab namespaces use it).
    agent_socket: Path | None = None
    #: URL agents use to reach the controller (image downloads); default derived from
    #: agent_socket (unix:<path>) or listen (http://host:port).
    agent_facing_url: str | None = None
    #: Shared secret agents present to the controller, and the controller presents to agents,
    #: when agent_auth is "token"; the storage node's bearer token in both modes.
    agent_token: str | None = None
    #: How agents and controller authenticate each other (docs/security.md): "mtls" = TLS with
    #: certificates from the cloud CA both ways (the agent-facing listeners require one; a host
    #: acts only as itself); "token" = the shared agent_token over plain HTTP, a fallback for
    #: tests with fake agents (any host can claim to be any other).
    agent_auth: Literal["mtls", "token"] = "mtls"
    #: Optional host:port of a TLS listener for agents on other machines (agent_auth "mtls":
    #: client certificates required); agent_facing_url then defaults to https://<it>.
    agent_listen: str | None = None

    #: A host whose last heartbeat is older than this is marked down.
    heartbeat_timeout_s: float = 15.0
    #: Interval the controller asks agents to heartbeat at.
    heartbeat_interval_s: float = 2.0
    #: Deadlines for transitional states (seconds).
    pending_deadline_s: float = 600.0
    stopping_deadline_s: float = 300.0
    shutting_down_deadline_s: float = 300.0
    #: Running but the guest never printed its ready marker within this -> impaired.
    status_deadline_s: float = 600.0
    #: Terminated instances stay visible this long, then are purged.
    terminated_retention_s: float = 3600.0
    #: Reconciler loop period; 0 disables the background loop (tests drive tick() by hand).
    reconcile_interval_s: float = 1.0
    #: Timeout of one controller -> agent request.
    agent_timeout_s: float = 10.0

    cpu_overcommit: float = 4.0
    scheduler_weigher: Literal["spread", "pack"] = "spread"

    #: Largest virtual size an image may declare (bytes); larger ones are refused.
    max_image_virtual_size: int = Field(default=256 * 1024**3, gt=0)
    #: Largest image file accepted by import (bytes).
    max_image_file_size: int = Field(default=16 * 1024**3, gt=0)
    #: Seed the default instance types at first start.
    seed_instance_types: bool = True
    #: Public addresses elastic IPs are allocated from (minus network, broadcast and the first
    #: host address, which is the upstream router: the lab's internet namespace uses it).
    public_pool: str = "203.0.113.0/24"
    #: Security group limits (EC2's defaults): rules per group and direction, groups per VPC,
    #: groups per instance.
    sg_ingress_rules_limit: int = Field(default=60, ge=1, le=1000)
    sg_egress_rules_limit: int = Field(default=60, ge=1, le=1000)
    security_groups_per_vpc: int = Field(default=2500, ge=1)
    security_groups_per_instance: int = Field(default=5, ge=1, le=16)
    #: The storage node's API (agent/contract/storage_v1.py): unix:<path> or http(s)://host:port.
    #: None: no storage service, and creating a volume is refused (StorageUnavailable).
    storage_url: str | None = None
    #: Talk to the storage node's API over mutual TLS (docs/security.md "Storage access"): the
    #: controller's certificate from the cloud CA, the node's checked to be a storage node's;
    #: the token is then not sent. Off: the bearer token (agent_token).
    storage_mtls: bool = False
    #: With storage_mtls, the leader renews the storage node's server certificate from the cloud
    #: CA once fewer than this many days of it are left (controller/storage_cert_renewal.py;
    #: issued for 365 days).
    storage_cert_renew_days: float = Field(default=30.0, gt=0, le=3650)
    #: Seconds between the leader's checks of the storage node's certificate; 0: no checks.
    storage_cert_check_interval_s: float = Field(default=3600.0, ge=0)
    #: The availability zone volumes and instances are in (one per controller for now).
    availability_zone: str = "kumo-1a"
    #: Volume limits: size of one volume (GiB; EC2's standard volumes go to 1 TiB, gp3 to 16 TiB),
    #: total provisioned GiB per account, and volumes attached to one instance (vdb..vdz).
    max_volume_gib: int = Field(default=16384, ge=1, le=1 << 20)
    account_volume_gib_limit: int = Field(default=51200, ge=1)
    volumes_per_instance: int = Field(default=24, ge=1, le=25)

    #: Metrics (controller/services/metrics.py): raw samples are kept this long (seconds) and
    #: answer periods that are multiples of metrics_sample_period_s; older ranges are answered
    #: from 1-minute rollups, kept metrics_rollup_retention_s.
    metrics_raw_retention_s: int = Field(default=3 * 3600, ge=60)
    metrics_rollup_retention_s: int = Field(default=15 * 86400, ge=3600)
    #: The finest period a statistics request may ask (agents sample every 5 s by default).
    metrics_sample_period_s: int = Field(default=5, ge=1, le=60)
    #: Datapoints one statistics request may answer at most (CloudWatch: 1440).
    metrics_max_datapoints: int = Field(default=1440, ge=1, le=100800)
    #: Rollup + retention pass period (seconds; 0 disables the loop: tests call it by hand),
    #: and the rows one pass handles at most (bounded work; a full pass runs again at once).
    metrics_maintenance_interval_s: float = Field(default=10.0, ge=0)
    metrics_pass_rows: int = Field(default=5000, ge=10)
    #: Auto Scaling group controller pass period (seconds; 0 disables the loop: tests call
    #: it by hand), and the launch retry backoff after failed launches (doubling, capped).
    autoscaling_interval_s: float = Field(default=2.0, ge=0)
    autoscaling_backoff_base_s: float = Field(default=10.0, ge=0)
    autoscaling_backoff_max_s: float = Field(default=300.0, ge=0)
    #: Target tracking: the CPU window averaged per evaluation, how long the metric must stay
    #: below the target's band before a scale in, and how late a missed scheduled action
    #: occurrence may still fire (older ones are skipped). The window is two 5 s samples: with
    #: three, the first after a load step still holds an idle sample and the decision came
    #: 12-18 s after the step (bench/RESULTS.md "autoscaling reaction"); one sample alone
    #: would scale out on a single spike.
    autoscaling_metric_window_s: float = Field(default=10.0, gt=0)
    autoscaling_scale_in_period_s: float = Field(default=60.0, ge=0)
    autoscaling_schedule_grace_s: float = Field(default=300.0, ge=0)
    #: Metric alarms (controller/services/alarm_controller.py): pass period (seconds; 0
    #: disables the loop: tests call tick() by hand); how long after a period ends it is
    #: evaluated (agents' samples of that period must have arrived); the longest period and
    #: the most evaluation periods an alarm may have; history items kept per alarm.
    alarm_interval_s: float = Field(default=2.0, ge=0)
    alarm_evaluation_delay_s: float = Field(default=5.0, ge=0, le=300)
    alarm_max_period_s: int = Field(default=86400, ge=10)
    alarm_max_evaluation_periods: int = Field(default=100, ge=1, le=1440)
    alarm_history_max: int = Field(default=100, ge=10, le=10000)
    #: Budget pass period (controller/services/budgets.py; seconds; 0 disables the loop: bills
    #: evaluate budgets too, and tests call evaluate_all by hand).
    budget_interval_s: float = Field(default=300.0, ge=0)
    #: Several controllers on one database (controller/leadership.py): the leader lease's
    #: lifetime and renewal period (seconds; a holder stops its loops one renewal period before
    #: its lease ends, and another takes over within about TTL + one period of its last renewal),
    #: and the URL this controller's API is reached at, shown by `kumo admin status`
    #: (default: http://<listen>, unless its port is 0).
    leader_lease_ttl_s: float = Field(default=5.0, ge=0.5, le=300)
    leader_renew_interval_s: float = Field(default=1.0, gt=0, le=60)
    #: PostgreSQL: a commit on any controller wakes the leader's reconciler through LISTEN/
    #: NOTIFY (controller/change_feed.py); off, it waits for the leader's next periodic tick.
    change_feed: bool = True
    api_url: str | None = None
    #: Web console sessions (controller/services/console_sessions.py): a session ends after
    #: this long without a request (idle) and this long after sign-in whatever happens
    #: (absolute); failed sign-ins per username and client address allowed within the window
    #: before further attempts are refused (429) until it has passed.
    console_session_idle_s: float = Field(default=1800.0, gt=0)
    console_session_max_s: float = Field(default=43200.0, gt=0)
    console_signin_max_failures: int = Field(default=5, ge=1)
    console_signin_window_s: float = Field(default=300.0, gt=0)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.state_dir / 'kumo.db'}"

    def resolved_agent_facing_url(self) -> str:
        if self.agent_facing_url:
            return self.agent_facing_url.rstrip("/")
        if self.agent_socket:
            return f"unix:{self.agent_socket}"
        if self.agent_listen:
            return f"https://{self.agent_listen}"
        return f"http://{self.listen}"

    def resolved_api_url(self) -> str | None:
        if self.api_url:
            return self.api_url.rstrip("/")
        host, port = self.listen_host_port()
        return None if port == 0 else f"http://{self.listen}"

    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return (host or "127.0.0.1").strip("[]"), int(port)
