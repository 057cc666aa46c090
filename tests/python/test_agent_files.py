"""Letta agent files with several agents and groups, and conversations in
Kelpie's export, through the official `letta-client` as a user writes it.

letta-client 1.12.1 has no groups resource (Letta marks the routes
deprecated): groups are read with the client's own raw list call and its
auto-pager, parsed into the SDK's Group model; agents, blocks, messages
and conversations go through the SDK's resources.
"""

import json

import pytest
from letta_client import APIStatusError
from letta_client.pagination import SyncArrayPage
from letta_client.types.agent_state import ManagedGroup as Group

MEMBERS = ["py-af-lead", "py-af-left", "py-af-right", "py-af-extra"]
# The server's AGENT_FILE_AGENTS_COUNT_MAX.
AGENT_FILE_AGENTS_COUNT_MAX = 100


def _agent(n, name):
    return {
        "id": f"agent-{n}",
        "name": name,
        "system": f"You are {name}.",
        "agent_type": "letta_v1_agent",
        "block_ids": ["block-0", f"block-{n + 1}"],
        "tool_ids": [],
        "tool_rules": [],
        "tags": ["py-af"],
        "llm_config": {"handle": "openai-proxy/fake-gpt", "model": "fake-gpt", "context_window": 16000},
        "messages": [
            {"id": f"message-{2 * n}", "role": "user", "content": [{"type": "text", "text": f"hi {name}"}]},
            {"id": f"message-{2 * n + 1}", "role": "assistant", "content": [{"type": "text", "text": f"{name} here"}]},
        ],
    }


def _team_file():
    """Four agents sharing the `human` block; a round robin group of all of
    them and a supervisor group the first manages over the next two."""
    return {
        "agents": [_agent(n, name) for n, name in enumerate(MEMBERS)],
        "groups": [
            {"id": "group-0", "agent_ids": [f"agent-{n}" for n in range(4)], "description": "py-af all",
             "manager_config": {"manager_type": "round_robin", "max_turns": 4}, "shared_block_ids": []},
            {"id": "group-1", "agent_ids": ["agent-1", "agent-2"], "description": "py-af led",
             "manager_config": {"manager_type": "supervisor", "manager_agent_id": "agent-0"},
             "shared_block_ids": []},
        ],
        "blocks": [{"id": "block-0", "label": "human", "value": "A shared user.", "limit": 2000}]
        + [{"id": f"block-{n + 1}", "label": "persona", "value": f"I am {name}.", "limit": 2000}
           for n, name in enumerate(MEMBERS)],
        "tools": [], "files": [], "sources": [], "mcp_servers": [], "metadata": {},
    }


def _groups(client, **params):
    pager = client.get_api_list("/v1/groups/", model=Group, page=SyncArrayPage[Group], options={"params": params})
    return list(pager)


def _import(client, file, **options):
    return client.agents.import_file(file=("team.af", json.dumps(file).encode(), "application/json"), **options)


def test_a_file_of_several_agents_and_groups_imports_them_all(client):
    imported = _import(client, _team_file(), append_copy_suffix=False)
    ids = imported.agent_ids
    assert len(ids) == len(MEMBERS) and len(set(ids)) == len(MEMBERS)
    # File order; every agent holds its persona and the one shared human block.
    human_ids = set()
    for agent_id, name in zip(ids, MEMBERS):
        agent = client.agents.retrieve(agent_id)
        assert (agent.name, agent.system) == (name, f"You are {name}.")
        blocks = {block.label: block for block in client.agents.blocks.list(agent_id)}
        assert blocks["persona"].value == f"I am {name}."
        assert blocks["human"].value == "A shared user."
        human_ids.add(blocks["human"].id)
        said = [(m.message_type, m.content) for m in client.agents.messages.list(agent_id, order="asc")]
        assert said == [("user_message", f"hi {name}"), ("assistant_message", f"{name} here")]
    assert len(human_ids) == 1, human_ids
    [human_id] = human_ids
    assert sorted(agent.id for agent in client.blocks.agents.list(human_id)) == sorted(ids)
    # Pages of 2 through the auto-pager reach every imported agent.
    listed = [agent.id for agent in client.agents.list(limit=2, tags=["py-af"]) if agent.id in ids]
    assert sorted(listed) == sorted(ids)
    # The groups, members and manager remapped to the new agents (pages of 1).
    groups = {group.description: group for group in _groups(client, limit=1) if group.description.startswith("py-af")}
    assert set(groups) == {"py-af all", "py-af led"}
    everyone, led = groups["py-af all"], groups["py-af led"]
    assert (everyone.manager_type, everyone.agent_ids, everyone.max_turns) == ("round_robin", ids, 4)
    assert (led.manager_type, led.agent_ids, led.manager_agent_id) == ("supervisor", ids[1:3], ids[0])
    # A shared block edit reaches every member.
    client.blocks.update(human_id, value="Renamed user.")
    assert {client.agents.blocks.retrieve("human", agent_id=agent_id).value for agent_id in ids} == {"Renamed user."}
    for group in groups.values():
        client.delete(f"/v1/groups/{group.id}", cast_to=object)
    for agent_id in ids:
        client.agents.delete(agent_id)


