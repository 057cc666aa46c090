"""Letta's login, embeddings size, tool generation and MCP connect (OAuth included), through letta-client.

letta-client 1.12 has no method of its own for these four operations, so the test calls them as
a user of the SDK would: with the client's generic `get`/`post` (its auth, base URL and errors).
"""

import json
import os
import sys

import pytest
from letta_client import AuthenticationError, BadRequestError, Letta, NotFoundError

from conftest import start_kelpie

API_KEY = "kelpie-py-key-0123456789"
PY_MCP_SERVER = os.path.join(os.path.dirname(__file__), "fixtures", "py_mcp_server.py")
OAUTH_MCP_SERVER = os.path.join(os.path.dirname(__file__), "fixtures", "oauth_mcp_server.py")


@pytest.fixture(scope="module")
def keyed_url():
    url, stop = start_kelpie({"KELPIE_API_KEY": API_KEY})
    try:
        yield url
    finally:
        stop()


def test_the_api_key_logs_in_as_admin_without_a_token_and_nothing_else_does(keyed_url):
    anonymous = Letta(base_url=keyed_url, api_key="not-the-key")
    logged_in = anonymous.post("/v1/auth", body={"password": API_KEY}, cast_to=object)
    assert logged_in == {"uuid": "00000000-0000-4000-8000-000000000000", "is_admin": True}
    with pytest.raises(AuthenticationError) as refused:
        anonymous.post("/v1/auth", body={"password": "guess"}, cast_to=object)
    assert refused.value.status_code == 401
    assert "wrong password" in refused.value.body["detail"] and API_KEY not in json.dumps(refused.value.body)
    with pytest.raises(AuthenticationError):
        anonymous.agents.list()  # the login opens nothing else
    keyed = Letta(base_url=keyed_url, api_key=API_KEY)
    assert keyed.agents.list().items == []


def test_total_storage_size_follows_the_stored_archival_passages(client):
    def size(unit=None):
        headers = {"storage-unit": unit} if unit else {}
        return client.get("/v1/embeddings/total_storage_size", cast_to=float, options={"headers": headers})

    before = size("B")
    agent = client.agents.create(name="sizer", model="openai-proxy/fake-gpt")
    dim = agent.embedding_config.embedding_dim
    for text in ["one", "two", "three", "four"]:
        client.agents.passages.create(agent.id, text=text)
    assert size("B") == before + 4 * dim * 4
    assert size("KB") == pytest.approx((before + 4 * dim * 4) / 1024)
    assert size() == pytest.approx((before + 4 * dim * 4) / 1024**3), "GB by default"
    passage = client.agents.passages.list(agent.id)[0]
    client.agents.passages.delete(passage.id, agent_id=agent.id)
    assert size("B") == before + 3 * dim * 4
    client.agents.delete(agent.id)
    assert size("B") == before, "a deleted agent's passages no longer count"
    with pytest.raises(BadRequestError) as refused:
        size("PB")
    assert "not one of B, KB, MB, GB, TB" in refused.value.body["detail"]


def test_a_generated_tool_is_parsed_not_stored_and_can_then_be_created(client):
    generated = client.post("/v1/tools/generate-tool", cast_to=object, body={
        "tool_name": "whisper", "prompt": "Whisper the text.", "validation_errors": []})
    tool = generated["tool"]
    assert tool["name"] == "whisper" and tool["json_schema"]["description"] == "Whisper the text."
    assert tool["json_schema"]["parameters"]["properties"]["text"]["type"] == "string"
    assert generated["sample_args"] == {"text": "hello"} and generated["response"] == "Here is whisper."
    assert client.tools.list(name="whisper").items == [], "generating stores nothing"
    created = client.tools.create(source_code=tool["source_code"])
    assert created.name == "whisper" and created.json_schema == tool["json_schema"]
    with pytest.raises(BadRequestError) as refused:
        client.post("/v1/tools/generate-tool", cast_to=object, body={
            "tool_name": "whisper", "prompt": "/source def whisper(:", "validation_errors": []})
    assert refused.value.body["detail"].startswith("Failed to generate JSON schema for tool 'whisper'")


