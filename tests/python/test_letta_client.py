"""The official `letta-client` against a running `kelpie serve` and the fake LLM."""

import json

import pytest
from letta_client import APIStatusError, NotFoundError


def _agent(client, name, tags=None):
    return client.agents.create(
        name=name,
        model="openai-proxy/fake-gpt",
        memory_blocks=[
            {"label": "human", "value": "Name: Ana.", "limit": 200},
            {"label": "persona", "value": "A patient tutor."},
        ],
        tags=tags or [],
    )


def test_models_list_handles_usable_on_create(client):
    handles = [model.handle for model in client.models.list()]
    assert handles == ["openai-proxy/fake-gpt"]
    agent = client.agents.create(name="by-handle", model=handles[0])
    assert agent.model == "openai-proxy/fake-gpt"
    client.agents.delete(agent.id)


def test_agent_blocks_messages_and_stream(client):
    agent = _agent(client, "py-chat", ["py"])
    assert agent.id.startswith("agent-")
    assert [block.label for block in agent.memory.blocks] == ["human", "persona"]
    fetched = client.agents.retrieve(agent.id)
    assert fetched.name == "py-chat" and fetched.tags == ["py"]

    block = client.agents.blocks.retrieve("human", agent_id=agent.id)
    assert block.value == "Name: Ana."
    updated = client.agents.blocks.update("human", agent_id=agent.id, value="Name: Ana. Likes chess.")
    assert updated.value == "Name: Ana. Likes chess."
    with pytest.raises(APIStatusError) as refused:
        client.agents.blocks.update("human", agent_id=agent.id, value="x" * 201)
    assert refused.value.status_code == 422
    assert client.agents.blocks.retrieve("human", agent_id=agent.id).value == "Name: Ana. Likes chess."

    response = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": "hello"}])
    assert [m.message_type for m in response.messages] == ["assistant_message"]
    assert response.messages[0].content == "echo: hello"
    assert response.usage.step_count == 1

    events = list(client.agents.messages.stream(agent.id, messages=[{"role": "user", "content": "stream me"}]))
    kinds = [event.message_type for event in events]
    assert "assistant_message" in kinds and kinds[-2:] == ["stop_reason", "usage_statistics"], kinds
    assistant = [event for event in events if event.message_type == "assistant_message"][0]
    assert assistant.content == "echo: stream me"

    listed = list(client.agents.messages.list(agent.id, order="asc"))
    assert [m.message_type for m in listed] == ["user_message", "assistant_message"] * 2
    assert [m.content for m in listed] == ["hello", "echo: hello", "stream me", "echo: stream me"]
    client.agents.delete(agent.id)


def test_stream_tokens_arrive_as_partial_messages_of_the_stored_message(client):
    agent = _agent(client, "py-tokens")
    text = "please stream this reply in pieces"
    messages = [{"role": "user", "content": text}]
    # Opened one after the other: each turn ends before the next starts.
    opens = [
        lambda: client.agents.messages.stream(agent.id, messages=messages, stream_tokens=True),
        lambda: client.agents.messages.create(agent.id, messages=messages, streaming=True, stream_tokens=True),
    ]
    chunk_ids = []
    for open_stream in opens:
        events = list(open_stream())
        kinds = [event.message_type for event in events]
        assert kinds[-2:] == ["stop_reason", "usage_statistics"], kinds
        chunks = [event for event in events if event.message_type == "assistant_message"]
        assert len(chunks) >= 3, kinds
        assert len({chunk.id for chunk in chunks}) == 1
        assert "".join(chunk.content for chunk in chunks) == f"echo: {text}"
        chunk_ids.append(chunks[0].id)

    listed = list(client.agents.messages.list(agent.id, order="asc"))
    replies = [m for m in listed if m.message_type == "assistant_message"]
    assert [m.id for m in replies] == chunk_ids
    assert [m.content for m in replies] == [f"echo: {text}"] * 2
    client.agents.delete(agent.id)


def test_memory_tool_call_is_seen_and_applied(client):
    agent = _agent(client, "py-tools")
    text = '/call core_memory_append {"label": "human", "content": "Drinks tea."}'
    response = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": text}])
    kinds = [m.message_type for m in response.messages]
    assert kinds == ["reasoning_message", "tool_call_message", "tool_return_message", "assistant_message"]
    assert response.messages[1].tool_call.name == "core_memory_append"
    assert client.agents.blocks.retrieve("human", agent_id=agent.id).value == "Name: Ana.\nDrinks tea."
    client.agents.delete(agent.id)


