"""Settings from ``VOMS_`` environment variables; no configuration file is needed."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATABASE_URL = "sqlite:///voms.db"


class Settings(BaseSettings):
    """Every setting, its default, and what it is for (README "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="VOMS_", extra="ignore")

    database_url: str = Field(
        DEFAULT_DATABASE_URL,
        description="SQLAlchemy URL; SQLite file in the working directory by default.",
    )
    keys_file: Path | None = Field(
        None,
        description="Key file; default: voms-keys.json next to the SQLite file.",
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field("text", description="json: one object a line.")
    host: str = Field("127.0.0.1", description="Address `voms serve` binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port `voms serve` binds.")
    workers: int = Field(1, ge=1, le=256, description="Worker processes of `voms serve`.")
    db_pool_size: int = Field(5, ge=1, description="Connections kept open per process.")
    db_max_overflow: int = Field(10, ge=0, description="Extra connections under load.")
    db_pool_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Wait for a free connection; also bounds connecting and a silent server"
        " (docs/operations.md, High availability).",
    )
    read_database_url: str | None = Field(
        None,
        description="A standby (streaming replica) that serves reports, lookups and lists;"
        " unset: the primary serves them. Redemptions and changes always go to the primary.",
    )
    db_prepared_statements: bool = Field(
        True,
        description="The redemption's statements are prepared once per connection; false"
        " behind a pooler in transaction mode that does not keep them (PgBouncer < 1.21).",
    )
    redemption_threads: int = Field(
        4,
        ge=1,
        le=64,
        description="Redemption-family calls run at once per worker process; each of these"
        " threads keeps one of the pool's connections.",
    )
    serial_width: int = Field(12, ge=6, le=18, description="Digits of a voucher serial.")
    require_approval: bool = Field(
        False, description="Four-eyes: who generated a batch cannot activate it."
    )
    max_bad_pin_attempts: int = Field(5, ge=1, description="Bad PINs before a blacklist.")
    blacklist_minutes: int = Field(60, ge=1, description="How long a blacklist lasts.")
    rate_limit_per_second: float = Field(
        2000.0, gt=0, description="Sustained requests per second allowed per API key."
    )
    rate_limit_burst: int = Field(4000, ge=1, description="Burst allowed per API key.")
    # --- hardening (SECURITY.md) ---
    trusted_proxies: str = Field(
        "",
        description="Addresses or networks (CIDR) of reverse proxies, comma-separated, whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; unset: nobody's.",
    )
    invalid_keys_per_minute: int = Field(
        30, ge=1, description="Invalid API keys one client address may present a minute."
    )
    max_body_kb: int = Field(64, ge=1, description="Largest request body, imports excepted.")
    max_import_body_mb: int = Field(
        80, ge=1, description="Largest body of POST /api/v1/imports (the CSV as JSON)."
    )
    lookup_failure_window_minutes: int = Field(
        60, ge=1, le=1440, description="Sliding window of the failed-lookup budgets."
    )
    lookup_failures_per_key: int = Field(
        600, ge=1, description="Failed voucher lookups an API key may make per window."
    )
    lookup_failures_per_provider: int = Field(
        3000, ge=1, description="Failed voucher lookups naming one service provider per window."
    )
    lookup_failures_per_client: int = Field(
        20,
        ge=1,
        description="Failed voucher lookups per client address (and key) per window on "
        "channels where the subscriber types the MSISDN (/m, REST channel rest or web).",
    )
    lookup_failure_alert_factor: float = Field(
        5.0,
        ge=1,
        description="A subject's failed lookups in one minute this many times its average "
        "minute over the window raise the alert guessing.alert.",
    )
    lookup_failure_alert_minimum: int = Field(
        30, ge=1, description="Failed lookups in one minute below which no alert is raised."
    )
    msisdn_rate_limit_per_minute: int = Field(
        30,
        ge=1,
        description="Redemptions per minute per MSISDN on the subscriber channels (USSD, "
        "SMS, IVR, web), bursts as large.",
    )
    idempotency_retention_hours: int = Field(48, ge=24, description="How long request ids live.")
    generation_chunk_size: int = Field(
        20_000, ge=100, description="Vouchers generated and written per chunk."
    )
    background_generation_threshold: int = Field(
        10_000, ge=0, description="Batches larger than this are generated in the background."
    )
    gpg_binary: str = Field("gpg", description="GnuPG executable that encrypts exports.")
    background_export_threshold: int = Field(
        10_000,
        ge=0,
        description="API exports of more vouchers than this run in the background.",
    )
    export_link_minutes: int = Field(
        60, ge=1, le=10_080, description="How long an export's download link stays valid."
    )

    # --- housekeeping (README "Housekeeping jobs") ---
    scheduler_enabled: bool = Field(
        True, description="Run housekeeping jobs on their schedules inside `voms serve`."
    )
    job_schedules: dict[str, str] = Field(
        default_factory=dict,
        description='Cron schedule per job, JSON: {"voucher_archive": "30 2 * * *"}; "off" '
        "disables a job.",
    )
    housekeeping_chunk_size: int = Field(
        20_000, ge=100, le=200_000, description="Rows a housekeeping job moves per transaction."
    )
    archive_retention_days: int = Field(
        180, ge=1, description="Redeemed, expired and deleted vouchers archived after this."
    )
    account_grace_days: int = Field(
        30,
        ge=0,
        le=36_500,
        description="Days after its expiry date an expired account is revived by a "
        "recharge; after them the account_lifecycle job deactivates it.",
    )
    job_lease_seconds: int = Field(
        300, ge=10, description="A job's lease; renewed every chunk, so a dead runner frees it."
    )
    export_dir: Path | None = Field(
        None,
        description="Where the daily transaction feed (Parquet, CSV, manifest) is written; "
        "unset: the transaction_feed job does nothing.",
    )

    # --- events (docs/events.md) ---
    events_relay_enabled: bool = Field(
        True,
        description="Run the event relay inside `voms serve` (one relay delivers at a time "
        "across processes and hosts; `voms events relay` runs it on its own).",
    )
    nats_url: SecretStr | None = Field(
        None, description="NATS server; events are published on subject voms.<type>."
    )
    amqp_url: SecretStr | None = Field(
        None,
        description="RabbitMQ (AMQP 0-9-1) URL; events go to the topic exchange voms.events "
        "with routing key <type>.",
    )
    events_source: str = Field(
        "/openvoms", description="The CloudEvents `source` of every event this system sends."
    )
    events_poll_s: float = Field(
        0.5, gt=0, le=60, description="How often an idle relay looks for new events."
    )
    events_lease_s: float = Field(
        30.0,
        ge=1,
        description="The relay's lease; a relay that dies frees delivery after this long.",
    )
    events_batch: int = Field(
        200, ge=1, le=10_000, description="Events the relay reads and sends at a time."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Time a webhook has to answer.")
    events_retry_max_s: int = Field(
        600, ge=1, description="Longest wait between two attempts of one delivery."
    )
    events_dead_after_s: int = Field(
        86_400, ge=1, description="A delivery failing this long is dead-lettered (a day)."
    )
    events_keep_days: int = Field(
        7, ge=1, description="Delivered events are kept this long (to look at and replay)."
    )

    # --- subscriber channels: USSD, SMS (Kannel), IVR (FastAGI), mobile web ---
    soap_address: str | None = Field(
        None,
        description="Public URL of /soap written into the WSDL; default: the URL the client used.",
    )
    texts_file: Path | None = Field(
        None, description="JSON file of subscriber texts per service provider and language."
    )
    channel_language: str = Field(
        "en", min_length=2, max_length=16, description="Language of texts when none is asked."
    )
    channel_pin_retries: int = Field(
        2, ge=0, le=10, description="Bad PINs a subscriber may re-enter in a session or call."
    )
    ussd_secret: SecretStr | None = Field(
        None, description="Shared secret the USSD gateway sends (?secret=); unset: /ussd off."
    )
    ussd_session_timeout_s: int = Field(
        180, ge=10, le=3600, description="A USSD session forgotten after this much silence."
    )
    sms_secret: SecretStr | None = Field(
        None, description="Shared secret in Kannel's get-url (?secret=); unset: /sms off."
    )
    sms_recharge_keywords: str = Field("RCH", description="Comma-separated recharge keywords.")
    sms_balance_keywords: str = Field("BAL", description="Comma-separated balance keywords.")
    sms_language_keywords: str = Field(
        "LANG", description="Comma-separated keywords choosing the subscriber's language."
    )
    kannel_sendsms_url: str | None = Field(
        None, description="Kannel smsbox sendsms URL for notices to recharged numbers."
    )
    kannel_sendsms_username: str = Field("voms", description="Kannel sendsms-user username.")
    kannel_sendsms_password: SecretStr | None = Field(
        None, description="Kannel sendsms-user password."
    )
    kannel_sendsms_from: str | None = Field(None, description="Sender of the notices.")
    confirmation_sms: bool = Field(
        False,
        description="After a recharge through USSD, IVR or /m, confirm it to the subscriber by "
        "SMS (through VOMS_KANNEL_SENDSMS_URL).",
    )
    agi_host: str = Field("127.0.0.1", description="Addresses `voms agi` binds, comma-separated.")
    agi_port: int = Field(4573, ge=1, le=65535, description="Port `voms agi` binds.")
    agi_allowed_clients: str = Field(
        "127.0.0.1,::1", description="Asterisk addresses or networks allowed, comma-separated."
    )
    agi_prompts: dict[str, str] = Field(
        default_factory=dict,
        description='Sound file names replacing the defaults, JSON: {"enter_pin": "my/pin"}.',
    )
    agi_digit_timeout_ms: int = Field(
        6000, ge=1000, le=60_000, description="How long GET DATA waits for digits."
    )
    mobile_enabled: bool = Field(True, description="Serve the mobile recharge page at /m.")
    mobile_rate_limit_per_minute: int = Field(
        10, ge=1, description="Recharge attempts per minute per client address at /m."
    )
    ui_session_idle_minutes: int = Field(
        30, ge=1, le=1440, description="Console: a session unused this long ends."
    )
    ui_session_max_hours: int = Field(
        12, ge=1, le=168, description="Console: a session ends this long after sign-in."
    )
    ui_max_failed_sign_ins: int = Field(
        5, ge=1, description="Console: failed sign-ins in a row before the account locks."
    )
    ui_lockout_minutes: int = Field(15, ge=1, description="Console: how long a lockout lasts.")
    ui_require_totp: bool = Field(
        False, description="Console: admins must sign in with a TOTP code (second factor)."
    )
    ui_cookie_secure: bool | None = Field(
        None,
        description="Console cookies' Secure flag; unset: on, except for plain http to a"
        " loopback address (a local trial).",
    )

    # --- alerts (docs/alerts.md): operators by e-mail, subscribers by SMS (Kannel) ---
    smtp_host: str | None = Field(
        None, description="SMTP server for operator alerts; unset: no alert e-mail is sent."
    )
    smtp_port: int = Field(25, ge=1, le=65535, description="SMTP port (587 STARTTLS, 465 TLS).")
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        "none", description="none, starttls (STARTTLS after connecting) or tls (implicit TLS)."
    )
    smtp_username: str | None = Field(None, description="SMTP user, if the server wants one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_from: str = Field("voms@localhost", description="Sender of alert e-mail.")
    smtp_to: str = Field(
        "",
        description="Comma-separated addresses of the installation's operators: job failures,"
        " and the alerts of providers that name no operator_emails of their own.",
    )
    smtp_timeout_s: float = Field(10.0, gt=0, le=120, description="SMTP connection timeout.")
    alert_max_attempts: int = Field(
        10, ge=1, le=100, description="Sending attempts of one alert before it is given up."
    )

    # --- external charging systems (docs/charging.md) ---
    charging_breaker_failures: int = Field(
        5, ge=1, description="Calls in a row with no answer that open a charging system's circuit."
    )
    charging_breaker_reset_s: float = Field(
        30.0, gt=0, description="How long an open circuit refuses calls before one trial call."
    )
    charging_max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Calls that may wait on one charging system at once, per process; unset: "
        "one less than VOMS_REDEMPTION_THREADS (at least 1).",
    )
    charging_settle_after_s: int = Field(
        30,
        ge=1,
        description="First retry of a charge whose outcome is unknown; doubles up to 10 minutes.",
    )

    # --- resellers ---
    sales_per_minute: int = Field(
        60, ge=1, description="Electronic PIN sales (POST /api/v1/sales) per minute per API key."
    )

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @model_validator(mode="after")
    def _connections_left_for_the_rest(self) -> "Settings":
        if self.redemption_threads >= self.db_pool_size + self.db_max_overflow:
            raise ValueError(
                "VOMS_REDEMPTION_THREADS must be below VOMS_DB_POOL_SIZE + VOMS_DB_MAX_OVERFLOW:"
                " each redemption thread keeps a connection, and API keys and every other"
                " call need one too"
            )
        return self

    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for an in-memory or non-SQLite database."""
        if not self.is_sqlite:
            return None
        path = self.database_url.split("///", 1)[1] if "///" in self.database_url else ""
        path = path.split("?", 1)[0]
        if not path or path == ":memory:":
            return None
        return Path(path)

    def resolved_keys_file(self) -> Path:
        """Where the key file lives: explicit setting, else beside the SQLite file."""
        if self.keys_file is not None:
            return self.keys_file
        db_file = self.sqlite_path()
        folder = db_file.parent if db_file is not None else Path()
        return folder / "voms-keys.json"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