def test_connect_streams_the_attempt_then_the_mcp_servers_tools():
    from test_mcp_and_tools import _serve

    port, mcp = _serve([sys.executable, PY_MCP_SERVER, "streamable-http", "{port}"], {}, "the Python MCP server")
    url, stop = start_kelpie({"KELPIE_MCP_ALLOW_INTERNAL_URLS": "true"})
    try:
        client = Letta(base_url=url)
        server = client.mcp_servers.create(server_name="py", config={
            "mcp_server_type": "streamable_http", "server_url": f"http://127.0.0.1:{port}/mcp"})
        text = client.get(f"/v1/mcp-servers/connect/{server.id}", cast_to=str)
        events = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
        assert events[0] == {"event": "connection_attempt", "server_name": "py"}
        assert events[1]["event"] == "success", events
        assert {"add", "shout", "fail"} <= {tool["name"] for tool in events[1]["tools"]}
        with pytest.raises(NotFoundError):
            client.get("/v1/mcp-servers/connect/mcp_server-unknown", cast_to=str)
    finally:
        stop()
        mcp.kill()
        mcp.wait()


def test_connect_runs_the_oauth_flow_once_and_later_connections_use_the_token():
    """A server behind OAuth (with its own authorization server): the stream hands out the
    authorization URL; the user's browser approves and comes back through the callback (no bearer
    token); the stream then lists the tools with the token, which is stored for later."""
    import httpx

    from test_mcp_and_tools import _serve

    port, fixture = _serve([sys.executable, OAUTH_MCP_SERVER, "{port}"], {}, "the OAuth MCP server")
    url, stop = start_kelpie({"KELPIE_MCP_ALLOW_INTERNAL_URLS": "true", "KELPIE_API_KEY": API_KEY})
    try:
        client = Letta(base_url=url, api_key=API_KEY)
        server = client.mcp_servers.create(server_name="guarded", config={
            "mcp_server_type": "streamable_http", "server_url": f"http://127.0.0.1:{port}/mcp"})
        assert client.mcp_servers.tools.list(server.id) == [], "nothing listed before authorization"
        events, callback = [], None
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.stream("GET", f"{url}/v1/mcp-servers/connect/{server.id}", headers=bearer, timeout=60) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data: "):
                    continue
                events.append(json.loads(line[len("data: "):]))
                if events[-1]["event"] == "waiting_for_auth":
                    # The user's browser: the provider approves and sends it back to Kelpie.
                    approved = httpx.get(events[-2]["url"], follow_redirects=False)
                    assert approved.status_code == 302, approved.text
                    assert approved.headers["location"].startswith(f"{url}/v1/tools/mcp/oauth/callback?")
                    callback = httpx.get(approved.headers["location"])  # no bearer token
        assert [e["event"] for e in events] == [
            "connection_attempt", "oauth_required", "authorization_url", "waiting_for_auth", "success"], events
        assert "code_challenge_method=S256" in events[2]["url"] and events[2]["session_id"]
        assert callback.status_code == 200 and callback.json() == {
            "status": "success", "message": "Authorization successful", "server_url": f"http://127.0.0.1:{port}/mcp"}
        assert {"add", "shout", "fail"} <= {tool["name"] for tool in events[-1]["tools"]}
        stored = client.mcp_servers.retrieve(server.id)
        assert stored.auth_token.startswith("****") and stored.auth_header == "Authorization"

        # Later connections use the stored token: no new authorization.
        text = client.get(f"/v1/mcp-servers/connect/{server.id}", cast_to=str)
        again = [json.loads(line[len("data: "):]) for line in text.splitlines() if line.startswith("data: ")]
        assert [e["event"] for e in again] == ["connection_attempt", "success"], again
        assert httpx.get(f"http://127.0.0.1:{port}/issued").json() == {"tokens": 1}
        client.mcp_servers.refresh(server.id)
        assert {"add", "shout"} <= {tool.name for tool in client.mcp_servers.tools.list(server.id)}

        stale = httpx.get(f"{url}/v1/tools/mcp/oauth/callback", params={"code": "c", "state": "unknown"})
        assert stale.status_code == 400 and stale.json()["detail"] == "Invalid or expired state parameter"
    finally:
        stop()
        fixture.kill()
        fixture.wait()