def test_letta_memory_edit_tools_are_attached_and_applied(client):
    agent = _agent(client, "py-memory-edit")
    types = {tool.name: tool.tool_type for tool in agent.tools}
    assert types["memory_insert"] == "letta_sleeptime_core" and types["memory_replace"] == "letta_sleeptime_core"
    assert types["working_memory_set"] == "letta_builtin"
    text = '/call memory_replace {"label": "human", "old_string": "Ana", "new_string": "Bo"}'
    response = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": text}])
    assert response.messages[2].status == "success"
    text = '/call memory_insert {"label": "human", "new_string": "Drinks tea.", "insert_line": 0}'
    client.agents.messages.create(agent.id, messages=[{"role": "user", "content": text}])
    assert client.agents.blocks.retrieve("human", agent_id=agent.id).value == "Drinks tea.\nName: Bo."
    text = '/call memory_replace {"label": "human", "old_string": "Ana", "new_string": "Bo"}'
    response = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": text}])
    assert response.messages[2].status == "error"
    assert response.messages[2].tool_return == 'block "human": text to replace "Ana" not found'
    client.agents.delete(agent.id)


def test_archival_insert_search_delete(client):
    agent = _agent(client, "py-archival")
    inserted = client.agents.passages.create(agent.id, text="The lighthouse key is under the blue stone.")
    client.agents.passages.create(agent.id, text="Ana likes chess.")
    found = client.agents.passages.search(agent.id, query="lighthouse", top_k=1)
    assert found.count == 1
    assert found.results[0].content == "The lighthouse key is under the blue stone."
    client.agents.passages.delete(inserted[0].id, agent_id=agent.id)
    remaining = client.agents.passages.list(agent.id)
    assert [p.text for p in remaining] == ["Ana likes chess."]
    client.agents.delete(agent.id)


def test_list_pagination_and_delete(client):
    ids = [_agent(client, f"page-{i}", ["paged"]).id for i in range(5)]
    first = client.agents.list(limit=2, tags=["paged"], order="asc")
    assert [a.id for a in first.items] == ids[:2]
    every = [a.id for a in client.agents.list(limit=2, tags=["paged"], order="asc")]
    assert every == ids
    for agent_id in ids:
        client.agents.delete(agent_id)
    with pytest.raises(NotFoundError):
        client.agents.retrieve(ids[0])
    assert list(client.agents.list(tags=["paged"])) == []


ROLL_DIE = '''def roll_die(sides: int) -> str:
    """Roll a die.

    Args:
        sides (int): number of sides

    Returns:
        str: the result
    """
    return str(min(sides, 4))
'''


def test_custom_tool_created_attached_and_called(client):
    tool = client.tools.create(source_code=ROLL_DIE)
    assert tool.name == "roll_die" and tool.tool_type == "custom"
    assert tool.json_schema["parameters"]["properties"]["sides"] == {
        "type": "integer",
        "description": "number of sides",
    }
    agent = _agent(client, "py-custom-tool")
    attached = client.agents.tools.attach(tool.id, agent_id=agent.id)
    assert tool.id in [t.id for t in attached.tools]
    response = client.agents.messages.create(
        agent.id, messages=[{"role": "user", "content": '/call roll_die {"sides": 9}'}]
    )
    kinds = [m.message_type for m in response.messages]
    assert kinds == ["reasoning_message", "tool_call_message", "tool_return_message", "assistant_message"]
    assert response.messages[1].tool_call.name == "roll_die"
    assert response.messages[2].tool_return == "4" and response.messages[2].status == "success"
    upserted = client.tools.upsert(source_code=ROLL_DIE.replace("min(sides, 4)", "sides"))
    assert upserted.id == tool.id
    modified = client.tools.update(tool.id, description="Roll any die.")
    assert modified.description == "Roll any die."
    with pytest.raises(APIStatusError) as refused:
        client.tools.create(source_code="def f(x):\n    return x\n")
    assert refused.value.status_code == 422
    client.agents.delete(agent.id)
    client.tools.delete(tool.id)
    with pytest.raises(NotFoundError):
        client.tools.retrieve(tool.id)


