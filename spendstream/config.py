"""All configuration in one place: ``SPENDSTREAM_*`` environment variables (README table).

Connection strings default to the local stack's ports, and follow them: setting only
``SPENDSTREAM_KAFKA_PORT`` moves both the broker and every client's bootstrap address.
"""

from __future__ import annotations

import ssl
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .money import usd_to_pico

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]

LEGACY_POSTGRES_PASSWORD = "spendstream"
"""The fixed password of stacks made before per-stack passwords (and of infra/docker-compose)."""


class Settings(BaseSettings):
    """Every setting of spendstream; field ``foo_bar`` is env var ``SPENDSTREAM_FOO_BAR``."""

    model_config = SettingsConfigDict(env_prefix="SPENDSTREAM_", extra="ignore")

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap_servers: str = ""
    """Comma-separated host:port list; empty means the local stack's broker."""
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_client_config: dict[str, str] = Field(default_factory=dict)
    """Extra librdkafka properties (JSON object) passed through to confluent-kafka clients."""

    topic_raw: str = "spendstream.events.raw"
    topic_enriched: str = "spendstream.events.enriched"
    topic_alerts: str = "spendstream.alerts"
    topic_dlq: str = "spendstream.events.dlq"
    raw_partitions: int = Field(12, ge=1)
    enriched_partitions: int = Field(12, ge=1)
    alerts_partitions: int = Field(3, ge=1)
    dlq_partitions: int = Field(3, ge=1)
    topic_replication_factor: int = Field(1, ge=1)

    # --- producer SDK ----------------------------------------------------------------------------
    service: str = ""
    """Default ``service`` of emitted events (e.g. the deployment name)."""
    producer_buffer_events: int = Field(100_000, ge=1)
    """Events the SDK holds in memory while Kafka is slow or down; beyond it they are dropped."""
    producer_buffer_bytes: int = Field(67_108_864, ge=1_048_576)
    """Bytes the SDK holds for undelivered events (its buffer at 4 KiB per event + its text,
    then the encoded records, in librdkafka's queue too); beyond it events are dropped
    (``buffer_full``), so large prompts cannot grow the host."""
    producer_queue_kbytes: int = Field(65_536, ge=1024)
    """librdkafka's own send queue bound (KiB), on top of the event buffer."""
    producer_linger_ms: int = Field(50, ge=0, le=10_000)
    producer_max_events_per_record: int = Field(100, ge=1, le=10_000)
    producer_max_record_bytes: int = Field(262_144, ge=1024)
    producer_max_record_span_s: float = Field(60.0, ge=0)
    """Event-time span of one record; keeps replays within the worker's allowed lateness."""
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "lz4"
    producer_message_timeout_ms: int = Field(300_000, ge=1000)
    """How long an event may wait for the broker before it is dropped (``delivery_failed``)."""
    producer_flush_timeout_s: float = Field(10.0, ge=0)
    """How long process exit waits to deliver what is queued."""
    producer_drop_log_interval_s: float = Field(60.0, gt=0)

    # --- stream worker -------------------------------------------------------------------------
    worker_app_id: str = "spendstream-worker"
    """Faust app id = consumer group; workers with the same id share the partitions."""
    topic_partials: str = "spendstream.window-partials"
    """Internal: stage-1 window snapshots and watermarks, keyed by scope."""
    topic_windows: str = "spendstream.windows"
    """Closed 1-minute totals per scope (compacted: the latest revision of each window)."""
    stage2_partitions: int = Field(6, ge=1)
    windows_partitions: int = Field(6, ge=1)
    allowed_lateness_s: int = Field(120, ge=0)
    """A minute closes when the event-time watermark is this far past its end."""
    window_retention_minutes: int = Field(15, ge=2)
    """Closed minutes stay correctable this long; older events are left out of windows."""
    max_future_skew_s: float | None = Field(300.0, ge=0)
    """Events dated further ahead of the worker's clock are dead-lettered (null: no check)."""
    worker_batch_records: int = Field(200, ge=1)
    """Raw records a worker takes per batch (each record holds up to 100 events)."""
    stage2_batch_messages: int = Field(50, ge=1)
    """Partials messages stage 2 takes per batch: applied in order, then one wait for their
    outputs' acknowledgement and one changelog write per changed key per stage-2 partition."""
    worker_session_timeout_s: float = Field(10.0, ge=6, le=300)
    """How soon a worker that died without leaving (kill -9, lost host) is replaced."""
    tick_interval_s: float = Field(0.25, gt=0)
    idle_timeout_s: float = Field(5.0, gt=0)
    """A raw partition whose end offset the broker reported unchanged over this long (and whose
    records are all applied) stops holding the watermark back."""
    resync_interval_s: float = Field(30.0, gt=0)
    price_overrides_file: Path | None = None
    """TOML file of negotiated/private prices (see spendstream/stream/prices.py)."""
    keep_text: bool = False
    """Keep prompt/response text in enriched events (off: it is only used for estimation)."""
    prompt_hash_key: SecretStr | None = None
    """HMAC-SHA256 key of the prompt/response digests the PostgreSQL sink stores (unset: none)."""
    alert_evidence: float = Field(12.0, gt=0)
    alert_ratio: float = Field(2.5, gt=1)
    alert_error_ratio: float = Field(3.0, gt=1)
    alert_baseline_minutes: int = Field(30, ge=5)
    alert_min_baseline_minutes: int = Field(15, ge=1)
    alert_season_days: float = Field(3.0, ge=1)
    alert_resolve_minutes: int = Field(3, ge=1)
    alert_cooldown_minutes: int = Field(10, ge=0)
    alert_material_share: float = Field(0.02, ge=0)
    alert_material_usd_per_day: Decimal = Field(Decimal("0"), ge=0)
    alert_runaway_minutes: int = Field(10, ge=2)
    alert_runaway_ratio: float = Field(4.0, gt=1)
    alert_runaway_min_calls: int = Field(60, ge=2)
    alert_runaway_usd_per_day: Decimal = Field(Decimal("1"), ge=0)
    alert_runaway_false_pages_per_week: float = Field(1.0, gt=0)
    alert_webhook_url: SecretStr | None = None
    """Relay target when neither ``--webhook`` nor ``--webhook-file`` is given (not in argv)."""
    alert_relay_max_per_minute: int = Field(20, ge=1)
    """Alerts POSTed per rule per event-time minute; the rest are held and summarised in one."""
    alert_relay_deadline_s: float = Field(10.0, gt=0)
    """Total time of one POST (connect, send, headers, body), however slowly the receiver sends."""
    alert_relay_refused_attempts: int = Field(3, ge=1)
    """Attempts for an alert the receiver refuses (3xx, 4xx but 408/429) before it is rejected."""
    alert_relay_retry_initial_s: float = Field(0.5, gt=0)
    alert_relay_retry_max_s: float = Field(30.0, gt=0)
    budgets: dict[str, dict[str, Decimal]] = Field(default_factory=dict)
    """JSON: ``{"team:finance": {"hourly": "5", "daily": "80"}}`` (scope → USD budgets)."""
    budget_tz: str = "UTC"
    """IANA time zone of the budget guard's hour/day/month periods (``monthly`` is guard-only)."""
    budget_redis_down: Literal["fail_open", "fail_closed"] = "fail_open"
    """Budget guard with Redis unreachable: let calls through unreserved, or refuse them."""
    budget_reservation_ttl_s: float = Field(300.0, gt=0)
    """A reservation not settled this long (its caller died) returns its estimate."""

    # --- stores ------------------------------------------------------------------------------
    postgres_dsn: str = Field("", repr=False)
    """asyncpg DSN; empty means the local stack's database (with the stack's password)."""
    redis_url: str = Field("", repr=False)
    """Redis URL; empty means the local stack's Redis."""
    prometheus_url: str = ""
    metrics_port: int = Field(19464, ge=1, le=65535)
    """First port of the worker metrics endpoints; worker N listens on metrics_port + N."""

    # --- router and response cache ---------------------------------------------------------
    router_config: Path | None = None
    """YAML/TOML file of the router's models and per-endpoint policies (README "Router")."""
    router_budget_refresh_s: float = Field(5.0, gt=0)
    router_model: Path | None = None
    """Model file from ``spendstream router train`` the Router loads; none = the packaged
    MMLU model."""
    cache_namespace: str = "default"
    cache_similarity: float = Field(0.80, gt=0, le=1)
    """Cosine threshold of a semantic hit (tuned by bench/cache_quality.py)."""
    cache_ttl_s: int = Field(86_400, ge=1)
    cache_max_entries: int = Field(100_000, ge=1)
    """Per partition (tenant × model × system prompt × sampling × earlier turns)."""
    cache_semantic_when_sampling: bool = False
    cache_embedder: Literal["local", "http"] = "local"
    cache_embedder_url: str = "https://api.openai.com/v1"
    cache_embedder_model: str = "text-embedding-3-small"
    cache_embedder_api_key: SecretStr | None = None

    # --- local stack (`spendstream stack`) ------------------------------------------------------
    stack_dir: Path = Path(".stack")
    """Data dirs, logs and the Kafka jar cache of the local stack (git-ignored)."""
    kafka_port: int = Field(19092, ge=1, le=65535)
    kafka_controller_port: int = Field(19093, ge=1, le=65535)
    kafka_heap: str = "1g"
    postgres_port: int = Field(15432, ge=1, le=65535)
    postgres_user: str = "spendstream"
    postgres_password: SecretStr | None = None
    """Empty: the stack's generated one, ``<stack_dir>/secrets/postgres_password`` (a stack
    made before that file existed: ``spendstream`` until its next full `stack down`/`up`)."""
    redis_password: SecretStr | None = None
    """Redis ``requirepass``; empty: ``<stack_dir>/secrets/redis_password`` (none if absent)."""
    postgres_db: str = "spendstream"
    redis_port: int = Field(16380, ge=1, le=65535)
    prometheus_port: int = Field(19090, ge=1, le=65535)
    metrics_targets: int = Field(4, ge=1, le=64)
    """How many worker metrics ports (from metrics_port) the local Prometheus scrapes."""
    metrics_max_label_sets: int = Field(2000, ge=1)
    """Distinct label sets per worker metric family; beyond, new ones fold into ``other``."""
    stack_timeout_s: float = Field(120.0, gt=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    def cache_config(self) -> Any:
        from .cache.semantic import CacheConfig

        return CacheConfig(
            namespace=self.cache_namespace,
            similarity=self.cache_similarity,
            ttl_s=self.cache_ttl_s,
            max_entries=self.cache_max_entries,
            semantic_when_sampling=self.cache_semantic_when_sampling,
        )

    def embedder(self) -> Any:
        """The configured embedder (the local packaged model, or an OpenAI-compatible API)."""
        from .cache.embedders import HttpEmbedder, local_embedder

        if self.cache_embedder == "local":
            return local_embedder()
        key = self.cache_embedder_api_key
        return HttpEmbedder(
            self.cache_embedder_url,
            self.cache_embedder_model,
            key.get_secret_value() if key else None,
        )

    def rule_config(self) -> Any:
        """The spike-rule thresholds as the stream's RuleConfig."""
        from .stream.rules import RuleConfig

        return RuleConfig(
            evidence=self.alert_evidence,
            ratio=self.alert_ratio,
            error_ratio=self.alert_error_ratio,
            baseline_minutes=self.alert_baseline_minutes,
            min_baseline_minutes=self.alert_min_baseline_minutes,
            season_days=self.alert_season_days,
            resolve_minutes=self.alert_resolve_minutes,
            cooldown_minutes=self.alert_cooldown_minutes,
            material_share=self.alert_material_share,
            material_usd_per_day=self.alert_material_usd_per_day,
            runaway_minutes=self.alert_runaway_minutes,
            runaway_ratio=self.alert_runaway_ratio,
            runaway_min_calls=self.alert_runaway_min_calls,
            runaway_usd_per_day=self.alert_runaway_usd_per_day,
            runaway_false_per_week=self.alert_runaway_false_pages_per_week,
            budgets=self.budgets,
        )

    @field_validator("budgets")
    @classmethod
    def _budgets_are_whole_picodollars(
        cls, v: dict[str, dict[str, Decimal]]
    ) -> dict[str, dict[str, Decimal]]:
        """Refused at startup, not in the worker's rules: money is whole picodollars."""
        for periods in v.values():
            for usd in periods.values():
                usd_to_pico(usd)
        return v

    @field_validator("alert_material_usd_per_day", "alert_runaway_usd_per_day")
    @classmethod
    def _material_is_whole_picodollars(cls, v: Decimal) -> Decimal:
        usd_to_pico(v)
        return v

    @model_validator(mode="after")
    def _derive_local_addresses(self) -> Self:
        if not self.kafka_bootstrap_servers:
            self.kafka_bootstrap_servers = f"127.0.0.1:{self.kafka_port}"
        if not self.prometheus_url:
            self.prometheus_url = f"http://127.0.0.1:{self.prometheus_port}"
        self.stack_dir = self.stack_dir.expanduser().resolve()
        self._derived = frozenset(f for f in ("postgres_dsn", "redis_url") if not getattr(self, f))
        self.reload_stack_secrets()
        return self

    _derived: frozenset[str] = PrivateAttr(default=frozenset())
    """The store addresses derived from the local stack (not given by the user)."""

    def stack_secret_path(self, name: str) -> Path:
        """Where `stack up` keeps the generated password ``name`` (postgres, redis): 0600."""
        return self.stack_dir / "secrets" / f"{name}_password"

    def stack_secret(self, name: str) -> str | None:
        """The local stack's password ``name``: the setting if given, else the stack's file."""
        given: SecretStr | None = getattr(self, f"{name}_password")
        if given is not None:
            return given.get_secret_value()
        try:
            return self.stack_secret_path(name).read_text().strip() or None
        except (FileNotFoundError, NotADirectoryError):
            return None

    def reload_stack_secrets(self) -> None:
        """(Re)derive the local DSN and Redis URL from the stack's passwords, in place: `stack
        up` calls it after generating them, for the callers that already hold this object."""
        if "postgres_dsn" in self._derived:
            pw = quote(self.stack_secret("postgres") or LEGACY_POSTGRES_PASSWORD, safe="")
            self.postgres_dsn = (
                f"postgresql://{self.postgres_user}:{pw}@127.0.0.1:{self.postgres_port}"
                f"/{self.postgres_db}"
            )
        if "redis_url" in self._derived:
            rpw = self.stack_secret("redis")
            auth = f":{quote(rpw, safe='')}@" if rpw else ""
            self.redis_url = f"redis://{auth}127.0.0.1:{self.redis_port}/0"

    def isolated(self, name: str, **extra: Any) -> tuple[Settings, dict[str, str]]:
        """These settings with topics ``<name>.raw`` … and worker group ``name``: a run that
        must not share event-time state with others (the demo, a soak, a test). Also returned
        as ``SPENDSTREAM_*`` variables for the run's child processes. ``extra`` overrides
        fields as given: derived addresses (``postgres_dsn`` …) are not recomputed."""
        update: dict[str, Any] = {
            f"topic_{t}": f"{name}.{t}"
            for t in ("raw", "enriched", "alerts", "dlq", "partials", "windows")
        }
        update["worker_app_id"] = name
        update.update(extra)
        env = {f"SPENDSTREAM_{k.upper()}": str(v) for k, v in update.items()}
        env["SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS"] = self.kafka_bootstrap_servers
        env["SPENDSTREAM_STACK_DIR"] = str(self.stack_dir)
        return type(self).model_validate({**self.model_dump(), **update}), env

    def librdkafka(self, **overrides: Any) -> dict[str, Any]:
        """confluent-kafka client config: connection + security + passthrough + overrides."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol.lower(),
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            conf["ssl.key.location"] = str(self.kafka_ssl_keyfile)
        conf.update(self.kafka_client_config)
        conf.update(overrides)
        return conf

    def aiokafka(self) -> dict[str, Any]:
        """aiokafka (and so Faust) connection kwargs with the same security settings."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            kw["sasl_mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            kw["sasl_plain_username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            kw["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            ctx = ssl.create_default_context(
                cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
            )
            if self.kafka_ssl_certfile:
                ctx.load_cert_chain(
                    str(self.kafka_ssl_certfile),
                    str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                )
            kw["ssl_context"] = ctx
        return kw


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read from the environment once."""
    return Settings()
