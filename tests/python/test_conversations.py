"""Conversations through the official `letta-client`, as a user writes it:
several histories of one agent sharing its memory, messages sent and
streamed, listed through the SDK's auto-pager, fork, modify, cancel,
compact, recompile, delete, errors."""

import pytest
from letta_client import APIStatusError, NotFoundError

FAKE_MODEL = "openai-proxy/fake-gpt"
# More messages than one page of the listing below, so the pager goes on.
TURNS_COUNT = 7
PAGE_LIMIT = 4


def _agent(client, name):
    return client.agents.create(
        name=name,
        model=FAKE_MODEL,
        memory_blocks=[{"label": "human", "value": "Name: Ana."}, {"label": "persona", "value": "A tutor."}],
    )


def _send(client, conversation_id, text):
    """One turn, streamed (the SDK's only way); the events it sent."""
    stream = client.conversations.messages.create(
        conversation_id, messages=[{"role": "user", "content": text}]
    )
    return list(stream)


def _replies(events):
    return [e.content for e in events if getattr(e, "message_type", None) == "assistant_message"]


def _texts(messages):
    return [
        m.content
        for m in messages
        if m.message_type in ("user_message", "assistant_message") and isinstance(m.content, str)
    ]


def test_conversations_keep_their_own_histories_and_share_memory(client):
    agent = _agent(client, "py-conv-tutor")
    alpha = client.conversations.create(agent_id=agent.id, summary="alpha chat")
    beta = client.conversations.create(agent_id=agent.id)
    assert alpha.id.startswith("conv-") and alpha.agent_id == agent.id
    assert alpha.summary == "alpha chat" and alpha.isolated_block_ids == [] and alpha.in_context_message_ids == []

    events = _send(client, alpha.id, "hello from alpha")
    assert _replies(events) == ["echo: hello from alpha"]
    kinds = [getattr(e, "message_type", None) for e in events]
    assert kinds[-2:] == ["stop_reason", "usage_statistics"], kinds

    # A block edit made in beta is in alpha's next prompt; beta's messages are not.
    _send(client, beta.id, '/call core_memory_append {"label":"human","content":"Likes green tea."}')
    human = client.agents.blocks.retrieve("human", agent_id=agent.id)
    assert "Likes green tea." in human.value
    payload = client.post(
        f"/v1/conversations/{alpha.id}/messages/preview-raw-payload",
        body={"messages": [{"role": "user", "content": "next"}]},
        cast_to=object,
    )
    text = str(payload)
    assert "Likes green tea." in text and "hello from alpha" in text and "/call" not in text

    alpha_texts = _texts(client.conversations.messages.list(alpha.id, order="asc"))
    assert alpha_texts[:2] == ["hello from alpha", "echo: hello from alpha"]
    assert not any("core_memory_append" in t for t in alpha_texts)
    beta_texts = _texts(client.conversations.messages.list(beta.id, order="asc"))
    assert beta_texts[0].startswith("/call core_memory_append")
    # The agent's own history holds neither conversation's messages.
    assert list(client.agents.messages.list(agent.id)) == []

    got = client.conversations.retrieve(alpha.id)
    assert got.last_message_at is not None and len(got.in_context_message_ids) >= 3
    runs = client.runs.list(conversation_id=alpha.id)
    assert runs.items and all(r.conversation_id == alpha.id for r in runs.items)


def test_messages_page_to_the_end_and_conversations_list_modify_delete(client):
    agent = _agent(client, "py-conv-pager")
    conversation = client.conversations.create(agent_id=agent.id)
    for i in range(TURNS_COUNT):
        assert _replies(_send(client, conversation.id, f"turn {i}")) == [f"echo: turn {i}"]
    pager = client.conversations.messages.list(conversation.id, order="asc", limit=PAGE_LIMIT)
    texts = _texts(pager)
    assert texts == [t for i in range(TURNS_COUNT) for t in (f"turn {i}", f"echo: turn {i}")]
    assert len(texts) > PAGE_LIMIT

    created = [conversation.id] + [client.conversations.create(agent_id=agent.id, summary=f"s{i}").id for i in range(4)]
    seen, after = [], None
    while True:
        page = client.conversations.list(agent_id=agent.id, order="asc", limit=2, **({"after": after} if after else {}))
        if not page:
            break
        seen += [c.id for c in page]
        after = page[-1].id
    assert seen == created
    newest = client.conversations.list(agent_id=agent.id, limit=1)
    assert [c.id for c in newest] == [created[-1]]
    found = client.conversations.list(agent_id=agent.id, summary_search="s2")
    assert [c.id for c in found] == [created[3]]

    changed = client.conversations.update(created[1], summary="renamed", model=FAKE_MODEL)
    assert changed.summary == "renamed" and changed.model == FAKE_MODEL
    assert client.conversations.retrieve(created[1]).summary == "renamed"

    client.conversations.delete(created[1])
    with pytest.raises(NotFoundError):
        client.conversations.retrieve(created[1])
    assert created[1] not in [c.id for c in client.conversations.list(agent_id=agent.id, limit=50)]


def test_fork_compact_recompile_cancel(client):
    agent = _agent(client, "py-conv-fork")
    source = client.conversations.create(agent_id=agent.id)
    _send(client, source.id, "shared start")
    fork = client.conversations.fork(source.id)
    assert fork.id != source.id and fork.agent_id == agent.id
    assert _texts(client.conversations.messages.list(fork.id, order="asc")) == ["shared start", "echo: shared start"]
    _send(client, fork.id, "only in the fork")
    assert "only in the fork" not in _texts(client.conversations.messages.list(source.id))
    # The agent's own history forks with `default` and agent_id.
    client.agents.messages.create(agent_id=agent.id, messages=[{"role": "user", "content": "agent side"}])
    from_agent = client.conversations.fork("default", agent_id=agent.id)
    assert _texts(client.conversations.messages.list(from_agent.id, order="asc")) == ["agent side", "echo: agent side"]

    compacted = client.conversations.messages.compact(source.id)
    assert compacted.summary.startswith("Summary of")
    assert compacted.num_messages_before > compacted.num_messages_after
    prompt = client.conversations.recompile(source.id)
    assert "A tutor." in prompt
    with pytest.raises(APIStatusError) as refused:
        client.conversations.cancel(source.id)
    assert refused.value.status_code == 409


def test_errors(client):
    agent = _agent(client, "py-conv-errors")
    with pytest.raises(NotFoundError):
        client.conversations.create(agent_id="agent-00000000-0000-4000-8000-000000000000")
    with pytest.raises(NotFoundError):
        client.conversations.retrieve("conv-00000000-0000-4000-8000-000000000000")
    with pytest.raises(APIStatusError) as bad_model:
        client.conversations.create(agent_id=agent.id, model="no-slash")
    assert bad_model.value.status_code == 422 and "provider/model-name" in str(bad_model.value.body)
    with pytest.raises(APIStatusError) as too_many:
        client.conversations.list(agent_id=agent.id, limit=1001)
    assert too_many.value.status_code == 422
    conversation = client.conversations.create(agent_id=agent.id)
    with pytest.raises(APIStatusError) as empty:
        list(client.conversations.messages.create(conversation.id, messages=[]))
    assert empty.value.status_code == 422
