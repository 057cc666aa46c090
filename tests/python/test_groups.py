"""Groups through the official letta-client, as a user writes it.

letta-client 1.12.1 has no groups resource (Letta marks the routes
deprecated), so groups are reached with the client's own raw calls and
its auto-pager, parsed into the SDK's own Group model (the type of
`AgentState.managed_group`); agents, blocks, messages and runs go through
the SDK's resources.
"""

import time

import pytest
from letta_client import APIStatusError, NotFoundError
from letta_client.pagination import SyncArrayPage
from letta_client.types.agent_state import ManagedGroup as Group

FAKE_MODEL = "openai-proxy/fake-gpt"


def _agent(client, name, **extra):
    return client.agents.create(
        name=name,
        model=FAKE_MODEL,
        memory_blocks=[{"label": "human", "value": "Name: Ana."}, {"label": "persona", "value": "A tutor."}],
        **extra,
    )


def _create_group(client, agent_ids, description, manager_config=None):
    body = {"agent_ids": agent_ids, "description": description}
    if manager_config is not None:
        body["manager_config"] = manager_config
    return Group.model_validate(client.post("/v1/groups/", body=body, cast_to=object))


def _groups(client, path="/v1/groups/", **params):
    """Every group of the list, through the SDK's auto-pager."""
    pager = client.get_api_list(path, model=Group, page=SyncArrayPage[Group], options={"params": params})
    return list(pager)


def _wait_run(client, run_id, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.runs.retrieve(run_id)
        if run.status != "running":
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} still running")


def test_groups_crud_through_the_client_pages_to_the_end(client):
    members = [_agent(client, f"py-member-{n}") for n in range(3)]
    ids = [agent.id for agent in members]
    created = [_create_group(client, ids[: 1 + n % 3], f"py-group-{n}") for n in range(7)]
    assert all(group.id.startswith("group-") and group.manager_type == "round_robin" for group in created)
    # More groups than one page of 2: the auto-pager follows the cursors to the end.
    listed = [group.id for group in _groups(client, limit=2) if group.description.startswith("py-group-")]
    assert listed == [group.id for group in created]
    assert client.get("/v1/groups/count", cast_to=int) >= 7
    # An agent's groups: the ones it is a member of (ids[2] is in groups 2 and 5).
    mine = [group.id for group in _groups(client, f"/v1/agents/{ids[2]}/groups", limit=1)]
    assert mine == [created[5].id, created[2].id]
    fetched = Group.model_validate(client.get(f"/v1/groups/{created[0].id}", cast_to=object))
    assert (fetched.agent_ids, fetched.description) == ([ids[0]], "py-group-0")
    body = {"description": "renamed", "agent_ids": [ids[1], ids[0]], "manager_config": {"manager_type": "round_robin", "max_turns": 2}}
    modified = Group.model_validate(client.patch(f"/v1/groups/{created[0].id}", body=body, cast_to=object))
    assert (modified.description, modified.agent_ids, modified.max_turns) == ("renamed", [ids[1], ids[0]], 2)
    deleted = client.delete(f"/v1/groups/{created[0].id}", cast_to=object)
    assert deleted == {"message": f"Group id={created[0].id} successfully deleted"}
    with pytest.raises(NotFoundError):
        client.get(f"/v1/groups/{created[0].id}", cast_to=object)
    assert client.agents.retrieve(ids[0]).id == ids[0], "deleting a group leaves its agents"


def test_bad_group_requests_answer_the_reason(client):
    agent = _agent(client, "py-bad-group")
    with pytest.raises(NotFoundError) as missing:
        _create_group(client, ["agent-00000000-0000-4000-8000-000000000000"], "x")
    assert "agent-00000000-0000-4000-8000-000000000000" in str(missing.value)
    with pytest.raises(APIStatusError) as too_many:
        _create_group(client, [agent.id] * 65, "x")
    assert too_many.value.status_code == 422 and "GROUP_AGENTS_COUNT_MAX" in str(too_many.value)
    with pytest.raises(APIStatusError) as no_manager:
        _create_group(client, [agent.id], "x", {"manager_type": "supervisor"})
    assert no_manager.value.status_code == 422 and "manager_agent_id" in str(no_manager.value)
    group = _create_group(client, [agent.id], "x")
    with pytest.raises(APIStatusError) as pattern:
        client.patch(f"/v1/groups/{group.id}", body={"manager_config": {"manager_type": "dynamic"}}, cast_to=object)
    assert pattern.value.status_code == 422 and "Cannot change group pattern" in str(pattern.value)