def test_export_then_import_through_the_client(client):
    agent = _agent(client, "py-export", ["py"])
    client.agents.messages.create(agent.id, messages=[{"role": "user", "content": "remember me"}])
    exported = client.agents.export_file(agent.id)
    assert isinstance(exported, str) and agent.id in exported

    imported = client.agents.import_file(file=("agent.json", exported.encode(), "application/json"))
    assert len(imported.agent_ids) == 1
    copy_id = imported.agent_ids[0]
    assert copy_id != agent.id
    copy = client.agents.retrieve(copy_id)
    assert copy.name == "py-export_copy", "Letta appends _copy unless told not to"
    assert client.agents.blocks.retrieve("human", agent_id=copy_id).value == "Name: Ana."
    texts = [(m.message_type, m.content) for m in client.agents.messages.list(copy_id, order="asc")]
    assert texts == [("user_message", "remember me"), ("assistant_message", "echo: remember me")]
    client.agents.delete(copy_id)
    client.agents.delete(agent.id)


READ_TOKEN = '''import os

def read_token() -> str:
    """Read the token the agent gives its tools.

    Returns:
        str: the token, or "missing"
    """
    return os.environ.get("MY_TOKEN", "missing") + " " + os.environ.get("OPENAI_API_KEY", "no-server-key")
'''


def test_agent_secrets_reach_the_sandboxed_tool_and_are_never_echoed(client):
    tool = client.tools.create(source_code=READ_TOKEN)
    agent = client.agents.create(
        name="py-secrets",
        model="openai-proxy/fake-gpt",
        secrets={"MY_TOKEN": "t0k3n-secret"},
        tool_ids=[tool.id],
    )
    # Write-only: the key is listed, the value never comes back.
    for state in (agent, client.agents.retrieve(agent.id)):
        assert [(s.key, s.value) for s in state.secrets] == [("MY_TOKEN", "")]
        assert "t0k3n-secret" not in state.model_dump_json()
    response = client.agents.messages.create(
        agent.id, messages=[{"role": "user", "content": "/call read_token {}"}]
    )
    returned = response.messages[2]
    assert returned.message_type == "tool_return_message" and returned.status == "success"
    # The tool got its secret and none of the server's environment.
    assert returned.tool_return == "t0k3n-secret no-server-key"
    client.agents.delete(agent.id)
    client.tools.delete(tool.id)


LONG_HISTORY_COUNT = 10_500  # past one storage scan (SCAN_ROWS_COUNT_MAX = 10 000)


def test_an_agent_past_ten_thousand_messages_pages_to_the_end_searches_and_deletes(client):
    source = _agent(client, "py-long-source")
    file = json.loads(client.agents.export_file(source.id))
    file["messages"] = [
        {"id": f"m-{i}", "seq": 0, "created_ms": 1_000 + i, "run_id": None, "step_id": None,
         "body": {"role": "user", "content": f"line {i} w{i}x"}}
        for i in range(LONG_HISTORY_COUNT)
    ]
    imported = client.agents.import_file(file=("long.json", json.dumps(file).encode(), "application/json"))
    agent_id = imported.agent_ids[0]
    expected = [f"line {i} w{i}x" for i in range(LONG_HISTORY_COUNT)]
    # The client's auto-pager walks every page to the end, both ways.
    assert [m.content for m in client.agents.messages.list(agent_id, order="asc", limit=1000)] == expected
    newest = [m.content for m in client.agents.messages.list(agent_id, order="desc", limit=700)]
    assert newest == expected[::-1]
    # conversation_search finds one of the oldest messages.
    response = client.agents.messages.create(
        agent_id, messages=[{"role": "user", "content": '/call conversation_search {"query": "w7x"}'}]
    )
    returned = [m for m in response.messages if m.message_type == "tool_return_message"]
    assert json.loads(returned[0].tool_return) == ["line 7 w7x"]
    # The window held more messages than a step reads: the turn compacted it
    # first, and its summary is the turn's first message.
    assert "The following is a summary of the previous messages:" in response.messages[0].content
    # The export holds it all (and the turn: summary, user, call, return,
    # reply, its return); the delete is immediate.
    exported = json.loads(client.agents.export_file(agent_id))
    assert len(exported["kelpie_messages"]) == LONG_HISTORY_COUNT + 6
    client.agents.delete(agent_id)
    with pytest.raises(NotFoundError):
        client.agents.retrieve(agent_id)
    client.agents.delete(source.id)


