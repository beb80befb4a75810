"""No personal data, secret or password in any line any process writes (SECURITY.md).

A whole scenario on real processes at LOG_LEVEL=debug: `stripeline migrate`, `web` and
`worker`, a customer's life in signed webhooks (each delivered twice) ending in its deletion,
the API read and written with its email in the body, refused requests full of personal data,
terminated database connections, `replay` and `import` of another person's events. Then
every line of every process is searched for each person's markers (name, email, address,
phone and VAT digits), the webhook secret, the API token and both servers' passwords.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import orjson
import pytest

from stripeline.signature import sign
from tests.faults.cluster import ROOT, SECRET, TOKEN, Cluster, running_cluster, wait_until_settled
from tests.personal_data import Person, customer, stream
from tests.servers import POSTGRES_PASSWORD, REDIS_PASSWORD, Unavailable


@pytest.fixture
async def cluster(tmp_path):
    try:
        async with running_cluster(tmp_path / "logs", workers=1, log_level="debug") as cluster:  # logs kept by pytest
            yield cluster
    except Unavailable as problem:
        pytest.skip(f"cannot run servers of our own here: {problem}")


def command(cluster: Cluster, *arguments: str) -> str:
    """Run a `stripeline` command against the cluster; everything it wrote."""
    done = subprocess.run([sys.executable, "-m", "stripeline", *arguments], env=cluster.env, cwd=ROOT, timeout=120,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout + done.stderr


async def post_webhook(client: httpx.AsyncClient, payload: dict, secret: str = SECRET) -> int:
    body = orjson.dumps(payload)
    answer = await client.post("/webhooks/stripe", content=body, headers={"stripe-signature": sign(body, secret)})
    return answer.status_code


async def test_no_process_writes_personal_data_secrets_or_passwords(cluster, tmp_path):
    ada, grace = Person(), Person()
    written = [command(cluster, "migrate")]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{cluster.port}", timeout=30,
                                 headers={"authorization": f"Bearer {TOKEN}"}) as client:
        for payload in stream(ada) * 2:
            assert await post_webhook(client, payload) == 200
        await wait_until_settled(cluster, timeout=30)
        # Refused webhooks carrying personal data: wrong secret, an email too long to be one.
        assert await post_webhook(client, stream(ada)[0], secret="whsec_wrong") == 400
        too_long = stream(ada)[1]
        too_long["data"]["object"]["email"] = ada.email * 40
        assert await post_webhook(client, too_long) == 400
        # The API, read and written with personal data in paths, queries and bodies.
        cid = ada.customer_id
        for method, path, body in [
            ("GET", f"/api/customers/{cid}", None),
            ("GET", f"/api/customers/{cid}/events", None),
            ("PUT", f"/api/customers/{cid}/attributes", {"note": f"call {ada.phone}", "owner": ada.email}),
            ("POST", f"/api/customers/{cid}/tags", {"tag": ada.marker}),
            ("POST", "/api/activity", {"email": ada.email}),
            ("POST", "/api/activity", {"email": ada.email, "at": f"not a time {ada.marker}"}),
            ("GET", f"/api/customers?q={ada.email}", None),
            ("GET", f"/api/events/{stream(ada)[0]['id']}", None),
            ("GET", f"/api/customers/{ada.email}", None),
        ]:
            answer = await client.request(method, path, json=body)
            assert answer.status_code < 500, (path, answer.status_code)
        assert (await client.get("/api/sync", headers={"authorization": f"Bearer {ada.marker}"})).status_code == 401
        await cluster.terminate_backends()
        for payload in [customer(ada)]:
            assert await post_webhook(client, {**stream(ada)[1], "id": f"evt_{ada.key}_again",
                                               "data": {"object": payload}}) == 200
        await wait_until_settled(cluster, timeout=30)
    written.append(command(cluster, "replay", "--customer", ada.customer_id))
    import_file = tmp_path / "grace.jsonl"
    import_file.write_bytes(b"\n".join(orjson.dumps(p) for p in stream(grace)) + b"\n")
    written.append(command(cluster, "import", str(import_file)))
    exit_codes = await cluster.stop()
    assert set(exit_codes.values()) == {0}

    written += [process.log_path.read_text(errors="replace") for process in cluster.processes]
    text = "\n".join(written).lower()
    assert "event_processed" in text and "webhook_received" in text  # debug lines were on
    needles = {
        "webhook secret": SECRET, "API token": TOKEN, "PostgreSQL password": POSTGRES_PASSWORD,
        "Redis password": REDIS_PASSWORD,
    }
    for person in (ada, grace):
        needles |= {f"{person.key} email": person.email, f"{person.key} name": person.name,
                    f"{person.key} phone": person.phone, f"{person.key} marker": person.marker,
                    f"{person.key} phone digits": person.phone_digits, f"{person.key} VAT digits": person.vat_digits}
    found = [what for what, needle in needles.items() if needle.lower() in text]
    assert found == []
