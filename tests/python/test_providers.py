"""Providers (bring your own key) through the official `letta-client`.

letta-client 1.12 has no `providers` resource, so the calls go through the
client's own generic methods (`client.get/post/patch/delete` and its
auto-pager `get_api_list` with `SyncArrayPage`), as a user of the SDK writes
them for such routes. A second fake LLM that accepts only the provider's key
proves which key each turn carried.
"""

import os
import subprocess
from typing import Optional

import pytest
from letta_client import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    BaseModel,
    ConflictError,
    Letta,
    NotFoundError,
    UnprocessableEntityError,
)
from letta_client.pagination import SyncArrayPage

from conftest import start_kelpie

BYOK_KEY = "sk-py-byok-good"
WRONG_KEY = "sk-py-byok-wrong"
# More providers than one page of PAGE_LIMIT.
EXTRA_PROVIDERS_COUNT = 5
PAGE_LIMIT = 3


class Provider(BaseModel):
    id: str
    name: str
    provider_type: str
    provider_category: str
    api_key: Optional[str] = None
    base_url: Optional[str] = None
    last_synced: Optional[str] = None


@pytest.fixture(scope="module")
def byok_llm():
    """A fake LLM of its own that refuses every key but BYOK_KEY."""
    fake = subprocess.Popen(
        [os.environ["KELPIE_FAKE_LLM_BIN"], "--api-key", BYOK_KEY], stdout=subprocess.PIPE, text=True
    )
    url = fake.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    try:
        yield url
    finally:
        fake.terminate()
        fake.wait(timeout=10)


@pytest.fixture(scope="module")
def byok_client():
    """A server allowed to reach providers on loopback (the fakes)."""
    base_url, stop = start_kelpie({"KELPIE_ALLOW_INTERNAL_PROVIDER_URLS": "true"})
    try:
        yield Letta(base_url=base_url)
    finally:
        stop()


def _create(client, name, base_url, key=BYOK_KEY):
    body = {"name": name, "provider_type": "openai", "api_key": key, "base_url": base_url}
    return client.post("/v1/providers/", body=body, cast_to=Provider)


def _say(client, agent_id, text):
    reply = client.agents.messages.create(agent_id=agent_id, messages=[{"role": "user", "content": text}])
    return [m.content for m in reply.messages if m.message_type == "assistant_message"]


def test_provider_lifecycle_routes_turns_with_its_own_key(byok_client, byok_llm):
    client = byok_client
    with pytest.raises(AuthenticationError) as refused:
        client.post("/v1/providers/check", body={"provider_type": "openai", "api_key": WRONG_KEY, "base_url": byok_llm}, cast_to=object)
    assert "Incorrect API key" in str(refused.value)
    checked = client.post("/v1/providers/check", body={"provider_type": "openai", "api_key": BYOK_KEY, "base_url": byok_llm}, cast_to=object)
    assert checked == {"message": "Valid api key for provider_type=openai"}

    provider = _create(client, "py-byok", byok_llm)
    assert provider.id.startswith("provider-") and provider.provider_category == "byok"
    assert provider.api_key is None and provider.last_synced is not None
    with pytest.raises(ConflictError):
        _create(client, "py-byok", byok_llm)
    extra = [_create(client, f"py-extra-{n}", byok_llm) for n in range(EXTRA_PROVIDERS_COUNT)]

    # The auto-pager walks every page to the end, oldest first when asked.
    pager = client.get_api_list("/v1/providers/", model=Provider, page=SyncArrayPage[Provider],
                                options={"params": {"limit": PAGE_LIMIT, "order": "asc"}})
    listed = [p for p in pager]
    assert [p.name for p in listed] == ["openai-proxy", "py-byok"] + [p.name for p in extra]
    assert [p.provider_category for p in listed] == ["base"] + ["byok"] * (1 + EXTRA_PROVIDERS_COUNT)
    assert all(p.api_key is None for p in listed)
    assert BYOK_KEY not in client.get("/v1/providers/", cast_to=str)
    assert client.get(f"/v1/providers/{provider.id}", cast_to=Provider).name == "py-byok"
    only = client.get("/v1/providers/", cast_to=object, options={"params": {"name": "py-extra-2"}})
    assert [p["name"] for p in only] == ["py-extra-2"]

    byok_models = client.models.list(provider_category=["byok"], provider_name="py-byok")
    assert [m.handle for m in byok_models] == ["py-byok/fake-gpt"]
    assert byok_models[0].provider_category == "byok"

    agent = client.agents.create(name="py-byok-agent", model="py-byok/fake-gpt")
    assert agent.llm_config.provider_name == "py-byok" and agent.llm_config.provider_category == "byok"
    # The fake refuses any other key: an answer proves the provider's key went.
    assert _say(client, agent.id, "hello") == ["echo: hello"]

    client.patch(f"/v1/providers/{provider.id}", body={"api_key": WRONG_KEY}, cast_to=Provider)
    with pytest.raises(AuthenticationError):
        client.post(f"/v1/providers/{provider.id}/check", cast_to=object)
    with pytest.raises(APIStatusError) as failed:
        _say(client, agent.id, "with the wrong key")
    assert failed.value.status_code == 502 and "401" in str(failed.value)
    client.patch(f"/v1/providers/{provider.id}", body={"api_key": BYOK_KEY}, cast_to=Provider)
    assert client.post(f"/v1/providers/{provider.id}/check", cast_to=object)["message"].startswith("Valid api key")
    assert _say(client, agent.id, "fixed") == ["echo: fixed"]

    refreshed = client.patch(f"/v1/providers/{provider.id}/refresh", cast_to=Provider)
    assert refreshed.last_synced >= provider.last_synced

    client.delete(f"/v1/providers/{provider.id}", cast_to=object)
    with pytest.raises(NotFoundError):
        client.get(f"/v1/providers/{provider.id}", cast_to=Provider)
    with pytest.raises(BadRequestError) as gone:
        _say(client, agent.id, "anyone there?")
    assert '"py-byok"' in str(gone.value) and "deleted" in str(gone.value)
    assert "py-byok/fake-gpt" not in [m.handle for m in client.models.list()]
    for other in extra:
        client.delete(f"/v1/providers/{other.id}", cast_to=object)
    assert [p.name for p in client.get_api_list("/v1/providers/", model=Provider, page=SyncArrayPage[Provider])] == ["openai-proxy"]


def test_private_base_url_is_refused_without_the_switch(client, byok_llm):
    with pytest.raises(UnprocessableEntityError) as refused:
        _create(client, "py-private", byok_llm)
    assert "internal address" in str(refused.value)
    assert "KELPIE_ALLOW_INTERNAL_PROVIDER_URLS" in str(refused.value)
    with pytest.raises(UnprocessableEntityError) as unsupported:
        client.post("/v1/providers/", body={"name": "g", "provider_type": "google_ai", "api_key": "k"}, cast_to=Provider)
    assert "Kelpie can call: openai, anthropic" in str(unsupported.value)
    assert [p.name for p in client.get_api_list("/v1/providers/", model=Provider, page=SyncArrayPage[Provider])] == ["openai-proxy"]