def test_compaction_through_the_client_keeps_every_message(client):
    agent = client.agents.create(
        name="py-compact",
        model="openai-proxy/fake-gpt",
        context_window_limit=4000,
        memory_blocks=[{"label": "human", "value": "Name: Ana."}],
    )
    assert agent.compaction_settings.mode == "sliding_window"
    for item in range(6):
        client.agents.messages.create(agent.id, messages=[{"role": "user", "content": f"note {item}"}])
    done = client.agents.messages.compact(agent.id, compaction_settings={"mode": "all"})
    assert done.summary.startswith("Summary of ") and done.num_messages_after == 2
    listed = list(client.agents.messages.list(agent.id, order="asc", limit=50))
    notes = [m.content for m in listed if m.message_type == "user_message" and m.content.startswith("note")]
    assert notes == [f"note {item}" for item in range(6)], "compaction deletes nothing"
    assert "The following is a summary of the previous messages:" in listed[-1].content
    client.agents.delete(agent.id)


def test_letta_agent_files_import_through_the_sdk(client):
    import pathlib

    fixtures = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "letta-agent-files"
    for name in ["memgpt_agent_with_convo.af", "deep_research_agent.af", "loop.af"]:
        raw = (fixtures / name).read_bytes()
        file = json.loads(raw)
        agent = file["agents"][0]
        imported = client.agents.import_file(file=(name, raw, "application/json"), append_copy_suffix=False)
        [agent_id] = imported.agent_ids
        state = client.agents.retrieve(agent_id)
        assert (state.name, state.system) == (agent["name"], agent["system"])
        blocks = {block.label: block for block in client.agents.blocks.list(agent_id)}
        for block in file["blocks"]:
            assert blocks[block["label"]].value == block["value"]
            assert blocks[block["label"]].limit == block["limit"]
        custom = [tool["name"] for tool in file["tools"] if tool["tool_type"] == "custom"]
        attached = {tool.name for tool in client.agents.tools.list(agent_id)}
        assert set(custom) <= attached
        reply = client.agents.messages.create(agent_id=agent_id, messages=[{"role": "user", "content": "hi"}])
        assert any(message.message_type == "assistant_message" for message in reply.messages)


def test_an_export_validates_against_letta_agent_file_schema(client):
    import pathlib

    import jsonschema

    fixtures = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
    schema = json.loads((fixtures / "letta-agent-file-schema.json").read_text())
    agent = _agent(client, "py-export")
    client.agents.messages.create(agent_id=agent.id, messages=[{"role": "user", "content": "hello"}])
    client.agents.messages.create(
        agent_id=agent.id,
        messages=[{"role": "user", "content": '/call archival_memory_insert {"content": "tea at five"}'}],
    )
    exported = json.loads(client.agents.export_file(agent.id))
    jsonschema.validate(exported, schema)
    # The shared Letta files validate too: the schema is the one they were written in.
    for name in ["memgpt_agent_with_convo.af", "deep_research_agent.af", "loop.af"]:
        jsonschema.validate(json.loads((fixtures / "letta-agent-files" / name).read_text()), schema)
    [letta_agent] = exported["agents"]
    assert letta_agent["name"] == "py-export"
    roles = [message["role"] for message in letta_agent["messages"]]
    assert roles.count("user") == 2 and "tool" in roles
    # Without Kelpie's parts the file imports as Letta's, through the SDK.
    letta_only = {key: value for key, value in exported.items() if not key.startswith("kelpie_")}
    imported = client.agents.import_file(file=("a.af", json.dumps(letta_only).encode(), "application/json"))
    [copy_id] = imported.agent_ids
    copy_blocks = {b.label: b.value for b in client.agents.blocks.list(copy_id)}
    assert copy_blocks == {b.label: b.value for b in client.agents.blocks.list(agent.id)}


def test_tags_block_agents_and_core_memory_through_the_sdk(client):
    first = client.agents.create(name="py-tags-1", model="openai-proxy/fake-gpt", tags=["py-x", "py-y"])
    second = client.agents.create(name="py-tags-2", model="openai-proxy/fake-gpt", tags=["py-y", "py-z"])
    # The SDK answers tags as a plain list: page with `after` by hand.
    tags, after = [], None
    while True:
        page = client.tags.list(query_text="py-", limit=2, **({"after": after} if after else {}))
        if not page:
            break
        tags.extend(page)
        after = page[-1]
    assert tags == ["py-x", "py-y", "py-z"]
    assert client.tags.list(name="py-z") == ["py-z"]
    block = client.blocks.create(label="py-team", value="We ship.")
    for agent in (first, second):
        client.agents.blocks.attach(block.id, agent_id=agent.id)
    assert [agent.id for agent in client.blocks.agents.list(block.id, limit=1)] == [first.id, second.id]
    # The SDK has no core-memory method: the raw call, as a user makes it.
    memory = client.get(f"/v1/agents/{first.id}/core-memory", cast_to=object)
    assert "py-team" in [block["label"] for block in memory["blocks"]]


