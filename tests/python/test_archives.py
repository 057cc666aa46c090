"""Archives (shared archival memory) through the official `letta-client`."""

import json

import httpx
import pytest
from letta_client import APIStatusError, NotFoundError

# More archives than one page of the auto-pager below.
ARCHIVES_COUNT = 7
PAGE_LIMIT = 3


def _tool_return(client, agent_id, text):
    reply = client.agents.messages.create(agent_id=agent_id, messages=[{"role": "user", "content": text}])
    returns = [m for m in reply.messages if m.message_type == "tool_return_message"]
    assert len(returns) == 1, reply.messages
    return json.loads(returns[0].tool_return)


def test_create_add_passages_attach_search_detach_delete(client, kelpie_url):
    archive = client.archives.create(name="py-shared-facts", description="Facts every agent may look up")
    assert archive.id.startswith("archive-") and len(archive.id) == 44
    assert (archive.name, archive.description, archive.vector_db_provider) == (
        "py-shared-facts",
        "Facts every agent may look up",
        "native",
    )
    assert archive.embedding_config.embedding_dim > 0

    one = client.archives.passages.create(
        archive.id, text="The lighthouse key is under the blue stone.", tags=["keys"], metadata={"by": "py"}
    )
    assert (one.archive_id, one.tags, one.metadata) == (archive.id, ["keys"], {"by": "py"})
    assert len(one.embedding) == archive.embedding_config.embedding_dim
    many = client.archives.passages.create_many(
        archive.id,
        passages=[
            {"text": "The harbour closes at nine in the evening."},
            {"text": "Ferrets sleep eighteen hours a day.", "created_at": "2024-05-06T07:08:09+00:00"},
        ],
    )
    assert [p.text for p in many] == ["The harbour closes at nine in the evening.", "Ferrets sleep eighteen hours a day."]
    assert all(p.archive_id == archive.id for p in many)
    assert many[1].created_at.year == 2024

    ana = client.agents.create(name="py-archive-ana", model="openai-proxy/fake-gpt")
    bo = client.agents.create(name="py-archive-bo", model="openai-proxy/fake-gpt")
    for agent in (ana, bo):
        client.agents.archives.attach(archive.id, agent_id=agent.id)
    assert [a.id for a in client.archives.list(agent_id=ana.id)] == [archive.id]
    # The SDK has no method for an archive's agents: the route, by hand.
    agents = httpx.get(f"{kelpie_url}/v1/archives/{archive.id}/agents", params={"order": "asc"}).json()
    assert [a["id"] for a in agents] == [ana.id, bo.id]

    found = client.agents.passages.search(ana.id, query="lighthouse key blue stone", top_k=1)
    assert [r.content for r in found.results] == ["The lighthouse key is under the blue stone."]
    ranked = client.passages.search(agent_id=bo.id, query="ferrets sleep", limit=1)
    assert ranked[0].passage.text == "Ferrets sleep eighteen hours a day."
    assert ranked[0].passage.archive_id == archive.id
    tagged = client.passages.search(archive_id=archive.id, tags=["keys"])
    assert [r.passage.id for r in tagged] == [one.id]
    assert _tool_return(client, bo.id, '/call archival_memory_search {"query":"harbour closes","top_k":1}') == [
        "The harbour closes at nine in the evening."
    ]

    client.archives.passages.delete(one.id, archive_id=archive.id)
    with pytest.raises(NotFoundError):
        client.archives.passages.delete(one.id, archive_id=archive.id)
    texts = [r.passage.text for r in client.passages.search(archive_id=archive.id, query="lighthouse key", limit=10)]
    assert "The lighthouse key is under the blue stone." not in texts and len(texts) == 2

    renamed = client.archives.update(archive.id, name="py-shared-facts-2")
    assert (renamed.name, renamed.description) == ("py-shared-facts-2", "Facts every agent may look up")
    assert client.archives.retrieve(archive.id).name == "py-shared-facts-2"

    client.agents.archives.detach(archive.id, agent_id=bo.id)
    assert list(client.archives.list(agent_id=bo.id)) == []
    assert _tool_return(client, bo.id, '/call archival_memory_search {"query":"harbour closes","top_k":1}') == []

    client.archives.delete(archive.id)
    with pytest.raises(NotFoundError):
        client.archives.retrieve(archive.id)
    assert list(client.archives.list(agent_id=ana.id)) == []
    assert client.agents.passages.search(ana.id, query="harbour closes", top_k=5).results == []


def test_list_pages_to_the_end_with_filters(client):
    made = [client.archives.create(name=f"py-page-{n % 2}").id for n in range(ARCHIVES_COUNT)]
    mine = set(made)
    # Newest first by default; the auto-pager follows `after` to the end.
    seen = [a.id for a in client.archives.list(limit=PAGE_LIMIT) if a.id in mine]
    assert seen == list(reversed(made))
    oldest_first = [a.id for a in client.archives.list(limit=PAGE_LIMIT, order="asc") if a.id in mine]
    assert oldest_first == made
    first_page = client.archives.list(limit=PAGE_LIMIT, order="asc", name="py-page-1")
    assert [a.id for a in first_page.items] == made[1::2][:PAGE_LIMIT]
    assert [a.id for a in client.archives.list(name="py-page-0", order="asc")] == made[0::2]
    for archive_id in made:
        client.archives.delete(archive_id)
    assert [a for a in client.archives.list(limit=PAGE_LIMIT) if a.id in mine] == []


def test_errors_are_4xx_with_detail(client):
    unknown = "archive-00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFoundError):
        client.archives.retrieve(unknown)
    with pytest.raises(NotFoundError):
        client.archives.update(unknown, name="x")
    with pytest.raises(NotFoundError):
        client.archives.passages.create(unknown, text="x")
    archive = client.archives.create(name="py-errors")
    with pytest.raises(APIStatusError) as refused:
        client.archives.passages.create(archive.id, text="   ")
    assert refused.value.status_code == 422 and "text" in refused.value.body["detail"]
    with pytest.raises(APIStatusError) as refused:
        client.archives.passages.create(archive.id, text="x", created_at="not a date")
    assert refused.value.status_code == 422 and "created_at" in refused.value.body["detail"]
    with pytest.raises(NotFoundError):
        client.agents.archives.attach(archive.id, agent_id="agent-00000000-0000-4000-8000-000000000000")
    agent = client.agents.create(name="py-archive-errors", model="openai-proxy/fake-gpt")
    with pytest.raises(NotFoundError):
        client.agents.archives.attach(unknown, agent_id=agent.id)
    # One more archive than an agent may hold.
    held = []
    with pytest.raises(APIStatusError) as refused:
        for n in range(100):
            extra = client.archives.create(name=f"py-held-{n}")
            client.agents.archives.attach(extra.id, agent_id=agent.id)
            held.append(extra.id)
    assert refused.value.status_code == 400 and "AGENT_ARCHIVES_COUNT_MAX" in refused.value.body["detail"]
    assert sorted(a.id for a in client.archives.list(agent_id=agent.id, limit=100)) == sorted(held)
    client.archives.delete(archive.id)
