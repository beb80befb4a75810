"""Settings from the environment: Heroku's URL forms accepted, mistakes named in one line."""

from __future__ import annotations

import dataclasses

import pytest
from redis.asyncio.connection import SSLConnection

from stripeline.settings import ConfigError, Settings
from stripeline.store.db import connect
from stripeline.store.queue import redis_pool, redis_settings

FULL = {
    "DATABASE_URL": "postgres://u:p@db.example.com:5432/d1",
    "REDIS_URL": "rediss://:secret@redis.example.com:25061",
    "STRIPE_WEBHOOK_SECRET": "whsec_new, whsec_old",
    "STRIPELINE_API_TOKEN": "token",
}


def test_heroku_urls_and_rotated_secrets_are_read():
    settings = Settings.from_env(FULL)
    assert settings.database_url == FULL["DATABASE_URL"]
    assert settings.redis_url == FULL["REDIS_URL"]
    assert settings.webhook_secrets == ("whsec_new", "whsec_old")
    assert (settings.deleted_customers, settings.webhook_tolerance, settings.port) == ("anonymize", 300, 8000)
    assert (settings.log_level, settings.log_format) == ("info", "json")


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings.from_env(FULL).port = 1


@pytest.mark.parametrize(
    "name, value",
    [
        ("DATABASE_URL", "mysql://u@h/d"),
        ("DATABASE_URL", "postgres://u@h:port/d"),
        ("REDIS_URL", "http://h:6379"),
        ("REDIS_URL", "redis://h:99999999"),
        ("STRIPELINE_WEBHOOK_TOLERANCE", "five minutes"),
        ("STRIPELINE_WEBHOOK_TOLERANCE", "0"),
        ("STRIPELINE_DELETED_CUSTOMERS", "purge"),
        ("PORT", "http"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "loud"),
    ],
)
def test_malformed_variable_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**FULL, name: value})


def test_malformed_secret_is_named_but_never_echoed():
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET") as refused:
        Settings.from_env({**FULL, "STRIPE_WEBHOOK_SECRET": "sk_live_oops"})
    assert "sk_live_oops" not in str(refused.value)