def test_a_round_robin_group_talks_and_its_messages_are_listed_edited_and_reset(client):
    ana, bo = _agent(client, "py-rr-ana"), _agent(client, "py-rr-bo")
    group = _create_group(client, [ana.id, bo.id], "py duo")
    body = {"messages": [{"role": "user", "content": "hi all"}]}
    answer = client.post(f"/v1/groups/{group.id}/messages", body=body, cast_to=object)
    replies = [m["content"] for m in answer["messages"] if m["message_type"] == "assistant_message"]
    assert replies == ["echo: hi all", "echo: py-rr-ana: echo: hi all"]
    assert len(answer["usage"]["run_ids"]) == 2
    assert [client.runs.retrieve(run_id).agent_id for run_id in answer["usage"]["run_ids"]] == [ana.id, bo.id]
    # bo's own history holds what it was sent: the user's words and ana's reply.
    bo_users = [m.content for m in client.agents.messages.list(bo.id) if m.message_type == "user_message"]
    assert bo_users == ["hi all", "py-rr-ana: echo: hi all"]
    messages = client.get(f"/v1/groups/{group.id}/messages", options={"params": {"order": "asc", "limit": 100}}, cast_to=object)
    assert [m["message_type"] for m in messages].count("assistant_message") == 2
    first_user = next(m for m in messages if m["message_type"] == "user_message")
    edited = client.patch(
        f"/v1/groups/{group.id}/messages/{first_user['id']}",
        body={"message_type": "user_message", "content": "hi everyone"},
        cast_to=object,
    )
    assert edited["content"] == "hi everyone"
    client.patch(f"/v1/groups/{group.id}/reset-messages", cast_to=object)
    assert client.get(f"/v1/groups/{group.id}/messages", cast_to=object) == []
    assert list(client.agents.messages.list(ana.id)) == []


def test_a_sleeptime_agent_runs_after_its_manager_and_edits_the_shared_block(client):
    # As in Letta, enable_sleeptime on create makes the sleeptime agent and
    # the group the main agent manages.
    main = client.agents.create(
        name="py-main",
        model=FAKE_MODEL,
        memory_blocks=[{"label": "py_notes", "value": "Notes:"}],
        enable_sleeptime=True,
    )
    group = main.multi_agent_group
    assert group is not None and main.managed_group.id == group.id and main.enable_sleeptime is True
    assert (group.manager_type, group.manager_agent_id, group.sleeptime_agent_frequency) == ("sleeptime", main.id, 5)
    (sleeper_id,) = group.agent_ids
    sleeper = client.agents.retrieve(sleeper_id)
    assert sleeper.name == "py-main-sleeptime" and sleeper.model == main.model
    notes_id = next(b.id for b in main.memory.blocks if b.label == "py_notes")
    # The sleeptime agent holds the main agent's block itself (one id), and its own persona.
    assert {b.label: b.id for b in client.agents.blocks.list(sleeper.id)}["py_notes"] == notes_id
    assert "memory_persona" in [b.label for b in client.agents.blocks.list(sleeper.id)]
    assert sorted(a.id for a in client.blocks.agents.list(notes_id)) == sorted([main.id, sleeper.id])
    # Turning it on again changes nothing: still one group, one sleeptime agent.
    client.agents.update(main.id, enable_sleeptime=True)
    assert client.agents.retrieve(main.id).managed_group.id == group.id
    assert [a.id for a in client.agents.list(name="py-main-sleeptime")] == [sleeper.id]
    ask = '/sleeptime-call core_memory_append {"label": "py_notes", "content": "prefers green tea"}'
    response = client.agents.messages.create(main.id, messages=[{"role": "user", "content": ask}])
    assert response.messages[-1].content == f"echo: {ask}"
    own_run, sleeptime_run = response.usage.run_ids
    assert client.runs.retrieve(own_run).agent_id == main.id
    run = _wait_run(client, sleeptime_run)
    assert (run.agent_id, run.status) == (sleeper.id, "completed")
    deadline = time.monotonic() + 30
    while "prefers green tea" not in client.agents.blocks.retrieve("py_notes", agent_id=main.id).value:
        assert time.monotonic() < deadline, "the sleeptime edit never reached the manager"
        time.sleep(0.05)
    assert client.blocks.retrieve(notes_id).value.startswith("Notes:")
    group_now = Group.model_validate(client.get(f"/v1/groups/{group.id}", cast_to=object))
    assert group_now.last_processed_message_id is not None
