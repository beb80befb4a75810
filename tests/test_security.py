"""SECURITY.md's promises: each names the test that holds it, and these hold the rest."""

from __future__ import annotations

import dataclasses
import hmac
import re
from importlib import resources
from pathlib import Path

import pytest

from stripeline import signature
from stripeline.http.web import create_app
from tests.conftest import API_TOKEN
from tests.services import serving

ROOT = Path(__file__).resolve().parent.parent
NAMED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def test_every_test_security_md_names_exists():
    named = NAMED_TEST.findall((ROOT / "SECURITY.md").read_text())
    assert len(named) >= 25
    missing = [f"{path}::{name}" for path, name in named
               if not re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.MULTILINE)]
    assert missing == []


@pytest.fixture
def compare_digest_calls(monkeypatch):
    calls = []
    compare = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    return calls


def test_signature_check_compares_every_secret_with_every_signature_in_constant_time(compare_digest_calls):
    body = b'{"id": "evt_1"}'
    good = signature.sign(body, "whsec_one", timestamp=1_700_000_000).split(",")[1]
    header = f"t=1700000000,{good},v1={'0' * 64},v1={'f' * 64}"
    signature.verify(body, header, ("whsec_one", "whsec_two"), 300, now=1_700_000_000)
    # The first comparison matched; all six still ran.
    assert len(compare_digest_calls) == 6


async def test_api_token_is_compared_in_constant_time_and_refused_when_wrong(client, compare_digest_calls):
    wrong = [API_TOKEN[:-1], API_TOKEN + "x", API_TOKEN.upper(), "", "é" * 12, API_TOKEN[::-1]]
    for token in wrong:
        answer = await client.get("/api/sync", headers={"authorization": f"Bearer {token}".encode()})
        assert answer.status_code == 401, token
    for header in ("", f"Basic {API_TOKEN}", API_TOKEN, f"Bearer{API_TOKEN}"):
        assert (await client.get("/api/sync", headers={"authorization": header})).status_code == 401
    assert len(compare_digest_calls) >= len(wrong)
    assert all(isinstance(a, bytes) and isinstance(b, bytes) for a, b in compare_digest_calls)
    assert (await client.get("/api/sync")).status_code == 200


def test_dashboard_keeps_the_token_in_the_tab_only():
    script = (resources.files("stripeline.http") / "static" / "dashboard.js").read_text()
    assert "sessionStorage.setItem" in script
    for elsewhere in ("localStorage", "document.cookie", "indexedDB"):
        assert elsewhere not in script


async def test_a_rotated_api_token_replaces_the_old_one(settings, pool, redis):
    rotated = dataclasses.replace(settings, api_token="a-brand-new-token-7f3a")
    async with serving(create_app(rotated, pool=pool, redis=redis)) as client:
        old = await client.get("/api/sync", headers={"authorization": f"Bearer {API_TOKEN}"})
        new = await client.get("/api/sync", headers={"authorization": "Bearer a-brand-new-token-7f3a"})
    assert (old.status_code, new.status_code) == (401, 200)
