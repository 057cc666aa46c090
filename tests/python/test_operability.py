"""Request ids, error bodies, the bearer scheme, JSON logs and /metrics, as a user of the
official `letta-client` (and a Prometheus scraper) meets them against `kelpie serve`."""

import json
import os
import subprocess
import tempfile

import httpx
import pytest
from conftest import _free_port, _wait_healthy
from letta_client import Letta, NotFoundError

API_KEY = "py-operability-key"


@pytest.fixture(scope="module")
def server():
    """`kelpie serve` with a bearer token and JSON logs into a file: (base_url, log_path)."""
    fake = subprocess.Popen([os.environ["KELPIE_FAKE_LLM_BIN"]], stdout=subprocess.PIPE, text=True)
    fake_url = fake.stdout.readline().strip()
    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="kelpie-pytest-ops-")
    log_path = os.path.join(data_dir, "kelpie.log")
    env = dict(os.environ, OPENAI_BASE_URL=fake_url, KELPIE_DEFAULT_MODEL="openai-proxy/fake-gpt",
               KELPIE_API_KEY=API_KEY, KELPIE_LOG_FORMAT="json")
    with open(log_path, "w") as log:
        kelpie = subprocess.Popen(
            [os.environ["KELPIE_BIN"], "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", data_dir],
            env=env, stderr=log,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, kelpie)
        yield base_url, log_path
    finally:
        kelpie.terminate()
        kelpie.wait(timeout=30)
        fake.terminate()
        fake.wait(timeout=10)


def _scrape(base_url):
    response = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


def test_request_ids_and_error_bodies_through_the_sdk(server):
    base_url, log_path = server
    client = Letta(base_url=base_url, api_key=API_KEY)
    created = client.agents.with_raw_response.create(
        name="py-ops", model="openai-proxy/fake-gpt", extra_headers={"X-Request-Id": "py-create-1"})
    assert created.headers["x-request-id"] == "py-create-1"
    assert created.parse().id.startswith("agent-")

    missing = "agent-00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFoundError) as refused:
        client.agents.retrieve(missing, extra_headers={"X-Request-Id": "py-missing-1"})
    assert refused.value.status_code == 404
    assert set(refused.value.body) == {"detail", "trace_id"}
    assert refused.value.body["trace_id"] == "py-missing-1"
    assert refused.value.response.headers["x-request-id"] == "py-missing-1"

    # Without an id of its own, the client gets a new one, the same in header and body.
    with pytest.raises(NotFoundError) as again:
        client.agents.retrieve(missing)
    made = again.value.response.headers["x-request-id"]
    assert len(made) == 32 and again.value.body["trace_id"] == made

    # The JSON log line of the refused request names its id, route and status.
    lines = [json.loads(line) for line in open(log_path) if line.startswith("{")]
    answered = [line for line in lines
                if line.get("span", {}).get("request_id") == "py-missing-1"
                and line["fields"].get("message") == "answered"]
    assert len(answered) == 1, lines[-5:]
    assert answered[0]["fields"]["status"] == 404
    assert answered[0]["span"]["route"] == "/v1/agents/{agent_id}"


def test_status_codes_and_the_bearer_scheme(server):
    base_url, _ = server
    for scheme in ("Bearer", "bearer", "BEARER"):
        response = httpx.get(f"{base_url}/v1/agents/", headers={"Authorization": f"{scheme} {API_KEY}"})
        assert response.status_code == 200, scheme
    basic = httpx.get(f"{base_url}/v1/agents/", headers={"Authorization": "Basic cHk6a2V5"})
    assert basic.status_code == 401 and basic.headers["www-authenticate"] == "Bearer"
    assert basic.json()["detail"] == "the Authorization scheme must be Bearer"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    too_large = httpx.post(f"{base_url}/v1/identities/", headers={**auth, "Content-Type": "application/json"},
                           content=b'{"name": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    assert too_large.status_code == 413 and "REQUEST_BODY_BYTES_MAX" in too_large.json()["detail"]
    not_json = httpx.post(f"{base_url}/v1/identities/", headers={**auth, "Content-Type": "text/plain"},
                          content=b'{"name": "a"}')
    assert not_json.status_code == 415 and set(not_json.json()) == {"detail", "trace_id"}
    too_long = httpx.get(f"{base_url}/v1/agents/", params={"name": "n" * 20_000}, headers=auth)
    assert too_long.status_code == 414 and "URI_BYTES_MAX" in too_long.json()["detail"]
    assert httpx.get(f"{base_url}/metrics").status_code == 401


def test_metrics_count_the_sdk_requests_by_route_template(server):
    base_url, _ = server
    client = Letta(base_url=base_url, api_key=API_KEY)
    created = 'kelpie_http_requests_total{method="POST",route="/v1/agents/",status="200"}'
    retrieved = 'kelpie_http_requests_total{method="GET",route="/v1/agents/{agent_id}",status="200"}'
    before = _scrape(base_url)
    ids = [client.agents.create(name=f"py-metered-{i}", model="openai-proxy/fake-gpt").id for i in range(2)]
    for agent_id in ids:
        assert client.agents.retrieve(agent_id).id == agent_id
    after = _scrape(base_url)
    assert after[created] - before.get(created, 0) == 2
    assert after[retrieved] - before.get(retrieved, 0) == 2
    assert after["kelpie_agents_registered"] - before["kelpie_agents_registered"] == 2
    assert not [series for series in after if "agent-" in series]