def test_files_that_cannot_be_imported_whole_leave_nothing(client):
    before = {agent.id for agent in client.agents.list(limit=50)}
    groups_before = {group.id for group in _groups(client, limit=50)}
    broken = _team_file()
    broken["agents"][3]["name"] = ""
    with pytest.raises(APIStatusError) as refused:
        _import(client, broken)
    assert refused.value.status_code == 422 and "name" in refused.value.body["detail"]
    crowded = _team_file()
    crowded["groups"] = []
    crowded["agents"] = [dict(_agent(n % 4, f"py-crowd-{n}"), id=f"agent-{n}") for n in range(AGENT_FILE_AGENTS_COUNT_MAX + 1)]
    with pytest.raises(APIStatusError) as refused:
        _import(client, crowded)
    assert refused.value.status_code == 422
    assert "AGENT_FILE_AGENTS_COUNT_MAX" in refused.value.body["detail"], refused.value.body
    stranger = _team_file()
    stranger["groups"][1]["manager_config"]["manager_agent_id"] = "agent-9"
    with pytest.raises(APIStatusError) as refused:
        _import(client, stranger)
    assert refused.value.status_code == 422 and "agent-9" in refused.value.body["detail"]
    assert {agent.id for agent in client.agents.list(limit=50)} == before
    assert {group.id for group in _groups(client, limit=50)} == groups_before


def test_a_supervisors_export_carries_its_group_and_imports_as_a_new_group(client):
    import pathlib

    import jsonschema

    schema_path = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "letta-agent-file-schema.json"
    team = _team_file()
    for n, agent in enumerate(team["agents"]):
        agent["name"] = f"py-sup-{n}"
    for group in team["groups"]:
        group["description"] = group["description"].replace("py-af", "py-sup")
    ids = _import(client, team, append_copy_suffix=False).agent_ids
    # Kelpie's state of the lead and its members: passages on two of them,
    # a conversation with a turn on the third.
    for agent_id, text in [(ids[0], "the lead's plan"), (ids[1], "left's note"), (ids[1], "left's other note")]:
        client.agents.passages.create(agent_id, text=text)
    errand = client.conversations.create(agent_id=ids[2], summary="right's errand")
    list(client.conversations.messages.create(errand.id, messages=[{"role": "user", "content": "go"}]))
    # The lead manages the supervisor group over the next two: Letta's export
    # of the lead writes the group and those members (not the round robin,
    # which no agent manages); Kelpie's part beside it holds all three.
    exported = json.loads(client.agents.export_file(ids[0]))
    jsonschema.validate(exported, json.loads(schema_path.read_text()))
    assert exported["kelpie_agent"]["id"] == ids[0]
    assert [exported[f"kelpie_agent@agent-{n}"]["id"] for n in (1, 2)] == ids[1:3]
    assert [g["agent_ids"] for g in exported["kelpie_groups"]] == [ids[1:3]]
    # Imported back through the SDK: new agents, a new group over them.
    copies = client.agents.import_file(
        file=("lead.af", json.dumps(exported).encode(), "application/json")).agent_ids
    assert len(copies) == 3 and not set(copies) & set(ids)
    for copy_id, original_id in zip(copies, ids):
        copy, original = client.agents.retrieve(copy_id), client.agents.retrieve(original_id)
        assert copy.name == f"{original.name}_copy"
        def blocks(agent_id):
            return sorted((b.label, b.value) for b in client.agents.blocks.list(agent_id))
        assert blocks(copy_id) == blocks(original_id)
        def said(agent_id):
            return [(m.message_type, m.content) for m in client.agents.messages.list(agent_id, order="asc")]
        assert said(copy_id) == said(original_id) and len(said(copy_id)) == 2
        def passages(agent_id):
            return [p.text for p in client.agents.passages.list(agent_id, ascending=True)]
        assert passages(copy_id) == passages(original_id)
        def conversations(agent_id):
            found = []
            for conversation in client.conversations.list(agent_id=agent_id):
                messages = client.conversations.messages.list(conversation.id, order="asc")
                found.append((conversation.summary, [(m.message_type, m.content) for m in messages
                                                     if m.message_type in ("user_message", "assistant_message")]))
            return found
        assert conversations(copy_id) == conversations(original_id)
    assert [p.text for p in client.agents.passages.list(copies[1], ascending=True)] == [
        "left's note", "left's other note"]
    [(summary, said_there)] = [c for c in [
        (c.summary, [m.message_type for m in client.conversations.messages.list(c.id, order="asc")])
        for c in client.conversations.list(agent_id=copies[2])]]
    assert summary == "right's errand" and "user_message" in said_there and "assistant_message" in said_there
    groups = [g for g in _groups(client, limit=1) if g.description == "py-sup led"]
    by_manager = {g.manager_agent_id: g for g in groups}
    assert set(by_manager) == {ids[0], copies[0]}
    assert by_manager[copies[0]].agent_ids == copies[1:]
    assert by_manager[copies[0]].manager_type == "supervisor"
    for g in _groups(client, limit=50):
        if g.description.startswith("py-sup"):
            client.delete(f"/v1/groups/{g.id}", cast_to=object)
    for agent_id in ids + copies:
        client.agents.delete(agent_id)


