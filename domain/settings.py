"""All of aif's settings, in one pydantic-settings class.

Read from the environment with the ``AIF_`` prefix (``AIF_PORT``, ``AIF_DATA_DIR``,
``AIF_MONGODB_URL`` ...), then from command-line flags. Outside ``development`` the class
refuses defaults that are only safe on a laptop.

What a target cluster adds to every model is :class:`ClusterConfig`, the one source of those
settings: :class:`Settings` inherits its fields (so each is an ``AIF_*`` variable), the model
stacks carry it whole in their config, and the install program writes it as environment.
Adding a cluster setting is one field here and its use where manifests are rendered.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.accelerators import parse_local_accelerators

DEFAULT_PULUMI_PASSPHRASE = "aif-development-only"

RoutingPolicyName = Literal["least-outstanding", "round-robin", "load", "prefix"]


def default_data_dir() -> Path:
    """Per-user data location: ``$XDG_DATA_HOME/aif`` or ``~/.local/share/aif``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "aif"


class ClusterConfig(BaseModel):
    """What the target cluster adds to every model: namespace, scheduler, image, cache."""

    model_config = ConfigDict(frozen=True)

    namespace: str = "aif-models"
    # Overrides the preset's engine image when set.
    engine_image: str = ""
    scheduler_name: str = ""
    volcano_queue: str = ""
    # "volcano": each LWS group (leader and workers) is gang-scheduled as one Volcano PodGroup,
    # created by LWS's Volcano provider; the pods get scheduler_name or "volcano".
    gang_scheduling: Literal["none", "volcano"] = "none"
    # A fast file-storage PVC (SFS Turbo) that weights are copied to before an engine loads.
    cache_pvc: str = ""
    pod_monitor: bool = False
    # Cards one node offers (8 on an Ascend Snt9B or an H100 node); instances needing more span
    # nodes as one LeaderWorkerSet group.
    max_accelerators_per_node: int = Field(default=8, ge=1)


