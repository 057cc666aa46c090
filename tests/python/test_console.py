"""The web console end to end: headless Chromium (Debian's `chromium`, driven by Playwright)
against `kelpie serve` with an API key and the fake LLM, checked against what `letta-client`
reads through the API.

A person opens `/`, gives the token when asked, creates an agent, chats with it (the reply
streams in token by token), edits its `human` block, adds and finds an archival passage, sees
its tools, the chat's run with its steps and the node's health; an agent named with markup
shows as text. A screenshot of each step goes to $KELPIE_CONSOLE_SCREENSHOTS (default:
target/console-screenshots), kept as the test's artifacts.

Fails (never skips) when chromium or playwright is missing: .ci/run installs both.
"""

import os
import shutil
from pathlib import Path

import pytest
from conftest import start_kelpie
from letta_client import Letta
from playwright.sync_api import expect, sync_playwright

API_KEY = "console-e2e-key-0123456789"
XSS_NAME = '<img src=x onerror="window.__xss = 1">'
# More agents than the console's page (AGENT_PAGE_COUNT = 20 in views.js), so "More" pages on.
LISTED_AGENTS_COUNT = 23
AGENT_PAGE_COUNT = 20
# Pages one "More" reads at most while a search finds too few (SEARCH_PAGES_PER_LOAD_MAX in views.js).
SEARCH_PAGES_PER_LOAD_MAX = 10
# Waits for the page: generous for a loaded CI machine, never a sleep.
UI_TIMEOUT_MS = 20_000
SHOTS = Path(os.environ.get("KELPIE_CONSOLE_SCREENSHOTS",
                            Path(__file__).resolve().parents[2] / "target" / "console-screenshots"))


@pytest.fixture(scope="module")
def server():
    url, stop = start_kelpie({"KELPIE_API_KEY": API_KEY})
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="module")
def page():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium; .ci/run does)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        browser.close()
        assert errors == [], f"the console threw: {errors}"


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def by_id(page, testid):
    return page.get_by_test_id(testid)