def test_conversations_travel_in_kelpie_export(client):
    agent = client.agents.create(name="py-af-convo", model="openai-proxy/fake-gpt",
                                 memory_blocks=[{"label": "human", "value": "Name: Ana."}])
    made = []
    for summary, texts in [("openings", ["e4", "d4"]), ("endings", ["rook"])]:
        conversation = client.conversations.create(agent_id=agent.id, summary=summary)
        for text in texts:
            # One turn, streamed (the SDK's only way), read to its end.
            list(client.conversations.messages.create(conversation.id, messages=[{"role": "user", "content": text}]))
        made.append(conversation)
    exported = client.agents.export_file(agent.id)
    imported = client.agents.import_file(file=("agent.af", exported.encode(), "application/json"))
    [copy_id] = imported.agent_ids
    copies = {c.summary: c for c in client.conversations.list(agent_id=copy_id)}
    assert set(copies) == {"openings", "endings"}
    for original in made:
        copy = copies[original.summary]
        assert copy.id != original.id and copy.agent_id == copy_id
        def said(conversation_id):
            messages = client.conversations.messages.list(conversation_id, order="asc")
            return [(m.message_type, m.content) for m in messages
                    if m.message_type in ("user_message", "assistant_message")]
        assert said(copy.id) == said(original.id)
        assert len(said(copy.id)) == 2 * (2 if original.summary == "openings" else 1)
    client.agents.delete(copy_id)
    client.agents.delete(agent.id)


