"""Settings from the environment (and a ``.env`` file beside the project, if present).

Every setting is listed, with a comment, in ``.env.example``. In production the app refuses to start
without its secret key and its master key ring.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(RuntimeError):
    """The configuration cannot be used; the message says which setting and why."""


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(str(raw))
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from exc


@dataclass(frozen=True)
class Settings:
    env: str
    secret_key: str
    database_url: str
    redis_url: str | None
    jobs_mode: str
    var_dir: Path
    keyring_path: Path
    master_keyring: str | None
    blob_store_url: str
    smtp_url: str | None
    mail_from: str
    public_base_url: str
    trusted_proxy_count: int
    ratelimit_storage_uri: str
    max_content_length: int
    access_token_ttl: timedelta
    refresh_token_ttl: timedelta
    staff_session_idle: timedelta
    staff_session_max: timedelta
    reauth_window: timedelta
    password_reset_ttl: timedelta
    invitation_ttl: timedelta
    cors_origins: tuple[str, ...]
    stripe_secret_key: str
    stripe_api_base: str | None
    stripe_webhook_secret: str | None
    log_level: str
    stripe_max_network_retries: int = 2
    dev_mailbox: bool = False
    # blob store reconciliation (vault): how old an unreferenced file must be, and how often to list
    blob_orphan_grace: timedelta = timedelta(hours=1)
    blob_reconcile_interval: timedelta | None = timedelta(hours=1)
    # image decoding (marketplace.imagepool): where and under which limits untrusted images are decoded
    image_decode_mode: str = "pool"
    image_decode_workers: int = 2
    image_decode_memory_mb: int = 1024
    image_decode_cpu_seconds: int = 10
    image_decode_timeout_seconds: int = 20
    image_decode_wait_seconds: int = 10
    limits: dict[str, str] = field(default_factory=dict)
    mfa_lock_after_failures: int = 10
    mfa_lock_duration: timedelta = timedelta(minutes=15)
    password_hash_workers: int = 1
    password_hash_waiting: int = 1
    password_hash_wait: timedelta = timedelta(seconds=10)
    # the platform as the supplier on its own tax invoices (P-23): its legal name, address and TRN
    platform_legal_name: str = "CareJar Technologies FZ-LLC"
    platform_address: str = "Dubai Internet City, Dubai, United Arab Emirates"
    platform_trn: str = "100000000000003"
    # the handover check (P-18): the customer's selfie may be revealed only this long before and after pick-up,
    # by staff who passed MFA within handover_mfa_window
    handover_window_before: timedelta = timedelta(minutes=60)
    handover_window_after: timedelta = timedelta(minutes=180)
    handover_mfa_window: timedelta = timedelta(minutes=5)
    # post-rental charges (P-21): a fine or toll incurred this long before the handover or after the return
    # still counts as inside the rental; a deposit stays held this long after the return for charges to come
    charge_time_grace: timedelta = timedelta(minutes=30)
    deposit_keep_after_return: timedelta = timedelta(hours=48)

    @property
    def production(self) -> bool:
        return self.env == "production"

    def flask_config(self) -> dict[str, Any]:
        """The subset Flask and its extensions read from ``app.config``."""
        return {
            "SECRET_KEY": self.secret_key,
            "SQLALCHEMY_DATABASE_URI": self.database_url,
            "SQLALCHEMY_ENGINE_OPTIONS": _engine_options(self.database_url),
            "SQLALCHEMY_RECORD_QUERIES": False,
            "MAX_CONTENT_LENGTH": self.max_content_length,
            "MAX_FORM_MEMORY_SIZE": self.max_content_length,
            "RATELIMIT_STORAGE_URI": self.ratelimit_storage_uri,
            "RATELIMIT_HEADERS_ENABLED": True,
            "RATELIMIT_STRATEGY": "moving-window",
            "RATELIMIT_KEY_PREFIX": "cj",
            "SESSION_COOKIE_SECURE": self.production,
            "SESSION_COOKIE_HTTPONLY": True,
            "SESSION_COOKIE_SAMESITE": "Lax",
            "PREFERRED_URL_SCHEME": "https" if self.production else "http",
            "DEBUG": False,
            "PROPAGATE_EXCEPTIONS": False,
            "TRAP_HTTP_EXCEPTIONS": False,
            "JSON_SORT_KEYS": False,
            "API_TITLE": "CareJar marketplace API",
            "API_VERSION": "v1",
            "OPENAPI_VERSION": "3.0.3",
            "OPENAPI_URL_PREFIX": "/api",
            "OPENAPI_JSON_PATH": "openapi.json",
            "SETTINGS": self,
        }


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # WAL and a busy timeout are set per connection in extensions.py
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    # no pool_pre_ping: its round trip on every checkout was a fifth of a read's time; extensions.ping_after_idle
    # checks only connections idle long enough to have been dropped, and pool_recycle retires old ones
    return {"pool_size": 10, "max_overflow": 10, "pool_recycle": 1800}


DEFAULT_LIMITS: dict[str, str] = {
    # per account (normalised e-mail) and per client address; override with RATELIMIT_<NAME>
    "login_account": "5 per minute",
    "login_client": "30 per minute",
    "register_client": "20 per hour",
    "reset_account": "3 per hour",
    "reset_client": "20 per hour",
    "mfa_account": "5 per minute",  # shared by POST /api/v1/auth/mfa and both web MFA pages
    "mfa_client": "20 per minute",
    "refresh_client": "60 per minute",
    "upload_session": "20 per minute",
}


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:  # noqa: PLR0912, PLR0915 - one flat list
    """Read settings from ``os.environ`` (after ``.env``), with test overrides on top."""
    _load_dotenv()
    env: dict[str, str] = {k: v for k, v in os.environ.items()}
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)

    app_env = env.get("MARKETPLACE_ENV", "development").strip().lower()
    if app_env not in {"development", "production", "test"}:
        raise ConfigError("MARKETPLACE_ENV must be development, production or test")
    production = app_env == "production"
    var_dir = Path(env.get("VAR_DIR") or PROJECT_ROOT / "var").resolve()

    secret_key = env.get("SECRET_KEY", "")
    if production and len(secret_key) < 32:
        raise ConfigError("SECRET_KEY must be set to at least 32 random characters in production")
    if not secret_key:
        secret_key = _dev_secret(var_dir)

    master_keyring = env.get("MASTER_KEYRING") or None
    keyring_path = Path(env.get("KEYRING_PATH") or var_dir / "keyring.json")
    if production and not master_keyring and not keyring_path.exists():
        raise ConfigError("MASTER_KEYRING (or an existing KEYRING_PATH file) is required in production")

    redis_url = env.get("REDIS_URL") or None
    jobs_mode = env.get("JOBS_MODE") or ("redis" if redis_url else "thread")
    if jobs_mode not in {"redis", "thread", "sync"}:
        raise ConfigError("JOBS_MODE must be redis, thread or sync")
    if jobs_mode == "redis" and not redis_url:
        raise ConfigError("JOBS_MODE=redis needs REDIS_URL")

    database_url = env.get("DATABASE_URL") or f"sqlite:///{var_dir / 'marketplace.db'}"
    if database_url.startswith("postgres://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgres://")
    elif database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url.removeprefix("postgresql://")

    limits = dict(DEFAULT_LIMITS)
    for name in DEFAULT_LIMITS:
        value = env.get(f"RATELIMIT_{name.upper()}")
        if value:
            limits[name] = value

    # the local mail catcher shows one-time codes to anyone on this machine: development only
    dev_mailbox = _bool(env.get("DEV_MAILBOX"), default=app_env == "development")
    if production and dev_mailbox:
        raise ConfigError("DEV_MAILBOX shows e-mailed one-time codes and is never enabled in production")
    reconcile_minutes = _int(env, "BLOB_RECONCILE_MINUTES", 60)
    image_decode_mode = (env.get("IMAGE_DECODE_MODE") or "pool").strip().lower()
    if image_decode_mode not in {"pool", "inline"}:
        raise ConfigError("IMAGE_DECODE_MODE must be pool or inline")
    image_limits = {
        "workers": _int(env, "IMAGE_DECODE_WORKERS", 2),
        "memory_mb": _int(env, "IMAGE_DECODE_MEMORY_MB", 1024),
        "cpu_seconds": _int(env, "IMAGE_DECODE_CPU_SECONDS", 10),
        "timeout_seconds": _int(env, "IMAGE_DECODE_TIMEOUT_SECONDS", 20),
        "wait_seconds": _int(env, "IMAGE_DECODE_WAIT_SECONDS", 10),
    }
    if min(image_limits.values()) < 1:
        raise ConfigError("IMAGE_DECODE_* limits must be positive")

    stripe_key = env.get("STRIPE_SECRET_KEY", "")
    if production and not stripe_key.startswith(("sk_live_", "rk_live_", "sk_test_")):
        raise ConfigError("STRIPE_SECRET_KEY is required in production")
    stripe_retries = _int(env, "STRIPE_MAX_NETWORK_RETRIES", 2)
    if not 0 <= stripe_retries <= 10:
        raise ConfigError("STRIPE_MAX_NETWORK_RETRIES must be between 0 and 10")

    platform_trn = (env.get("PLATFORM_TRN") or Settings.platform_trn).replace(" ", "").replace("-", "")
    if not (len(platform_trn) == 15 and platform_trn.isdigit()):
        raise ConfigError("PLATFORM_TRN must be the platform's 15-digit VAT registration number")

    return Settings(
        env=app_env,
        secret_key=secret_key,
        database_url=database_url,
        redis_url=redis_url,
        jobs_mode=jobs_mode,
        var_dir=var_dir,
        keyring_path=keyring_path,
        master_keyring=master_keyring,
        blob_store_url=env.get("BLOB_STORE_URL") or f"file://{var_dir / 'blobs'}",
        smtp_url=env.get("SMTP_URL") or None,
        mail_from=env.get("MAIL_FROM") or "CareJar <no-reply@carejar.example>",
        public_base_url=(env.get("PUBLIC_BASE_URL") or "http://127.0.0.1:5000").rstrip("/"),
        trusted_proxy_count=_int(env, "TRUSTED_PROXY_COUNT", 0),
        # one count per limit across every worker: Redis when there is one, else a SQLite file under var/
        ratelimit_storage_uri=env.get("RATELIMIT_STORAGE_URI") or redis_url or f"sqlite:///{var_dir / 'ratelimits.db'}",
        max_content_length=_int(env, "MAX_CONTENT_LENGTH", 20 * 1024 * 1024),
        access_token_ttl=timedelta(seconds=_int(env, "ACCESS_TOKEN_TTL_SECONDS", 15 * 60)),
        refresh_token_ttl=timedelta(days=_int(env, "REFRESH_TOKEN_TTL_DAYS", 30)),
        staff_session_idle=timedelta(minutes=_int(env, "STAFF_SESSION_IDLE_MINUTES", 30)),
        staff_session_max=timedelta(hours=_int(env, "STAFF_SESSION_MAX_HOURS", 12)),
        reauth_window=timedelta(minutes=_int(env, "REAUTH_WINDOW_MINUTES", 15)),
        password_reset_ttl=timedelta(minutes=_int(env, "PASSWORD_RESET_TTL_MINUTES", 60)),
        invitation_ttl=timedelta(days=_int(env, "INVITATION_TTL_DAYS", 7)),
        cors_origins=tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip()),
        stripe_secret_key=stripe_key or "sk_test_localstripe",
        stripe_api_base=env.get("STRIPE_API_BASE") or (None if production else "http://127.0.0.1:8420"),
        stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET") or None,
        stripe_max_network_retries=stripe_retries,
        log_level=env.get("LOG_LEVEL", "INFO").upper(),
        dev_mailbox=dev_mailbox,
        blob_orphan_grace=timedelta(seconds=max(_int(env, "BLOB_ORPHAN_GRACE_SECONDS", 3600), 0)),
        blob_reconcile_interval=timedelta(minutes=reconcile_minutes) if reconcile_minutes > 0 else None,
        image_decode_mode=image_decode_mode,
        image_decode_workers=image_limits["workers"],
        image_decode_memory_mb=image_limits["memory_mb"],
        image_decode_cpu_seconds=image_limits["cpu_seconds"],
        image_decode_timeout_seconds=image_limits["timeout_seconds"],
        image_decode_wait_seconds=image_limits["wait_seconds"],
        limits=limits,
        mfa_lock_after_failures=max(1, _int(env, "MFA_LOCK_AFTER_FAILURES", 10)),
        mfa_lock_duration=timedelta(minutes=max(1, _int(env, "MFA_LOCK_MINUTES", 15))),
        password_hash_workers=max(1, _int(env, "PASSWORD_HASH_WORKERS", 1)),
        password_hash_waiting=max(0, _int(env, "PASSWORD_HASH_WAITING", 1)),
        password_hash_wait=timedelta(seconds=max(1, _int(env, "PASSWORD_HASH_WAIT_SECONDS", 10))),
        platform_legal_name=env.get("PLATFORM_LEGAL_NAME") or Settings.platform_legal_name,
        platform_address=env.get("PLATFORM_ADDRESS") or Settings.platform_address,
        platform_trn=platform_trn,
        handover_window_before=timedelta(minutes=max(0, _int(env, "HANDOVER_WINDOW_BEFORE_MINUTES", 60))),
        handover_window_after=timedelta(minutes=max(0, _int(env, "HANDOVER_WINDOW_AFTER_MINUTES", 180))),
        handover_mfa_window=timedelta(minutes=max(1, _int(env, "HANDOVER_MFA_MINUTES", 5))),
        charge_time_grace=timedelta(minutes=min(240, max(0, _int(env, "CHARGE_TIME_GRACE_MINUTES", 30)))),
        deposit_keep_after_return=timedelta(hours=min(120, max(0, _int(env, "DEPOSIT_KEEP_AFTER_RETURN_HOURS", 48)))),
    )


def _load_dotenv() -> None:
    path = PROJECT_ROOT / ".env"
    if path.exists():
        load_dotenv(path, override=False)


def _dev_secret(var_dir: Path) -> str:
    """Outside production a random secret is created once under ``var/`` so sessions survive restarts."""
    var_dir.mkdir(parents=True, exist_ok=True)
    path = var_dir / "secret_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