def test_a_person_chats_edits_memory_and_reads_runs_through_the_console(server, page):
    client = Letta(base_url=server, api_key=API_KEY)

    # The page answers without the token; the API behind it asks for it.
    page.goto(f"{server}/")
    dialog = by_id(page, "token-dialog")
    expect(dialog).to_be_visible()
    expect(by_id(page, "token-reason")).to_have_text("missing bearer token: send Authorization: Bearer <key>")
    shot(page, "01-token-asked")
    by_id(page, "token-input").fill("not-the-key")
    by_id(page, "token-submit").click()
    expect(by_id(page, "token-reason")).to_have_text("wrong bearer token")
    by_id(page, "token-input").fill(API_KEY)
    by_id(page, "token-submit").click()
    expect(dialog).to_be_hidden()
    expect(by_id(page, "agents-status")).to_have_text("0 agents (all read)")
    assert page.evaluate("sessionStorage.getItem('kelpie.console.token')") == API_KEY

    # Create an agent with a model and an embedding from the server's lists.
    by_id(page, "nav-new-agent").click()
    expect(by_id(page, "new-agent-model").locator("option")).not_to_have_count(0)
    model = "openai-proxy/fake-gpt"
    by_id(page, "new-agent-model").select_option(model)
    by_id(page, "new-agent-name").fill("console-e2e")
    by_id(page, "new-agent-human").fill("Name: Ana.")
    shot(page, "02-new-agent")
    by_id(page, "new-agent-submit").click()
    expect(by_id(page, "agent-title")).to_have_text("console-e2e")
    agent_id = page.evaluate("location.hash").split("/")[2]
    assert agent_id.startswith("agent-"), agent_id
    agent = client.agents.retrieve(agent_id)
    assert agent.name == "console-e2e" and agent.llm_config.handle == model

    # Chat: the fake LLM's reply streams in, token by token.
    by_id(page, "chat-input").fill("hello from the console")
    by_id(page, "chat-input").press("Enter")
    reply = page.locator('[data-testid=chat-log] [data-message-type="assistant_message"]')
    expect(reply).to_have_text("echo: hello from the console")
    assert int(reply.get_attribute("data-parts")) > 1, "the reply came in one piece, not streamed"
    expect(page.get_by_test_id("chat-note").first).to_have_text("stopped: end_turn")
    expect(by_id(page, "chat-send")).to_be_enabled()
    shot(page, "03-chat-streamed")
    stored = [m for m in client.agents.messages.list(agent_id) if m.message_type == "assistant_message"]
    assert [m.content for m in stored] == ["echo: hello from the console"]

    # Memory: edit the human block; the change is there after a reload and through the API.
    by_id(page, "tab-memory").click()
    block = by_id(page, "block-human")
    expect(block).to_have_value("Name: Ana.")
    block.fill("Name: Ana. Likes chess.")
    expect(by_id(page, "block-count-human")).to_contain_text("23 / ")
    by_id(page, "save-human").click()
    expect(by_id(page, "block-status-human")).to_contain_text("Saved")
    page.reload()
    expect(by_id(page, "block-human")).to_have_value("Name: Ana. Likes chess.")
    shot(page, "04-memory-edited")
    assert client.agents.blocks.retrieve("human", agent_id=agent_id).value == "Name: Ana. Likes chess."
    # A value over the block's limit is refused with the server's reason, and nothing changes.
    limit = client.agents.blocks.retrieve("human", agent_id=agent_id).limit
    by_id(page, "block-human").fill("x" * (limit + 1))
    by_id(page, "save-human").click()
    expect(by_id(page, "block-status-human")).to_contain_text("limit")
    assert client.agents.blocks.retrieve("human", agent_id=agent_id).value == "Name: Ana. Likes chess."

    # Archival memory: add a passage, see it listed, find it by search.
    by_id(page, "tab-archival").click()
    by_id(page, "passage-text").fill("The lighthouse key is under the blue stone.")
    by_id(page, "passage-add").click()
    expect(by_id(page, "passage-status")).to_have_text("Added")
    expect(by_id(page, "passages")).to_contain_text("The lighthouse key is under the blue stone.")
    by_id(page, "archival-query").fill("lighthouse key")
    by_id(page, "archival-search").click()
    expect(by_id(page, "archival-results").locator("li").first).to_have_text(
        "The lighthouse key is under the blue stone.")
    shot(page, "05-archival")
    by_id(page, "passage-text").fill("A passage to delete.")
    by_id(page, "passage-add").click()
    listed = by_id(page, "passages").locator("[data-passage-id]")
    expect(listed).to_have_count(2)
    page.once("dialog", lambda dialog: dialog.accept())  # the console asks before deleting
    listed.filter(has_text="A passage to delete.").get_by_role("button", name="Delete").click()
    expect(listed).to_have_count(1)
    passages = client.agents.passages.list(agent_id)
    assert [p.text for p in passages] == ["The lighthouse key is under the blue stone."]

    # Tools: the attached ones, as the API lists them.
    by_id(page, "tab-tools").click()
    attached = sorted(tool.name for tool in client.agents.tools.list(agent_id))
    assert "send_message" in attached
    tools = by_id(page, "tools").locator("[data-tool-name]")
    expect(tools).to_have_count(len(attached))
    assert sorted(tools.evaluate_all("nodes => nodes.map(n => n.dataset.toolName)")) == attached
    shot(page, "06-tools")

    # Runs: the chat's run, completed, with its steps.
    by_id(page, "tab-runs").click()
    runs = list(client.runs.list(agent_id=agent_id))
    assert len(runs) == 1, runs
    run = runs[0]
    row = page.locator(f'[data-run-id="{run.id}"]')
    expect(row).to_contain_text("completed")
    page.get_by_test_id(f"run-steps-{run.id}").click()
    steps = list(client.runs.steps.list(run.id))
    assert len(steps) >= 1
    expect(by_id(page, f"steps-{run.id}").locator("tbody tr[data-step-id]")).to_have_count(len(steps))
    expect(page.locator(f'[data-step-id="{steps[0].id}"]')).to_contain_text(steps[0].status)
    expect(page.locator(f'[data-step-id="{steps[0].id}"]')).to_contain_text(
        f"{steps[0].prompt_tokens} in / {steps[0].completion_tokens} out")
    shot(page, "07-runs-and-steps")

    # Nodes: this node alone, live and ready.
    by_id(page, "nav-nodes").click()
    expect(by_id(page, "node-rows").locator("tr")).to_have_count(1)
    expect(by_id(page, "node-rows")).to_contain_text("live")
    expect(by_id(page, "readiness")).to_have_text("ready")
    shot(page, "08-nodes")