def test_malformed_url_is_never_echoed():
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**FULL, "DATABASE_URL": "postgres://u:hunter2@h:x/d"})
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("missing", ["DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN"])
def test_missing_required_variable_is_named(missing):
    settings = Settings.from_env({k: v for k, v in FULL.items() if k != missing})
    with pytest.raises(ConfigError, match=f"{missing} is required"):
        settings.require("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "STRIPELINE_API_TOKEN")


def test_rediss_url_uses_tls_without_verifying_herokus_self_signed_certificate():
    arq_settings = redis_settings("rediss://:secret@redis.example.com:25061/2")
    assert (arq_settings.host, arq_settings.port, arq_settings.database) == ("redis.example.com", 25061, 2)
    assert arq_settings.ssl is True and arq_settings.ssl_cert_reqs == "none"
    pool = redis_pool("rediss://:secret@redis.example.com:25061/2").connection_pool
    assert pool.connection_class is SSLConnection
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    assert pool.connection_kwargs["db"] == 2


def test_rediss_url_asking_for_certificate_checks_gets_them_in_web_and_worker():
    url = "rediss://:secret@redis.example.com:25061/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    arq_settings = redis_settings(url)
    assert (arq_settings.ssl_cert_reqs, arq_settings.ssl_ca_certs, arq_settings.ssl_check_hostname) == (
        "required", "/etc/ca.pem", True
    )
    kwargs = redis_pool(url).connection_pool.connection_kwargs
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_ca_certs"], kwargs["ssl_check_hostname"]) == ("required", "/etc/ca.pem", True)
    relaxed = redis_settings("rediss://h:1?ssl_cert_reqs=required&ssl_check_hostname=false")
    assert relaxed.ssl_cert_reqs == "required" and relaxed.ssl_check_hostname is False


@pytest.mark.parametrize(
    "url, named",
    [
        ("rediss://h:6379?ssl_cert_reqs=sometimes", "ssl_cert_reqs must be one of none, optional, required"),
        ("redis://h:6379?ssl_cert_reqs=required", r"not a rediss:// \(TLS\) URL"),
    ],
)
def test_a_certificate_check_the_url_cannot_have_is_named(url, named):
    with pytest.raises(ConfigError, match=named):
        Settings.from_env({**FULL, "REDIS_URL": url})


@pytest.mark.parametrize(
    "url",
    ["postgres://", "postgres://u:p@db.example.com:5432", "postgres://u:p@db.example.com:5432/", "postgresql:///"],
)
def test_a_database_url_without_a_database_is_refused(url):
    with pytest.raises(ConfigError, match="DATABASE_URL must name a database"):
        Settings.from_env({**FULL, "DATABASE_URL": url})


@pytest.mark.parametrize(
    "url", ["postgres:///stripeline", "postgresql://u@/stripeline?host=/run/postgresql", "postgresql://h/?dbname=app"]
)
def test_socket_and_query_forms_of_a_database_name_are_accepted(url):
    assert Settings.from_env({**FULL, "DATABASE_URL": url}).database_url == url


def test_schema_pool_and_concurrency_defaults():
    settings = Settings.from_env(FULL)
    assert settings.schema == "stripeline" and settings.web_concurrency == 1
    assert {kind: settings.pool_size(kind) for kind in ("web", "worker", "command")} == {"web": 6, "worker": 8, "command": 4}
    # web + worker + one command within the 20 connections of the smallest managed plans.
    assert settings.pool_size("web") + settings.pool_size("worker") + settings.pool_size("command") <= 20
    chosen = Settings.from_env({**FULL, "STRIPELINE_DB_POOL_SIZE": "3", "STRIPELINE_SCHEMA": "billing_sync"})
    assert {chosen.pool_size(kind) for kind in ("web", "worker", "command")} == {3}
    assert chosen.schema == "billing_sync"


@pytest.mark.parametrize(
    "name, value",
    [
        ("STRIPELINE_SCHEMA", "Billing"),
        ("STRIPELINE_SCHEMA", "billing; drop table x"),
        ("STRIPELINE_SCHEMA", "pg_catalog"),
        ("STRIPELINE_SCHEMA", "a" * 64),
        ("STRIPELINE_DB_POOL_SIZE", "2"),
        ("STRIPELINE_DB_POOL_SIZE", "many"),
        ("WEB_CONCURRENCY", "0"),
    ],
)
def test_malformed_deploy_variable_is_named(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({**FULL, name: value})


def test_web_concurrency_herokus_buildpack_guessed_is_not_taken_but_one_the_user_set_is():
    guessed = {**FULL, "WEB_CONCURRENCY": "2", "WEB_CONCURRENCY_SET_BY": "heroku/python"}
    assert Settings.from_env(guessed).web_concurrency == 1
    assert Settings.from_env({**FULL, "WEB_CONCURRENCY": "3"}).web_concurrency == 3


def test_plain_redis_url_does_not_use_tls():
    assert redis_settings("redis://h:6379").ssl is False
    assert redis_pool("redis://h:6379").connection_pool.connection_class is not SSLConnection


async def test_postgres_scheme_url_connects(db_url):
    conn = await connect(db_url.replace("postgresql://", "postgres://", 1))
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


def test_repr_and_str_show_no_secret_and_no_password():
    env = {**FULL, "STRIPE_API_KEY": "rk_live_apikey123", "STRIPELINE_SEGMENT_WEBHOOK_SECRET": "seg-secret-9",
           "STRIPELINE_SEGMENT_WEBHOOK_URL": "https://hook:hookpass@hooks.example.com/x",
           "DATABASE_URL": "postgres://user:dbpass42@db.example.com:5432/d1"}
    settings = Settings.from_env(env)
    for shown in (repr(settings), str(settings), f"{settings!r}", f"{[settings]}"):
        for secret in ("dbpass42", "secret@", ":secret", "whsec_new", "whsec_old", "token'", "rk_live_apikey123",
                       "seg-secret-9", "hookpass"):
            assert secret not in shown, secret
    assert "postgres://user:***@db.example.com:5432/d1" in repr(settings)
    assert "webhook_tolerance=300" in repr(settings)


def test_forwarded_headers_are_trusted_from_nobody_unless_configured():
    assert Settings.from_env(FULL).forwarded_allow_ips is None
    assert Settings.from_env({**FULL, "STRIPELINE_FORWARDED_ALLOW_IPS": " 10.0.0.1,10.0.0.2 "}).forwarded_allow_ips == (
        "10.0.0.1,10.0.0.2"
    )