def test_identities_attach_and_detach_through_the_sdk(client):
    agent = _agent(client, "py-identity")
    # This SDK has no identity CRUD: created over HTTP, as a user would.
    identity = client.post(
        "/v1/identities/",
        body={"identifier_key": "py-user-1", "name": "Py User", "identity_type": "user"},
        cast_to=object,
    )
    client.agents.identities.attach(identity["id"], agent_id=agent.id)
    assert client.agents.retrieve(agent.id).identity_ids == [identity["id"]]
    linked = client.get(f"/v1/identities/{identity['id']}/agents", cast_to=object)
    assert [a["id"] for a in linked] == [agent.id]
    client.agents.identities.detach(identity["id"], agent_id=agent.id)
    assert client.agents.retrieve(agent.id).identity_ids == []


def test_messages_are_edited_and_the_next_prompt_reads_the_edit(client, kelpie_url):
    import httpx

    agent = _agent(client, "py-edit")
    reply = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": "my cat is called Biscuit"}])
    user = [m for m in client.agents.messages.list(agent.id, order="asc") if m.message_type == "user_message"][0]
    url = f"{kelpie_url}/v1/agents/{agent.id}/messages"

    edited = httpx.patch(f"{url}/{user.id}", json={"message_type": "user_message", "content": "my cat is called Pumpkin"})
    assert edited.status_code == 200, edited.text
    assert (edited.json()["id"], edited.json()["content"]) == (user.id, "my cat is called Pumpkin")
    listed = [m for m in client.agents.messages.list(agent.id, order="asc") if m.id == user.id]
    assert listed[0].content == "my cat is called Pumpkin"
    # The next step's prompt holds the edit (the cached window was dropped).
    payload = httpx.post(f"{url}/preview-raw-payload", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    users = [m["content"] for m in payload["messages"] if m["role"] == "user"]
    assert users == ["my cat is called Pumpkin", "hi"], users
    # conversation_search finds the new words, not the old ones.
    found = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": '/call conversation_search {"query": "Pumpkin"}'}])
    result = [m for m in found.messages if m.message_type == "tool_return_message"][0].tool_return
    assert "Pumpkin" in result
    gone = client.agents.messages.create(agent.id, messages=[{"role": "user", "content": '/call conversation_search {"query": "Biscuit"}'}])
    result = [m for m in gone.messages if m.message_type == "tool_return_message"][0].tool_return
    # Only the assistant's echo of the old text is left; the user message
    # no longer holds the word.
    hits = json.loads(result)
    assert len(hits) == 1 and "echo: my cat is called Biscuit" in hits[0], hits

    assistant = [m for m in reply.messages if m.message_type == "assistant_message"][0]
    changed = httpx.patch(f"{url}/{assistant.id}", json={"message_type": "assistant_message", "content": [{"type": "text", "text": "Noted!"}]})
    assert changed.status_code == 200, changed.text
    assert changed.json()["message_type"] == "assistant_message" and changed.json()["content"] == "Noted!"
    assert [m.content for m in client.agents.messages.list(agent.id) if m.id == assistant.id and m.message_type == "assistant_message"] == ["Noted!"]
    # A /call answer of the fake LLM carries reasoning beside its tool call.
    reasoning = [m for m in found.messages if m.message_type == "reasoning_message"][0]
    thought = httpx.patch(f"{url}/{reasoning.id}", json={"message_type": "reasoning_message", "reasoning": "Remember the cat."})
    assert thought.status_code == 200, thought.text
    assert thought.json()["reasoning"] == "Remember the cat."
    assert [m.reasoning for m in client.agents.messages.list(agent.id) if m.id == reasoning.id and m.message_type == "reasoning_message"] == ["Remember the cat."]

    system = httpx.patch(f"{url}/{user.id}", json={"message_type": "system_message", "content": "x"})
    assert system.status_code == 422 and "system prompt" in system.json()["detail"]
    wrong = httpx.patch(f"{url}/{user.id}", json={"message_type": "assistant_message", "content": "x"})
    assert wrong.status_code == 422 and "not an assistant message" in wrong.json()["detail"]
    missing = httpx.patch(f"{url}/message-00000000-0000-4000-8000-000000000000", json={"content": "x"})
    assert missing.status_code == 404