def test_the_agent_list_pages_searches_and_shows_markup_as_text(server, page):
    client = Letta(base_url=server, api_key=API_KEY)
    before = len(list(client.agents.list()))
    for number in range(LISTED_AGENTS_COUNT - before - 1):
        client.agents.create(name=f"listed-{number:02}", model="openai-proxy/fake-gpt",
                             memory_blocks=[{"label": "human", "value": "x"}])
    hostile = client.agents.create(name=XSS_NAME, model="openai-proxy/fake-gpt")
    every = [agent.name for agent in client.agents.list()]  # the SDK pages to the end
    assert len(every) == LISTED_AGENTS_COUNT

    page.goto(f"{server}/#/agents")  # the token is still in this tab's session
    names = by_id(page, "agent-rows").get_by_test_id("agent-name")
    expect(names).to_have_count(AGENT_PAGE_COUNT)
    by_id(page, "agents-more").click()
    expect(names).to_have_count(LISTED_AGENTS_COUNT)
    expect(by_id(page, "agents-status")).to_have_text(f"{LISTED_AGENTS_COUNT} agents (all read)")
    assert names.all_text_contents() == every
    expect(by_id(page, "agents-more")).to_be_disabled()

    by_id(page, "agent-search").fill("LISTED-1")
    expect(names).to_have_count(10)
    assert names.all_text_contents() == [f"listed-1{n}" for n in range(10)]

    # Markup in a name is text: no element is made of it, nothing runs.
    by_id(page, "agent-search").fill("onerror")
    expect(names).to_have_count(1)
    expect(names).to_have_text(XSS_NAME)
    assert by_id(page, "agent-rows").locator("img").count() == 0
    shot(page, "09-markup-as-text")
    names.click()
    expect(by_id(page, "agent-title")).to_have_text(XSS_NAME)
    assert page.evaluate("location.hash").split("/")[2] == hostile.id
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__xss") is None
    shot(page, "10-markup-agent-page")


def test_a_search_reads_at_most_ten_pages_per_click(server, page):
    """A name found only past SEARCH_PAGES_PER_LOAD_MAX pages needs a second click on More."""
    client = Letta(base_url=server, api_key=API_KEY)
    before = len(list(client.agents.list()))
    scanned = SEARCH_PAGES_PER_LOAD_MAX * AGENT_PAGE_COUNT
    for number in range(scanned - before + 1):
        client.agents.create(name=f"filler-{number:03}", model="openai-proxy/fake-gpt")
    needle = client.agents.create(name="needle-past-the-limit", model="openai-proxy/fake-gpt")

    page.goto(f"{server}/#/agents")
    page.reload()  # a fresh list view, the token still in the tab's session
    names = by_id(page, "agent-rows").get_by_test_id("agent-name")
    by_id(page, "agent-search").fill("needle")
    expect(by_id(page, "agents-status")).to_have_text("0 agents matching")
    expect(by_id(page, "agents-more")).to_be_enabled()
    expect(names).to_have_count(0)
    by_id(page, "agents-more").click()
    expect(by_id(page, "agents-status")).to_have_text("1 agent matching (all read)")
    expect(names).to_have_text("needle-past-the-limit")
    assert names.get_attribute("href").endswith(f"/{needle.id}/chat")
    shot(page, "11-search-past-the-page-limit")


# The console's SSE_EVENT_CHARS_MAX (api.js): the most text of one streamed event it keeps while
# waiting for the event's end.
SSE_EVENT_CHARS_MAX = 4 * 1024 * 1024


def test_a_streamed_event_past_the_consoles_limit_stops_the_chat_with_the_reason(server, page):
    """A stream whose event never ends grows past SSE_EVENT_CHARS_MAX: the chat stops with the
    reason instead of holding more text; the events before it are shown; the form works again.
    (No server sends such an event, so the stream is answered by the test in the browser.)"""
    client = Letta(base_url=server, api_key=API_KEY)
    agent = client.agents.create(name="sse-limit", model="openai-proxy/fake-gpt")
    first = ('data: {"message_type": "assistant_message", "id": "message-first", '
             '"content": "before the long event"}\n\n')
    endless = 'data: {"message_type": "assistant_message", "id": "message-long", "content": "' + \
        "x" * (SSE_EVENT_CHARS_MAX + 1)

    def answer(route):
        route.fulfill(status=200, headers={"content-type": "text/event-stream"}, body=first + endless)

    page.route("**/messages/stream", answer)
    try:
        page.goto(f"{server}/#/agents/{agent.id}/chat")
        page.reload()
        by_id(page, "chat-input").fill("send me a long event")
        by_id(page, "chat-input").press("Enter")
        expect(by_id(page, "chat-status")).to_contain_text(
            f"a streamed event is over {SSE_EVENT_CHARS_MAX} characters")
        expect(page.locator('[data-testid=chat-log] [data-message-type="assistant_message"]')).to_have_text(
            "before the long event")
        expect(by_id(page, "chat-send")).to_be_enabled()
        shot(page, "12-stream-event-past-the-limit")
    finally:
        page.unroute("**/messages/stream")