class Settings(ClusterConfig, BaseSettings):
    """Every role's settings; the cluster fields come from :class:`ClusterConfig`."""

    model_config = SettingsConfigDict(env_prefix="AIF_", extra="ignore", frozen=False)

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    log_level: str = "INFO"

    # Persistence: the product's ``mongodbUrl``. Unset means the embedded store in data_dir.
    mongodb_url: SecretStr | None = None
    mongodb_database: str = "aif"

    # API keys: a bootstrap admin key (or a file holding it); once any key exists, /v1/*
    # needs one. /metrics and /discovery/prometheus need one too when metrics_require_key.
    admin_key: SecretStr | None = None
    admin_key_file: Path | None = None
    metrics_require_key: bool = False
    # How often each process checks the store for keys created or revoked elsewhere: the
    # bound on how long a key revoked by another process keeps working here.
    keys_refresh_s: float = Field(default=1.0, gt=0)
    # How often a chat process writes the usage it counted to the store: how far
    # GET /v1/usage lags, and what a crash can lose.
    usage_flush_s: float = Field(default=2.0, gt=0)
    # Tokens and requests per key on /metrics too: one series per key and model, so off
    # unless the keys are few.
    metrics_per_key: bool = False
    # Keys' rpm, tpm and budgets are counted in this Redis (exact across processes); unset:
    # in the store, synced every limits_sync_s (see api/limits). A secret: it may hold one.
    redis_url: SecretStr | None = None
    # A Redis call past this is a failure: a limit check must not add more to a request.
    redis_timeout_s: float = Field(default=0.25, gt=0)
    # How often each process adds its counts to the store's and reads the others': the
    # window in which other processes' admissions go unseen (limits without Redis).
    limits_sync_s: float = Field(default=0.5, gt=0)
    # The shared counter unreachable: "open", each process counts on its own; "closed", the
    # requests of keys with limits get a 429 until it answers again.
    limits_unreachable: Literal["open", "closed"] = "open"

    # Registry rules.
    max_instance_cap: int = Field(default=16, ge=1, description="highest max_instance accepted")
    # Body limits per surface: model documents are small; prompts can be long.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, description="/v1/models bodies")
    max_inference_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, description="/v1/chat/completions, /v1/completions"
    )

    # Where models run: engine processes on this machine, or Kubernetes through Pulumi.
    runtime: Literal["local", "kubernetes"] = "local"
    engine: Literal["simulator", "llama-cpp", "vllm"] = "simulator"
    # Extra arguments for every local engine process (fault injection in tests, vLLM flags).
    engine_args: list[str] = Field(default_factory=list)
    engine_ready_timeout_s: float = Field(default=120.0, gt=0)
    # The cards local engines are placed on: a count (one node) or {"node-a": 8, "node-b": 8}
    # (several simulated nodes); 16 holds the walkthrough's models with room to scale.
    local_accelerators: str = "16"
    # The resource type of the local cards: models of another type wait for cards.
    local_resource_type: str = "huawei.com/ascend-1980"
    # A card quarantined by one device fault is tried again (one instance) after this, and
    # released if that instance holds as long; a second fault keeps it until an admin releases
    # it. 0: only an admin releases quarantined cards.
    quarantine_probation_s: float = Field(default=900.0, ge=0)
    # Scale-in drains: an instance leaves routing, its requests finish within this, then it
    # stops (long answers take minutes).
    drain_timeout_s: float = Field(default=300.0, ge=0)
    # A local engine that was ready and then fails its health probes leaves routing at once;
    # still unhealthy this long after, it is stopped and a new one started in its place.
    unhealthy_replace_s: float = Field(default=30.0, gt=0)

    # model-job-executor: one reconcile pass per interval, and at once on a change.
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    lease_ttl_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1, description="failed passes before FAILED")
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)

    # frontend: where inference goes. Unset: a chat-job-executor in this process; set (on a
    # cluster, the chat-job-executor Service): forwarded there, so the chat path scales apart.
    chat_executor_url: str = ""
    # Processes serving this server's port (``aif serve``, ``aif frontend``, ``aif
    # chat-job-executor``): the chat path on more than one core. 1: this process alone.
    chat_workers: int = Field(default=1, ge=1, le=64)

    # chat-job-executor: how often the in-memory routing table is rebuilt from the store.
    routing_refresh_s: float = Field(default=0.5, gt=0)
    # Which instance serves a request, unless the model names its own policy.
    routing_policy: RoutingPolicyName = "least-outstanding"
    # Leading characters of a prompt that pick its instance under the ``prefix`` policy:
    # about a system prompt's worth, what engines' prefix caches reuse most.
    prefix_affinity_chars: int = Field(default=1024, ge=16)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    # Until an answer's headers: long prompts and busy engines take a while to start.
    upstream_first_byte_timeout_s: float = Field(default=600.0, gt=0)
    # Between two chunks of an answer: a stalled instance must not hang its clients.
    upstream_idle_timeout_s: float = Field(default=60.0, gt=0)
    # Shorter than engines' own keep-alive (uvicorn's 5 s), so a pooled connection is never
    # one the engine is closing as it is reused.
    upstream_keepalive_s: float = Field(default=4.0, gt=0)
    # Other instances tried when one fails before the first byte.
    upstream_retries: int = Field(default=2, ge=0)
    # Outlier ejection: this many failures in a row take an instance out of routing for a
    # while, doubling each time up to the maximum.
    ejection_failures: int = Field(default=3, ge=1)
    ejection_base_s: float = Field(default=5.0, gt=0)
    ejection_max_s: float = Field(default=60.0, gt=0)
    # Admission: requests one instance serves at once (0: the preset's max-num-seqs, past
    # which the engine queues inside), then a short wait queue with a deadline, then 429.
    max_in_flight_per_instance: int = Field(default=0, ge=0)
    admission_queue_per_instance: int = Field(default=2, ge=0)
    # Short: it absorbs a burst for about one completion's time. Under overload a prompt 429
    # (which OpenAI clients retry) keeps admitted requests' TTFT near the unloaded figure,
    # where a longer wait only adds itself to their TTFT (measured: benchmarks/gateway.py).
    admission_wait_s: float = Field(default=0.05, gt=0)
    # Share a saturated model's queue between API keys by weight and priority class; false:
    # one first-come, first-served queue for everyone, as before keys carried weights.
    admission_fair: bool = True
    # A request for a model with no instance ready yet (starting, restarting, scaled to zero)
    # waits this long for one before a 503.
    hold_timeout_s: float = Field(default=60.0, ge=0)

    # task-executor-manager: where latency is read. A Prometheus that scrapes the gateways
    # (see /discovery/prometheus); else the gateway in this process; else these gateways'
    # /metrics (default: AIF_CHAT_EXECUTOR_URL).
    prometheus_url: str = ""
    gateway_metrics_urls: list[str] = Field(default_factory=list)
    # The window over which p95s and request rates are computed (PromQL's [window]).
    scale_window_s: float = Field(default=30.0, gt=0)
    # task-executor-manager: how often load is read and replicas decided. A burst is acted on
    # at the next pass (or sooner: scale_pressure_pass_s), so this bounds how late a scale-up
    # can be.
    scale_interval_s: float = Field(default=1.0, gt=0)
    # When the gateway in the same process has a request waiting for a slot (the model at
    # capacity), a pass for that model comes this soon after the last one instead of at the
    # next interval (0: only the interval).
    scale_pressure_pass_s: float = Field(default=0.2, ge=0)
    # model-job-executor: profile a model's capacity at the SLO once its first instance serves
    # (``aif profile`` through the gateway), when it has none measured yet; the load is real.
    profile_on_ready: bool = False
    profile_step_s: float = Field(default=10.0, gt=0)
    # chat-job-executor in its own process: the task-executor-manager to report a model at
    # capacity to (``POST {scaler_url}/v1/scaler/pressure``), so its pass comes as soon as in
    # one process. "": no report (the manager sees the load at its next interval).
    scaler_url: str = ""
    # Replicas follow concurrency (in flight + queued at the gateway) at this fraction of what
    # an instance holds at once (max-num-seqs): the headroom left for a burst's first seconds.
    scale_target_utilisation: float = Field(default=0.7, gt=0, le=1)
    # Concurrency over this window beyond what the ready instances hold: a burst, scaled up
    # to at once (Knative's panic window).
    scale_panic_window_s: float = Field(default=6.0, gt=0)
    # An SLO breach must last this long to add an instance beyond the capacity it lowers (the
    # capacity itself is lowered at the pass that sees the breach).
    scale_upscale_delay_s: float = Field(default=10.0, ge=0)
    # The stable window: scale-in follows the mean concurrency over it, so a burst's
    # instances are given back within about this long after it (and a dip shorter than it
    # gives back only part of them).
    scale_downscale_delay_s: float = Field(default=30.0, gt=0)
    # With no traffic at all for this long, a model steps toward min_instance (0: to zero).
    scale_idle_s: float = Field(default=300.0, ge=0)
    # Requests of spare room kept beyond the mean concurrency (Knative's target burst
    # capacity), so that a burst this big does not wait for an instance to start; it costs
    # instances while traffic is low. 0: only the target utilisation's headroom.
    scale_burst_capacity: float = Field(default=0.0, ge=0)
    # With the SLO met by this margin (p95 over target at most this), a steady model probes one
    # instance fewer than its learnt capacity says it needs (0: never); and while it is met by
    # scale_room_ratio's, the steady stage adds none for a demand that is not rising (0: the
    # learnt capacity alone decides). Bursts and breaches act at once either way.
    scale_probe_ratio: float = Field(default=0.6, ge=0, le=1)
    scale_room_ratio: float = Field(default=0.8, ge=0, le=1)
    # Arrivals over this window beyond what the stable window's rate explains (Poisson noise),
    # with the concurrency rising too, are a step, sized at once by the concurrency it leads to
    # (0: concurrency alone).
    scale_lead_window_s: float = Field(default=2.0, ge=0)
    # After a model lends instances to a higher-priority one short of cards, the borrower
    # waits this long for them (the lender's instances drain) before more are taken.
    scale_preempt_settle_s: float = Field(default=60.0, ge=0)

    # Kubernetes runtime (see infra/); what models get on the cluster is ClusterConfig's.
    pulumi_backend_url: str = ""
    pulumi_passphrase: SecretStr = SecretStr(DEFAULT_PULUMI_PASSPHRASE)
    pulumi_work_dir: Path | None = None
    pulumi_workers: int = Field(default=4, ge=1)
    # How long one reconcile pass waits for `pulumi up` before reporting progress instead:
    # well under the lease, so a long update never costs the executor its lease.
    pulumi_apply_wait_s: float = Field(default=10.0, gt=0)
    # A stack lock held this long from another host is taken to be a dead executor's: far
    # longer than any update of one model takes (its objects are not awaited).
    pulumi_stale_lock_s: float = Field(default=1800.0, gt=0)
    # The cluster's nodes and pods are read for the accelerator inventory at most this often
    # (per process), however often the API or the executor asks.
    cluster_inventory_refresh_s: float = Field(default=10.0, gt=0)
    # Put a NoSchedule taint on a node whose cards are quarantined (aif:taintFaultyNodes), so
    # that no other workload lands there either; needs `patch` on nodes.
    taint_faulty_nodes: bool = False

    # Store failures: how long a SQLite write waits for another writer before the request
    # gets a 503 with Retry-After (each write is one short statement; a longer hold is a
    # stuck or foreign writer).
    store_busy_timeout_s: float = Field(default=5.0, gt=0)
    # Threads the API's store calls run on, apart from everything else, so a stuck store
    # fills this pool and not the one the rest of the server needs.
    store_workers: int = Field(default=16, ge=1)
    # /ready: how long the store has to show it can take a write before the answer is 503.
    ready_timeout_s: float = Field(default=1.0, gt=0)
    # How deep a request's JSON may nest, on every route: deeper is a 400 before any parser
    # recurses into it (a nested-JSON bomb). Real requests nest a handful of levels.
    max_json_depth: int = Field(default=64, ge=2)

    # The HTTP server's limits on clients (see api/server.py). Idle keep-alive with clients:
    # longer than upstream_keepalive_s, so the side that closes a reused connection first is
    # never the one a client is still sending on.
    client_keepalive_s: float = Field(default=15.0, gt=0)
    # A request's headers must be complete this long after the connection opens or the
    # request's first byte (slowloris); else 408 and the connection closes.
    header_timeout_s: float = Field(default=10.0, gt=0)
    # While a body arrives: no silence longer than this, and past it at least the minimum
    # average rate; else the connection closes.
    body_idle_timeout_s: float = Field(default=10.0, gt=0)
    body_min_rate_bytes_s: float = Field(default=1024.0, ge=0)
    # Connections (and requests in progress) served at once; past it, a 503 with Retry-After.
    max_connections: int = Field(default=2048, ge=1)
    # Largest request head with the h11 protocol (httptools has its own fixed bound).
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)

    def admin_secret(self) -> str | None:
        """The bootstrap admin key: ``AIF_ADMIN_KEY``, else the file ``AIF_ADMIN_KEY_FILE``."""
        if self.admin_key is not None and self.admin_key.get_secret_value().strip():
            return self.admin_key.get_secret_value().strip()
        if self.admin_key_file is not None:
            return self.admin_key_file.read_text(encoding="utf-8").strip() or None
        return None

    @property
    def cluster(self) -> ClusterConfig:
        """The cluster settings alone, as the deployer and ``aif render`` take them."""
        return ClusterConfig(**{name: getattr(self, name) for name in ClusterConfig.model_fields})

    @field_validator("local_accelerators")
    @classmethod
    def _cards_per_node(cls, value: str) -> str:
        parse_local_accelerators(value)
        return value

    @model_validator(mode="after")
    def _refuse_unsafe_defaults(self) -> Settings:
        if self.environment == "development":
            return self
        problems = []
        if self.mongodb_url is None:
            problems.append("AIF_MONGODB_URL must be set (the embedded store is for development)")
        if (
            self.runtime == "kubernetes"
            and self.pulumi_passphrase.get_secret_value() == DEFAULT_PULUMI_PASSPHRASE
        ):
            problems.append("AIF_PULUMI_PASSPHRASE must be set to a secret of your own")
        if problems:
            raise ValueError("; ".join(problems))
        return self
