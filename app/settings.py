"""Settings read once from the environment, frozen, and passed down explicitly."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from urllib.parse import parse_qs, urlparse

DELETION_MODES = ("anonymize", "delete")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_SCHEMA = "stripeline"
# A plain lower-case identifier: no quoting needed anywhere, and no surprise in SQL.
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# PostgreSQL connections per process when STRIPELINE_DB_POOL_SIZE is unset: web 6 (its four
# ingest flushers and two for the API and health checks), worker 8, a one-off command 4.
# Together 18, within the 20 the smallest managed plans allow, with two to spare for psql.
DEFAULT_POOL_SIZES = {"web": 6, "worker": 8, "command": 4}
# rediss:// certificate checks, as the URL may ask for them (`?ssl_cert_reqs=required`).
REDIS_CERT_CHECKS = ("none", "optional", "required")


class ConfigError(Exception):
    """The environment is missing a required variable or holds a malformed one."""


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    parts = urlparse(value)
    if parts.scheme not in schemes:
        raise ConfigError(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
    try:
        parts.port  # noqa: B018 - urlparse checks the port only when asked
    except ValueError:
        # Never echo the URL: it usually holds a password.
        raise ConfigError(f"{name} has a malformed port") from None
    return value


def _database_url(env: Mapping[str, str]) -> str | None:
    value = _url(env, "DATABASE_URL", ("postgres", "postgresql"))
    if value is not None:
        parts = urlparse(value)
        named = parts.path.strip("/") or parse_qs(parts.query).get("dbname") or parse_qs(parts.query).get("database")
        if not named:
            # libpq would fall back to a database named after the user: never migrate that by accident.
            raise ConfigError("DATABASE_URL must name a database, e.g. postgres://user:password@host:5432/stripeline")
    return value


def _redis_url(env: Mapping[str, str]) -> str | None:
    value = _url(env, "REDIS_URL", ("redis", "rediss", "unix"))
    if value is not None:
        parts = urlparse(value)
        asked = parse_qs(parts.query).get("ssl_cert_reqs")
        if asked and asked[-1] not in REDIS_CERT_CHECKS:
            raise ConfigError(f"REDIS_URL ssl_cert_reqs must be one of {', '.join(REDIS_CERT_CHECKS)}")
        if asked and parts.scheme != "rediss":
            raise ConfigError("REDIS_URL asks for certificate checks (ssl_cert_reqs) but is not a rediss:// (TLS) URL")
    return value


def valid_schema(name: str) -> bool:
    return bool(_SCHEMA_NAME.match(name)) and not name.startswith("pg_")


def _schema(env: Mapping[str, str]) -> str:
    value = env.get("STRIPELINE_SCHEMA", "").strip() or DEFAULT_SCHEMA
    if not valid_schema(value):
        raise ConfigError(
            f"STRIPELINE_SCHEMA must be a lower-case name of letters, digits and _ (at most 63), got {value!r}"
        )
    return value


def _web_concurrency(env: Mapping[str, str]) -> int:
    # Heroku's Python buildpack sets WEB_CONCURRENCY by dyno size when the app has not (2 on
    # the smallest dynos) and says so in WEB_CONCURRENCY_SET_BY. Its guess suits synchronous
    # servers; one asyncio process serves our webhooks, and a second would double the web's
    # PostgreSQL connections. Only a value the user set counts.
    if env.get("WEB_CONCURRENCY_SET_BY", "").strip() == "heroku/python":
        return 1
    return _int(env, "WEB_CONCURRENCY", 1, minimum=1)


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get("STRIPE_WEBHOOK_SECRET", "")
    secrets = tuple(s.strip() for s in raw.split(",") if s.strip())
    for secret in secrets:
        if not secret.startswith("whsec_"):
            # Never echo the value: it is a secret even when malformed.
            raise ConfigError("STRIPE_WEBHOOK_SECRET must hold whsec_... secrets, comma separated")
    return secrets


def _without_password(url: str | None) -> str | None:
    """The URL with its password (if any) replaced by ***, for repr and messages."""
    if not url:
        return url
    parts = urlparse(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


# Fields never shown by repr(): secrets, and URLs that may carry a password (shown without it).
SECRET_FIELDS = ("webhook_secrets", "api_token", "stripe_api_key", "segment_webhook_secret")
URL_FIELDS = ("database_url", "redis_url", "stripe_api_base", "segment_webhook_url")


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    api_token: str | None = None
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    deleted_customers: str = "anonymize"
    webhook_tolerance: int = 300
    port: int = 8000
    log_level: str = "info"
    log_format: str = "json"
    queue_name: str = "arq:queue"
    max_attempts: int = 8
    retry_base_seconds: int = 5
    segment_refresh_seconds: int = 60
    segment_webhook_url: str | None = None
    segment_webhook_secret: str | None = None
    schema: str = DEFAULT_SCHEMA
    # None: each kind of process takes its default from DEFAULT_POOL_SIZES.
    db_pool_size: int | None = None
    web_concurrency: int = 1
    # Proxies whose X-Forwarded-For/-Proto headers the web process believes (uvicorn's
    # forwarded_allow_ips); None believes nobody's, so a client cannot forge its address.
    forwarded_allow_ips: str | None = None

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in SECRET_FIELDS and value:
                value = "<hidden>"
            elif item.name in URL_FIELDS:
                value = _without_password(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=_database_url(env),
            redis_url=_redis_url(env),
            webhook_secrets=_secrets(env),
            api_token=env.get("STRIPELINE_API_TOKEN", "").strip() or None,
            stripe_api_key=env.get("STRIPE_API_KEY", "").strip() or None,
            stripe_api_base=_url(env, "STRIPE_API_BASE", ("http", "https")),
            deleted_customers=_choice(env, "STRIPELINE_DELETED_CUSTOMERS", DELETION_MODES, "anonymize"),
            webhook_tolerance=_int(env, "STRIPELINE_WEBHOOK_TOLERANCE", 300, minimum=1),
            port=_int(env, "PORT", 8000, minimum=1),
            log_level=_choice(env, "LOG_LEVEL", LOG_LEVELS, "info"),
            log_format=_choice(env, "LOG_FORMAT", LOG_FORMATS, "json"),
            queue_name=env.get("STRIPELINE_QUEUE", "").strip() or "arq:queue",
            max_attempts=_int(env, "STRIPELINE_MAX_ATTEMPTS", 8, minimum=1),
            retry_base_seconds=_int(env, "STRIPELINE_RETRY_BASE_SECONDS", 5, minimum=0),
            segment_refresh_seconds=_int(env, "STRIPELINE_SEGMENT_REFRESH_SECONDS", 60, minimum=1),
            segment_webhook_url=_url(env, "STRIPELINE_SEGMENT_WEBHOOK_URL", ("http", "https")),
            segment_webhook_secret=env.get("STRIPELINE_SEGMENT_WEBHOOK_SECRET", "").strip() or None,
            schema=_schema(env),
            # Three: a replay holds one connection for its lock, one to read ahead, one to apply.
            db_pool_size=_int(env, "STRIPELINE_DB_POOL_SIZE", 0, minimum=3) or None,
            web_concurrency=_web_concurrency(env),
            forwarded_allow_ips=env.get("STRIPELINE_FORWARDED_ALLOW_IPS", "").strip() or None,
        )

    def pool_size(self, process: str) -> int:
        """PostgreSQL connections one process of this kind may open: the setting, or its default."""
        return self.db_pool_size or DEFAULT_POOL_SIZES[process]

    def require(self, *names: str) -> None:
        """Stop with one line naming the first required variable that is unset."""
        present = {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "STRIPE_WEBHOOK_SECRET": self.webhook_secrets,
            "STRIPELINE_API_TOKEN": self.api_token,
            "STRIPE_API_KEY": self.stripe_api_key,
        }
        for name in names:
            if not present[name]:
                raise ConfigError(f"{name} is required but not set")
