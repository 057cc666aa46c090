"""MCP servers and the tool surface through the official `letta-client`.

MCP servers nobody on the team wrote: the npm reference server
`mcp-server-everything` over stdio (run by Kelpie in its sandbox) and over
SSE, and a server on the Python `mcp` package over streamable HTTP. Every
list route is walked to its end through the SDK's auto-pager.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from letta_client import APIStatusError, Letta, NotFoundError

from conftest import _free_port, start_kelpie

EVERYTHING = "mcp-server-everything"
PY_SERVER = os.path.join(os.path.dirname(__file__), "fixtures", "py_mcp_server.py")
LISTEN_TIMEOUT_S = 30


def _wait_listening(port, proc, what):
    deadline = time.monotonic() + LISTEN_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


def _serve(command, env, what):
    port = _free_port()
    proc = subprocess.Popen(
        [arg.replace("{port}", str(port)) for arg in command],
        env=dict(os.environ, PORT=str(port), **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_listening(port, proc, what)
    return port, proc


def _everything():
    path = shutil.which(EVERYTHING)
    assert path, f"{EVERYTHING} is needed: npm install -g @modelcontextprotocol/server-everything"
    return path


@pytest.fixture(scope="module")
def mcp_client():
    """A server whose MCP URLs may be on loopback (where the test servers are)."""
    url, stop = start_kelpie({"KELPIE_MCP_ALLOW_INTERNAL_URLS": "true"})
    try:
        yield Letta(base_url=url)
    finally:
        stop()


@pytest.fixture(scope="module")
def py_mcp_url():
    port, proc = _serve([sys.executable, PY_SERVER, "streamable-http", "{port}"], {}, "the Python MCP server")
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def everything_sse_url():
    port, proc = _serve([_everything(), "sse"], {}, f"{EVERYTHING} sse")
    try:
        yield f"http://127.0.0.1:{port}/sse"
    finally:
        proc.kill()
        proc.wait()


def _agent(client, name):
    return client.agents.create(
        name=name,
        model="openai-proxy/fake-gpt",
        memory_blocks=[{"label": "human", "value": "Name: Ana."}, {"label": "persona", "value": "Terse."}],
    )


def _call(client, agent_id, tool, args):
    """Has the fake LLM call `tool`; answers the tool return message."""
    response = client.agents.messages.create(
        agent_id, messages=[{"role": "user", "content": f"/call {tool} {json.dumps(args)}"}]
    )
    returns = [m for m in response.messages if m.message_type == "tool_return_message"]
    assert len(returns) == 1, [m.message_type for m in response.messages]
    return returns[0]


def test_a_stdio_server_runs_sandboxed_and_its_tools_serve_agents(mcp_client):
    _everything()
    client = mcp_client
    server = client.mcp_servers.create(
        server_name="everything",
        config={
            "mcp_server_type": "stdio",
            "command": EVERYTHING,
            "args": ["stdio"],
            "env": {"API_TOKEN": "tok-1234567890abcdef"},
        },
    )
    assert server.mcp_server_type == "stdio" and server.command == EVERYTHING
    assert server.env == {"API_TOKEN": "****cdef"}, "secrets are never echoed back whole"
    tools = {tool.name: tool for tool in client.mcp_servers.tools.list(server.id)}
    assert {"echo", "get-sum", "get-env"} <= set(tools)
    assert tools["echo"].tool_type == "external_mcp"
    assert tools["echo"].metadata["mcp"] == {"server_name": "everything", "server_id": server.id}
    assert client.mcp_servers.tools.retrieve(tools["echo"].id, mcp_server_id=server.id).name == "echo"

    ran = client.mcp_servers.tools.run(tools["echo"].id, mcp_server_id=server.id, args={"message": "kelp"})
    assert (ran.status, ran.func_return) == ("success", "Echo: kelp")
    # The server got the secret it was configured with and nothing of Kelpie's.
    env = json.loads(client.mcp_servers.tools.run(tools["get-env"].id, mcp_server_id=server.id).func_return)
    assert env["API_TOKEN"] == "tok-1234567890abcdef"
    assert "OPENAI_API_KEY" not in env and "KELPIE_MCP_ALLOW_INTERNAL_URLS" not in env
    assert env["HOME"] == "/work", "it runs in the sandbox"

    agent = _agent(client, "mcp-stdio-agent")
    client.agents.tools.attach(tools["get-sum"].id, agent_id=agent.id)
    assert tools["get-sum"].id in [t.id for t in client.agents.tools.list(agent.id)]
    returned = _call(client, agent.id, "get-sum", {"a": 2, "b": 3})
    assert returned.status == "success" and "5" in returned.tool_return, returned.tool_return

    renamed = client.mcp_servers.update(server.id, server_name="everything-2", config={"mcp_server_type": "stdio"})
    assert renamed.server_name == "everything-2" and renamed.env == {"API_TOKEN": "****cdef"}
    env = json.loads(client.mcp_servers.tools.run(tools["get-env"].id, mcp_server_id=server.id).func_return)
    assert env["API_TOKEN"] == "tok-1234567890abcdef", "the masked value sent back kept the secret"
    assert [s.id for s in client.mcp_servers.list()].count(server.id) == 1
    refreshed = client.mcp_servers.refresh(server.id)
    assert refreshed["added"] == [] and refreshed["deleted"] == []

    client.mcp_servers.delete(server.id)
    with pytest.raises(NotFoundError):
        client.mcp_servers.retrieve(server.id)
    with pytest.raises(NotFoundError):
        client.tools.retrieve(tools["echo"].id)
    # The agent's tool is gone with its server: a call is an error the model sees.
    returned = _call(client, agent.id, "get-sum", {"a": 1, "b": 1})
    assert returned.status == "error"
    client.agents.delete(agent.id)


def test_http_servers_python_sdk_over_streamable_http_and_the_reference_over_sse(
    mcp_client, py_mcp_url, everything_sse_url
):
    client = mcp_client
    server = client.mcp_servers.create(
        server_name="py-http",
        config={"mcp_server_type": "streamable_http", "server_url": py_mcp_url, "auth_token": "secret-token-abcd1234"},
    )
    assert server.mcp_server_type == "streamable_http" and server.auth_token == "****1234"
    tools = {tool.name: tool for tool in client.mcp_servers.tools.list(server.id)}
    assert set(tools) == {"add", "shout", "fail"}
    assert tools["add"].json_schema["parameters"]["properties"]["a"]["type"] == "integer"
    ran = client.mcp_servers.tools.run(tools["add"].id, mcp_server_id=server.id, args={"a": 2, "b": 40})
    assert (ran.status, ran.func_return) == ("success", "42")
    failed = client.mcp_servers.tools.run(tools["fail"].id, mcp_server_id=server.id, args={"reason": "no kelp"})
    # The Python SDK reports a raised error without its text.
    assert (failed.status, failed.func_return) == ("error", "Error executing tool fail")

    agent = _agent(client, "mcp-http-agent")
    client.agents.tools.attach(tools["shout"].id, agent_id=agent.id)
    returned = _call(client, agent.id, "shout", {"text": "otters"})
    assert (returned.status, returned.tool_return) == ("success", "OTTERS!")

    sse = client.mcp_servers.create(
        server_name="everything-sse", config={"mcp_server_type": "sse", "server_url": everything_sse_url}
    )
    assert sse.mcp_server_type == "sse"
    echo = next(t for t in client.mcp_servers.tools.list(sse.id) if t.name == "echo")
    ran = client.mcp_servers.tools.run(echo.id, mcp_server_id=sse.id, args={"message": "over sse"})
    assert (ran.status, ran.func_return) == ("success", "Echo: over sse")
    # A name another server's tool holds is not taken over.
    with pytest.raises(APIStatusError) as taken:
        client.mcp_servers.create(
            server_name="py-http", config={"mcp_server_type": "streamable_http", "server_url": py_mcp_url}
        )
    assert taken.value.status_code == 409
    client.agents.delete(agent.id)
    client.mcp_servers.delete(server.id)
    client.mcp_servers.delete(sse.id)


def test_bad_servers_are_refused_with_reasons(client):
    """On a server with the default config: internal URLs are refused (SSRF)."""
    with pytest.raises(APIStatusError) as internal:
        client.mcp_servers.create(
            server_name="inside",
            config={"mcp_server_type": "streamable_http", "server_url": "http://127.0.0.1:9/mcp"},
        )
    assert internal.value.status_code == 422 and "internal address" in str(internal.value.body)
    with pytest.raises(APIStatusError) as missing:
        client.mcp_servers.create(server_name="nothing", config={"mcp_server_type": "stdio", "command": "no-such-mcp", "args": []})
    assert missing.value.status_code == 422 and "not found" in str(missing.value.body)
    with pytest.raises(APIStatusError) as bad_url:
        client.mcp_servers.create(server_name="ftp", config={"mcp_server_type": "sse", "server_url": "ftp://h/"})
    assert bad_url.value.status_code == 422
    with pytest.raises(NotFoundError):
        client.mcp_servers.retrieve("mcp_server-00000000-0000-4000-8000-000000000000")
    assert [s.server_name for s in client.mcp_servers.list()] == []


def _custom_tool(name):
    return f'def {name}(x: int) -> int:\n    """Returns x.\n\n    Args:\n        x (int): a number\n    """\n    return x\n'


def test_every_list_route_pages_to_its_end_through_the_auto_pager(client):
    created = [client.tools.create(source_code=_custom_tool(f"pager_tool_{i}")) for i in range(7)]
    everything = [t.id for t in client.tools.list(limit=1000)]
    paged = [t.id for t in client.tools.list(limit=2)]
    assert paged == everything and len(set(paged)) == len(paged)
    assert {t.id for t in created} <= set(paged)
    newest_first = [t.id for t in client.tools.list(limit=3, order="desc")]
    assert newest_first == list(reversed(everything))
    assert [t.name for t in client.tools.list(name="pager_tool_3")] == ["pager_tool_3"]
    assert len(list(client.tools.list(search="PAGER_TOOL", limit=2))) == 7
    assert client.get("/v1/tools/count", cast_to=int) == len(everything)
    hits = client.tools.search(query="returns x", limit=3)
    assert len(hits) == 3 and all(h.tool.name.startswith("pager_tool_") for h in hits)

    agent = _agent(client, "pager-agent")
    for tool in created:
        client.agents.tools.attach(tool.id, agent_id=agent.id)
    attached = [t.id for t in client.agents.tools.list(agent.id)]
    paged = [t.id for t in client.agents.tools.list(agent.id, limit=2)]
    assert paged == attached and {t.id for t in created} <= set(paged)
    blocks = [b.label for b in client.agents.blocks.list(agent.id, limit=1)]
    assert blocks == ["human", "persona"]
    for i in range(3):
        client.agents.messages.create(agent.id, messages=[{"role": "user", "content": f"page me {i}"}])
    history = [m.id for m in client.agents.messages.list(agent.id, limit=1000)]
    assert [m.id for m in client.agents.messages.list(agent.id, limit=2)] == history and len(history) >= 6
    agents = [a.id for a in client.agents.list(limit=1000)]
    assert [a.id for a in client.agents.list(limit=1)] == agents and agent.id in agents
    standalone = [client.blocks.create(label=f"pager-{i}", value=str(i)).id for i in range(5)]
    paged_blocks = [b.id for b in client.blocks.list(limit=2) if b.id in standalone]
    assert paged_blocks == standalone
    for block_id in standalone:
        client.blocks.delete(block_id)
    client.agents.delete(agent.id)
    for tool in created:
        client.tools.delete(tool.id)


def test_tool_rules_shape_the_loop(client):
    agent = client.agents.create(
        name="ruled",
        model="openai-proxy/fake-gpt",
        memory_blocks=[{"label": "human", "value": "Name: Ana."}],
        tool_rules=[
            {"type": "exit_loop", "tool_name": "core_memory_append"},
            {"type": "run_first", "tool_name": "conversation_search"},
        ],
    )
    assert [(r.type, r.tool_name) for r in agent.tool_rules] == [
        ("exit_loop", "core_memory_append"),
        ("run_first", "conversation_search"),
    ]
    # The first call must be conversation_search: anything else is refused, never run.
    refused = client.agents.messages.create(
        agent.id,
        messages=[{"role": "user", "content": '/call core_memory_append {"label": "human", "content": "Likes tea."}'}],
    )
    returns = [m for m in refused.messages if m.message_type == "tool_return_message"]
    assert [r.status for r in returns] == ["error"]
    assert "allowed now: [conversation_search]" in returns[0].tool_return
    # The next step offered only conversation_search; the model answered in text instead.
    assert refused.messages[-1].message_type == "assistant_message"
    assert "Likes tea." not in client.agents.blocks.retrieve("human", agent_id=agent.id).value
    # conversation_search first, then anything; core_memory_append ends the turn at once.
    first = client.agents.messages.create(
        agent.id, messages=[{"role": "user", "content": '/call conversation_search {"query": "tea"}'}]
    )
    assert first.stop_reason.stop_reason == "end_turn"
    assert [m.message_type for m in first.messages][-1] == "assistant_message"
    client.agents.update(agent.id, tool_rules=[{"type": "exit_loop", "tool_name": "core_memory_append"}])
    ended = client.agents.messages.create(
        agent.id,
        messages=[{"role": "user", "content": '/call core_memory_append {"label": "human", "content": "Likes tea."}'}],
    )
    kinds = [m.message_type for m in ended.messages]
    assert kinds == ["reasoning_message", "tool_call_message", "tool_return_message"], kinds
    assert "Likes tea." in client.agents.blocks.retrieve("human", agent_id=agent.id).value
    # A rule of an unknown type is refused, not ignored.
    with pytest.raises(APIStatusError) as unknown:
        client.agents.update(agent.id, tool_rules=[{"type": "teleport", "tool_name": "core_memory_append"}])
    assert unknown.value.status_code == 422 and "teleport" in str(unknown.value.body)
    client.agents.delete(agent.id)


PLUS_ONE = '''def plus_one(x: int) -> int:
    """Adds one.

    Args:
        x (int): a number
    """
    import os
    print(os.environ.get("GREETING"))
    if x < 0:
        raise ValueError("negative")
    return x + 1
'''


def test_older_mcp_routes_by_server_name(mcp_client, py_mcp_url):
    c = mcp_client
    config = {"server_name": "legacy-py", "type": "streamable_http", "server_url": py_mcp_url,
              "auth_token": "legacy-token-5678abcd"}
    configs = c.put("/v1/tools/mcp/servers", body=config, cast_to=object)
    assert [(x["server_name"], x["type"], x["auth_token"]) for x in configs] == [
        ("legacy-py", "streamable_http", "****abcd")
    ]
    assert set(c.get("/v1/tools/mcp/servers", cast_to=object)) == {"legacy-py"}
    live = c.get("/v1/tools/mcp/servers/legacy-py/tools", cast_to=object)
    assert {t["name"] for t in live} == {"add", "shout", "fail"}
    assert live[0]["inputSchema"]["type"] == "object"
    tool = c.post("/v1/tools/mcp/servers/legacy-py/add", cast_to=object)
    assert (tool["name"], tool["tool_type"]) == ("add", "external_mcp")
    ran = c.post("/v1/tools/mcp/servers/legacy-py/tools/shout/execute", body={"args": {"text": "hi"}}, cast_to=object)
    assert (ran["status"], ran["func_return"]) == ("success", "HI!")
    tested = c.post("/v1/tools/mcp/servers/test",
                    body={"server_name": "x", "type": "streamable_http", "server_url": py_mcp_url}, cast_to=object)
    assert {t["name"] for t in tested["tools"]} == {"add", "shout", "fail"}
    assert set(c.get("/v1/tools/mcp/servers", cast_to=object)) == {"legacy-py"}, "a test stores nothing"
    renamed = c.patch("/v1/tools/mcp/servers/legacy-py", body={"server_name": "legacy-py2"}, cast_to=object)
    assert (renamed["server_name"], renamed["auth_token"]) == ("legacy-py2", "****abcd")
    assert c.delete("/v1/tools/mcp/servers/legacy-py2", cast_to=object) == []
    with pytest.raises(NotFoundError):
        c.get("/v1/tools/mcp/servers/legacy-py2/tools", cast_to=object)


def test_run_a_tool_from_source_generate_its_schema_and_list_base_tools(client):
    ran = client.post("/v1/tools/run", body={"source_code": PLUS_ONE, "args": {"x": 41}, "env_vars": {"GREETING": "hello"}},
                      cast_to=object)
    assert (ran["message_type"], ran["status"], ran["tool_return"]) == ("tool_return_message", "success", "42")
    assert ran["stdout"] == ["hello\n"]
    raised = client.post("/v1/tools/run", body={"source_code": PLUS_ONE, "args": {"x": -1}}, cast_to=object)
    assert raised["status"] == "error" and "negative" in raised["tool_return"]
    with pytest.raises(APIStatusError) as bad:
        client.post("/v1/tools/run", body={"source_code": "def broken(:", "args": {}}, cast_to=object)
    assert bad.value.status_code == 422
    schema = client.post("/v1/tools/generate-schema", body={"code": PLUS_ONE}, cast_to=object)
    assert schema["name"] == "plus_one" and schema["parameters"]["properties"]["x"]["type"] == "integer"
    base = client.post("/v1/tools/add-base-tools", cast_to=object)
    assert "send_message" in [t["name"] for t in base] and all(t["tool_type"].startswith("letta") for t in base)
    assert not any(t.name == "plus_one" for t in client.tools.list(limit=1000)), "run stores nothing"


async def _kelpie_over_mcp(session):
    """What any MCP client can do with Kelpie: create an agent, talk to it, read it."""
    await session.initialize()
    names = [tool.name for tool in (await session.list_tools()).tools]
    assert names == ["list_agents", "create_agent", "send_message", "read_memory"]
    created = await session.call_tool("create_agent", {"name": "py-mcp-client", "human": "Ana likes kelp."})
    assert not created.is_error, created
    agent_id = json.loads(created.content[0].text)["id"]
    reply = await session.call_tool("send_message", {"agent_id": agent_id, "message": "hi from mcp"})
    assert (reply.is_error, reply.content[0].text) == (False, "echo: hi from mcp")
    memory = json.loads((await session.call_tool("read_memory", {"agent_id": agent_id})).content[0].text)
    assert {"label": "human", "value": "Ana likes kelp.", "limit": memory[0]["limit"]} in memory
    missing = await session.call_tool("read_memory", {"agent_id": "agent-00000000-0000-4000-8000-000000000000"})
    assert missing.is_error and "404" in missing.content[0].text
    return agent_id


def test_kelpie_serves_its_agents_to_the_python_mcp_sdk_over_stdio_and_http(kelpie_url, client):
    import anyio
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client
    from mcp.client.streamable_http import streamable_http_client

    async def over_stdio():
        params = StdioServerParameters(command=os.environ["KELPIE_BIN"], args=["mcp", "--url", kelpie_url])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                return await _kelpie_over_mcp(session)

    async def over_http():
        async with streamable_http_client(f"{kelpie_url}/mcp") as (read, write):
            async with ClientSession(read, write) as session:
                return await _kelpie_over_mcp(session)

    for run in (over_stdio, over_http):
        agent_id = anyio.run(run)
        assert client.agents.retrieve(agent_id).name == "py-mcp-client"
        client.agents.delete(agent_id)


SECRET_CODE = '''def get_secret_code(input_text: str) -> str:
    """Returns the secret code of a text.

    Args:
        input_text (str): the text
    """
    return "code-" + input_text[::-1]
'''


def test_tool_approvals_are_requested_then_approved_denied_or_answered_by_the_client(client):
    tool = client.tools.create(source_code=SECRET_CODE, default_requires_approval=True)
    assert tool.default_requires_approval is True
    agent = _agent(client, "approvals")
    client.agents.tools.attach(tool.id, agent_id=agent.id)
    rules = [(r.type, r.tool_name) for r in client.agents.retrieve(agent.id).tool_rules]
    assert ("requires_approval", "get_secret_code") in rules

    def ask():
        response = client.agents.messages.create(
            agent.id, messages=[{"role": "user", "content": '/call get_secret_code {"input_text": "kelp"}'}]
        )
        request = response.messages[-1]
        assert request.message_type == "approval_request_message", [m.message_type for m in response.messages]
        assert request.tool_call.name == "get_secret_code" and len(request.tool_calls) == 1
        assert response.stop_reason.stop_reason == "requires_approval"
        return request.tool_call.tool_call_id

    def answer(*approvals, **legacy):
        return client.agents.messages.create(
            agent.id, messages=[{"type": "approval", "approvals": list(approvals), **legacy}]
        )

    with pytest.raises(APIStatusError) as none_pending:
        answer({"type": "approval", "approve": True, "tool_call_id": "call-nothing"})
    assert none_pending.value.status_code == 400
    assert "No tool call is currently awaiting approval" in str(none_pending.value.body)

    call_id = ask()
    with pytest.raises(APIStatusError) as pending:
        client.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hi"}])
    assert "Please approve or deny the pending request before continuing" in str(pending.value.body)
    with pytest.raises(APIStatusError) as wrong:
        answer({"type": "approval", "approve": True, "tool_call_id": "call-not-pending"})
    assert "Invalid tool call IDs" in str(wrong.value.body)

    # Approved (the older fields are overridden by approvals): it runs, then the turn goes on.
    done = answer({"type": "approval", "approve": True, "tool_call_id": call_id}, approve=False,
                  approval_request_id="fake")
    kinds = [m.message_type for m in done.messages]
    assert kinds[:2] == ["approval_response_message", "tool_return_message"] and kinds[-1] == "assistant_message"
    assert done.messages[0].approvals[0].approve is True and done.messages[0].approval_request_id == call_id
    assert (done.messages[1].status, done.messages[1].tool_return) == ("success", "code-plek")
    listed = [m.message_type for m in client.agents.messages.list(agent.id, limit=20)]
    assert listed.index("approval_request_message") < listed.index("approval_response_message")

    # Denied: the model is told why, nothing runs.
    call_id = ask()
    denied = answer({"type": "approval", "approve": False, "tool_call_id": call_id, "reason": "not before lunch"})
    assert denied.messages[0].approvals[0].reason == "not before lunch"
    assert denied.messages[1].status == "error" and "not before lunch" in denied.messages[1].tool_return

    # Run by the client: its return is the result.
    call_id = ask()
    ran = answer({"type": "tool", "tool_call_id": call_id, "tool_return": "code-from-the-client", "status": "success"})
    assert (ran.messages[1].status, ran.messages[1].tool_return) == ("success", "code-from-the-client")

    # Older form: one decision for every pending call.
    ask()
    legacy = client.agents.messages.create(agent.id, messages=[{"type": "approval", "approve": True}])
    assert legacy.messages[1].tool_return == "code-plek"

    # Approval turned off for this agent: the tool runs at once.
    client.agents.tools.update_approval("get_secret_code", agent_id=agent.id, body_requires_approval=False)
    direct = client.agents.messages.create(
        agent.id, messages=[{"role": "user", "content": '/call get_secret_code {"input_text": "otter"}'}]
    )
    returns = [m for m in direct.messages if m.message_type == "tool_return_message"]
    assert [r.tool_return for r in returns] == ["code-retto"]
    client.agents.delete(agent.id)
    client.tools.delete(tool.id)


READ_SECRET = '''def read_secret(label: str) -> str:
    """Reads the agent's secret.

    Args:
        label (str): a prefix
    """
    import os
    return label + os.environ.get("AGENT_SECRET", "missing")
'''


def test_an_agents_tool_runs_once_with_the_agents_environment(client):
    tool = client.tools.create(source_code=READ_SECRET)
    agent = client.agents.create(name="tool-runner", model="openai-proxy/fake-gpt", secrets={"AGENT_SECRET": "s3cr3t"},
                                 tool_ids=[tool.id])
    ran = client.agents.tools.run("read_secret", agent_id=agent.id, args={"label": "got "})
    assert (ran.status, ran.func_return) == ("success", "got s3cr3t")
    assert not any("read_secret" in str(m) for m in client.agents.messages.list(agent.id)), "nothing is stored"
    with pytest.raises(APIStatusError) as builtin:
        client.agents.tools.run("core_memory_append", agent_id=agent.id, args={"label": "human", "content": "x"})
    assert builtin.value.status_code == 422 and "runs only in its loop" in str(builtin.value.body)
    with pytest.raises(APIStatusError) as unattached:
        client.agents.tools.run("roll_nothing", agent_id=agent.id)
    assert unattached.value.status_code == 422 and "not attached" in str(unattached.value.body)
    client.agents.delete(agent.id)
    client.tools.delete(tool.id)