def test_a_files_sources_become_folders_of_processed_files_attached_to_their_agents(client):
    import time

    team = _team_file()
    for n, agent in enumerate(team["agents"]):
        agent["name"] = f"py-src-{n}"
    team["groups"] = []
    # Three sources, so the SDK's pager (two a page) reads past one page.
    team["sources"] = [{"id": f"source-{n}", "name": f"py-src-folder-{n}", "description": f"folder {n}"}
                       for n in range(3)]
    team["files"] = [
        {"id": "file-0", "source_id": "source-0", "file_name": "rules.md",
         "content": "# Rules\n\nAlways pack an umbrella when the sky is grey.\n"},
        {"id": "file-1", "source_id": "source-0", "file_name": "report.pdf",
         "content": "Quarterly revenue rose to 42 zorkmids.\n"},
        {"id": "file-2", "source_id": "source-2", "file_name": "notes.txt", "content": "A note.\n"},
    ]
    team["agents"][0]["source_ids"] = ["source-0", "source-1"]
    team["agents"][1]["files_agents"] = [{"agent_id": "agent-1", "file_id": "file-0", "source_id": "source-0",
                                          "file_name": "rules.md", "is_open": True}]
    imported = _import(client, team, append_copy_suffix=False)
    ids = imported.agent_ids
    assert len(ids) == 4
    folders = {f.name: f for f in client.folders.list(limit=2) if f.name.startswith("py-src-folder-")}
    assert sorted(folders) == ["py-src-folder-0", "py-src-folder-1", "py-src-folder-2"]
    assert folders["py-src-folder-0"].description == "folder 0"
    handbook = folders["py-src-folder-0"]
    deadline = time.monotonic() + 30
    while True:
        files = list(client.folders.files.list(handbook.id, limit=1))
        if all(f.processing_status == "completed" for f in files) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert sorted((f.file_name, f.processing_status) for f in files) == [
        ("report.pdf.md", "completed"), ("rules.md", "completed")]
    assert [f.file_name for f in client.folders.files.list(folders["py-src-folder-2"].id)] == ["notes.txt"]
    # ada holds the first two folders, bob the first (through files_agents), the others none.
    attached = [sorted(f.name for f in client.agents.folders.list(agent_id)) for agent_id in ids]
    assert attached == [["py-src-folder-0", "py-src-folder-1"], ["py-src-folder-0"], [], []]
    assert any(f.file_name.endswith("rules.md") for f in client.agents.files.list(ids[1]))
    # A second import of the same file: Letta's suffix on each folder name taken.
    again = _import(client, team, append_copy_suffix=False).agent_ids
    names = [f.name for f in client.folders.list() if f.name.startswith("py-src-folder-0")]
    assert len(names) == 2 and any(len(name) == len("py-src-folder-0_") + 8 for name in names), names
    # A source no file names and a file naming a missing source: 422 with the reason, nothing made.
    broken = dict(team, files=team["files"] + [{"id": "file-9", "source_id": "source-9", "file_name": "x.txt",
                                                 "content": "x"}])
    before = sorted(f.id for f in client.folders.list())
    with pytest.raises(APIStatusError) as refused:
        _import(client, broken)
    assert refused.value.status_code == 422
    assert 'file file-9 names source "source-9", not in the file' in refused.value.response.json()["detail"]
    assert sorted(f.id for f in client.folders.list()) == before
    for agent_id in ids + again:
        client.agents.delete(agent_id)
    for folder in client.folders.list():
        if folder.name.startswith("py-src-folder-"):
            client.folders.delete(folder.id)


def test_a_files_mcp_servers_become_records_with_their_tools_attached(client):
    import os
    import subprocess
    import sys

    from conftest import _free_port, start_kelpie
    from letta_client import Letta
    from test_mcp_and_tools import PY_SERVER, _wait_listening

    port = _free_port()
    proc = subprocess.Popen([sys.executable, PY_SERVER, "streamable-http", str(port)],
                            env=dict(os.environ, PORT=str(port)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc, "the Python MCP server")
        team = _team_file()
        for n, agent in enumerate(team["agents"]):
            agent["name"] = f"py-mcp-{n}"
        team["groups"] = []
        team["mcp_servers"] = [{"id": "mcp_server-0", "server_type": "streamable_http",
                                "server_name": "py-af-mcp", "server_url": f"http://127.0.0.1:{port}/mcp"}]
        team["tools"] = [{"id": f"tool-{n}", "name": name, "tool_type": "external_mcp",
                          "metadata_": {"mcp": {"server_name": "py-af-mcp"}}} for n, name in enumerate(["add", "shout"])]
        team["agents"][0]["tool_ids"] = ["tool-0", "tool-1"]
        team["agents"][2]["tool_ids"] = ["tool-1"]
        # This server refuses a loopback URL, as its MCP routes do: 422, nothing made.
        agents_before = {a.id for a in client.agents.list()}
        with pytest.raises(APIStatusError) as refused:
            _import(client, team)
        assert refused.value.status_code == 422
        assert "127.0.0.1" in refused.value.response.json()["detail"]
        assert [s.server_name for s in client.mcp_servers.list()
                if getattr(s, "server_name", "") == "py-af-mcp"] == []
        assert {a.id for a in client.agents.list()} == agents_before
        # A server that allows internal URLs makes the record and attaches its tools.
        url, stop = start_kelpie({"KELPIE_MCP_ALLOW_INTERNAL_URLS": "true"})
        try:
            inside = Letta(base_url=url)
            ids = _import(inside, team, append_copy_suffix=False).agent_ids
            [server] = [s for s in inside.mcp_servers.list() if s.server_name == "py-af-mcp"]
            assert server.server_url == f"http://127.0.0.1:{port}/mcp"
            listed = sorted(t.name for t in inside.mcp_servers.tools.list(server.id))
            assert listed == ["add", "fail", "shout"]
            def tools(agent_id):
                return sorted(t.name for t in inside.agents.tools.list(agent_id))
            assert [tools(agent_id) for agent_id in ids] == [["add", "shout"], [], ["shout"], []]
        finally:
            stop()
    finally:
        proc.kill()
        proc.wait()
