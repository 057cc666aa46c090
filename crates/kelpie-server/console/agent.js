// One agent: chat (streamed), memory blocks (edited in place), archival
// passages (list, add, search), attached tools, and runs with their steps.

import { api, stream, withQuery } from "./api.js";
import { el, pill, replace, showError, showStatus, when } from "./dom.js";
import { agentHref } from "./views.js";

/** Messages of the history shown when the chat opens (the newest). */
const CHAT_HISTORY_COUNT = 50;
/** Passages, tools and runs asked for per request. */
const LIST_PAGE_COUNT = 20;
/** Passages a search answers at most. */
const SEARCH_RESULTS_COUNT = 10;
/** Steps of one run shown at most. */
const RUN_STEPS_COUNT_MAX = 100;

export const TABS = ["chat", "memory", "archival", "tools", "runs"];

/** The agent page with its tab `tab` open. */
export function agentView(agentId, tab) {
  const title = el("h1", { "data-testid": "agent-title" }, "Agent");
  const facts = el("p", { class: "muted", "data-testid": "agent-facts" }, agentId);
  const status = el("p", { class: "status-line" });
  api("GET", `/v1/agents/${encodeURIComponent(agentId)}`)
    .then((agent) => {
      title.textContent = agent.name ?? agent.id;
      replace(facts, el("code", {}, agent.id), ` · ${agent.llm_config?.handle ?? agent.llm_config?.model ?? "no model"}`,
        agent.embedding_config ? ` · ${agent.embedding_config.handle ?? agent.embedding_config.embedding_model}` : "",
        ` · created ${when(agent.created_at)}`);
    })
    .catch((error) => showError(status, error));
  const tabs = el("nav", { class: "tabs" }, TABS.map((name) =>
    el("a", { href: agentHref(agentId, name), class: name === tab ? "active" : "", "data-testid": `tab-${name}` }, name[0].toUpperCase() + name.slice(1))));
  const panes = { chat: chatPane, memory: memoryPane, archival: archivalPane, tools: toolsPane, runs: runsPane };
  return el("section", { "data-testid": "agent-view" }, title, facts, status, tabs, panes[tab](agentId));
}

function path(agentId, rest) {
  return `/v1/agents/${encodeURIComponent(agentId)}${rest}`;
}

/** The text a message (or a streamed part of one) carries. */
function fragment(message) {
  switch (message.message_type) {
    case "user_message":
    case "assistant_message":
    case "system_message":
      if (Array.isArray(message.content)) return message.content.map((part) => part.text ?? "").join("");
      return message.content ?? "";
    case "reasoning_message":
      return message.reasoning ?? "";
    case "tool_call_message":
      return message.tool_call?.arguments ?? "";
    case "tool_return_message":
      return message.tool_return ?? "";
    case "error_message":
      return message.message ?? message.detail ?? JSON.stringify(message);
    default:
      return "";
  }
}

const BUBBLE_TYPES = ["user_message", "assistant_message", "reasoning_message", "tool_call_message", "tool_return_message", "error_message"];

function chatPane(agentId) {
  const log = el("div", { class: "chat-log", "data-testid": "chat-log", "aria-live": "polite" });
  const input = el("textarea", { placeholder: "Message the agent (Enter sends, Shift+Enter breaks the line)", "data-testid": "chat-input", "aria-label": "Message" });
  const send = el("button", { type: "submit", "data-testid": "chat-send" }, "Send");
  const status = el("p", { class: "status-line", "data-testid": "chat-status" });
  const bubbles = new Map();

  /** The bubble of message `id` of type `type` (made on first use). */
  function bubble(type, id) {
    const key = `${type}:${id}`;
    let node = bubbles.get(key);
    if (!node) {
      node = el("div", { class: `bubble ${type}`, dataset: { messageType: type, messageId: id ?? "" } });
      bubbles.set(key, node);
      log.append(node);
    }
    return node;
  }

  function show(message, streamed) {
    const type = message.message_type;
    if (!BUBBLE_TYPES.includes(type)) return;
    const node = bubble(type, message.id ?? `${type}-${bubbles.size}`);
    if (type === "tool_call_message" && !node.dataset.named && message.tool_call?.name) {
      node.dataset.named = "yes";
      node.append(`${message.tool_call.name}(`);
    }
    node.append(fragment(message));
    // How many parts built the bubble: more than one when tokens streamed.
    node.dataset.parts = String(Number(node.dataset.parts ?? 0) + 1);
    if (!streamed && type === "tool_call_message") node.append(")");
    log.scrollTop = log.scrollHeight;
  }

  function note(text) {
    log.append(el("div", { class: "bubble system_note", "data-testid": "chat-note" }, text));
  }

  // A message sent waits for the history, so the history is drawn first.
  const history = api("GET", withQuery(path(agentId, "/messages"), { limit: CHAT_HISTORY_COUNT, order: "desc" }))
    .then((messages) => messages.reverse().forEach((message) => show(message, false)))
    .catch((error) => showError(status, error));

  async function submit(event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send.disabled = true;
    await history;
    show({ message_type: "user_message", id: `local-${Date.now()}`, content: text }, false);
    showStatus(status, "Streaming…");
    try {
      await stream(path(agentId, "/messages/stream"), { messages: [{ role: "user", content: text }], stream_tokens: true }, (event) => {
        if (event.message_type === "stop_reason") note(`stopped: ${event.stop_reason}`);
        else if (event.message_type === "usage_statistics") note(`${event.step_count} step(s), ${event.total_tokens} tokens`);
        else show(event, true);
      });
      showStatus(status, "");
    } catch (error) {
      showError(status, error);
    } finally {
      send.disabled = false;
      input.focus();
    }
  }
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  const form = el("form", { class: "chat-form", onsubmit: submit }, input, send);
  return el("div", { class: "card", "data-testid": "chat-pane" }, log, form, status);
}

function blockEditor(agentId, block) {
  const value = el("textarea", { "data-testid": `block-${block.label}`, "aria-label": `Block ${block.label}`, rows: 6, disabled: block.read_only === true });
  value.value = block.value ?? "";
  const count = el("span", { class: "muted", "data-testid": `block-count-${block.label}` });
  const status = el("span", { class: "status-line", "data-testid": `block-status-${block.label}` });
  const save = el("button", { type: "button", "data-testid": `save-${block.label}`, disabled: block.read_only === true }, "Save");
  const counted = () => (count.textContent = `${value.value.length} / ${block.limit} characters`);
  counted();
  value.addEventListener("input", () => {
    counted();
    showStatus(status, "unsaved");
  });
  save.addEventListener("click", async () => {
    save.disabled = true;
    showStatus(status, "Saving…");
    try {
      const saved = await api("PATCH", path(agentId, `/core-memory/blocks/${encodeURIComponent(block.label)}`), { value: value.value });
      value.value = saved.value;
      counted();
      showStatus(status, `Saved ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      showError(status, error);
    } finally {
      save.disabled = false;
    }
  });
  return el("div", { class: "block", dataset: { label: block.label } },
    el("header", {}, el("span", { class: "label" }, block.label), count, block.read_only ? el("span", { class: "pill" }, "read only") : null),
    block.description ? el("p", { class: "muted" }, block.description) : null,
    value,
    el("div", { class: "actions" }, save, status));
}

function memoryPane(agentId) {
  const pane = el("div", { "data-testid": "memory-pane" }, el("p", { class: "muted" }, "Loading blocks…"));
  api("GET", path(agentId, "/core-memory/blocks"))
    .then((blocks) => replace(pane, blocks.length === 0 ? el("p", { class: "muted" }, "This agent has no memory blocks.") : blocks.map((block) => blockEditor(agentId, block))))
    .catch((error) => replace(pane, el("p", { class: "error" }, error.message)));
  return pane;
}

/**
 * A list read a page at a time through `after` cursors: `fetchPage(after)`
 * answers a page, `row(item)` its row. Answers the element and a reload.
 */
function pagedList(testid, fetchPage, row) {
  const items = el("div", { "data-testid": testid });
  const more = el("button", { type: "button", class: "quiet", "data-testid": `${testid}-more` }, "More");
  const status = el("span", { class: "status-line" });
  let cursor = null;
  let shown = 0;
  async function load(reset) {
    if (reset) {
      cursor = null;
      shown = 0;
      items.replaceChildren();
    }
    more.disabled = true;
    try {
      const page = await fetchPage(cursor);
      page.forEach((item) => items.append(row(item)));
      shown += page.length;
      if (page.length > 0) cursor = page[page.length - 1].id;
      const done = page.length < LIST_PAGE_COUNT;
      more.disabled = done;
      showStatus(status, `${shown} shown${done ? " (all read)" : ""}`);
    } catch (error) {
      showError(status, error);
      more.disabled = false;
    }
  }
  more.addEventListener("click", () => load(false));
  load(true);
  return { element: el("div", {}, items, el("div", { class: "actions" }, more, status)), reload: () => load(true) };
}

function archivalPane(agentId) {
  const text = el("textarea", { "data-testid": "passage-text", "aria-label": "New passage" });
  const addStatus = el("span", { class: "status-line", "data-testid": "passage-status" });
  const query = el("input", { type: "search", placeholder: "Search passages by meaning", "data-testid": "archival-query", "aria-label": "Search passages" });
  const results = el("ol", { "data-testid": "archival-results" });
  const searchStatus = el("span", { class: "status-line" });
  const list = pagedList("passages", (after) => api("GET", withQuery(path(agentId, "/archival-memory"), { limit: LIST_PAGE_COUNT, after })),
    (passage) => el("div", { class: "block", dataset: { passageId: passage.id } },
      el("div", { class: "passage" }, passage.text ?? ""),
      el("div", { class: "actions muted" }, el("code", {}, passage.id), when(passage.created_at),
        el("button", { type: "button", class: "quiet", onclick: () => remove(passage.id) }, "Delete"))));

  async function remove(passageId) {
    if (!confirm(`Delete passage ${passageId}? It cannot be brought back.`)) return;
    try {
      await api("DELETE", path(agentId, `/archival-memory/${encodeURIComponent(passageId)}`));
      list.reload();
    } catch (error) {
      showError(addStatus, error);
    }
  }
  const addForm = el("form", { class: "card", "data-testid": "passage-form" },
    el("h2", {}, "Add a passage"), text,
    el("div", { class: "actions" }, el("button", { type: "submit", "data-testid": "passage-add" }, "Add"), addStatus));
  addForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!text.value.trim()) return;
    showStatus(addStatus, "Adding…");
    try {
      await api("POST", path(agentId, "/archival-memory"), { text: text.value });
      text.value = "";
      showStatus(addStatus, "Added");
      list.reload();
    } catch (error) {
      showError(addStatus, error);
    }
  });
  const searchForm = el("form", { class: "card", "data-testid": "archival-search-form" },
    el("h2", {}, "Search"), el("div", { class: "toolbar" }, query, el("button", { type: "submit", "data-testid": "archival-search" }, "Search")),
    results, searchStatus);
  searchForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    showStatus(searchStatus, "Searching…");
    try {
      const found = await api("GET", withQuery(path(agentId, "/archival-memory/search"), { query: query.value, top_k: SEARCH_RESULTS_COUNT }));
      replace(results, found.results.map((hit) => el("li", { class: "passage", dataset: { passageId: hit.id } }, hit.content ?? "")));
      showStatus(searchStatus, `${found.count} found`);
    } catch (error) {
      showError(searchStatus, error);
    }
  });
  return el("div", { "data-testid": "archival-pane" }, addForm, searchForm, el("div", { class: "card" }, el("h2", {}, "Passages"), list.element));
}

function toolsPane(agentId) {
  const list = pagedList("tools", (after) => api("GET", withQuery(path(agentId, "/tools"), { limit: LIST_PAGE_COUNT, after })),
    (tool) => el("div", { class: "block", dataset: { toolName: tool.name } },
      el("header", {}, el("span", { class: "label" }, tool.name), el("span", { class: "pill" }, tool.tool_type ?? "custom")),
      el("p", { class: "muted" }, tool.description ?? "")));
  return el("div", { class: "card", "data-testid": "tools-pane" }, el("h2", {}, "Attached tools"), list.element);
}

function stepsTable(runId) {
  const body = el("tbody", {}, el("tr", {}, el("td", { colspan: 6, class: "muted" }, "Loading steps…")));
  api("GET", withQuery(`/v1/runs/${encodeURIComponent(runId)}/steps`, { limit: RUN_STEPS_COUNT_MAX, order: "asc" }))
    .then((steps) => replace(body, steps.length === 0 ? el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No steps.")) : steps.map((step) =>
      el("tr", { dataset: { stepId: step.id } },
        el("td", { class: "mono" }, step.id),
        el("td", {}, pill(step.status ?? "")),
        el("td", {}, step.model_handle ?? step.model ?? ""),
        el("td", {}, `${step.prompt_tokens ?? 0} in / ${step.completion_tokens ?? 0} out`),
        el("td", { class: step.error_type ? "error" : "muted" }, step.error_type ?? "none"),
        el("td", { class: "muted" }, when(step.created_at))))))
    .catch((error) => replace(body, el("tr", {}, el("td", { colspan: 6, class: "error" }, error.message))));
  return el("table", { class: "steps", "data-testid": `steps-${runId}` },
    el("thead", {}, el("tr", {}, ["Step", "Status", "Model", "Tokens", "Error", "Started"].map((h) => el("th", {}, h)))), body);
}

function runsPane(agentId) {
  const list = pagedList("runs", (after) => api("GET", withQuery("/v1/runs", { agent_id: agentId, limit: LIST_PAGE_COUNT, after })),
    (run) => {
      const steps = el("div", {});
      const toggle = el("button", { type: "button", class: "quiet", "data-testid": `run-steps-${run.id}` }, "Steps");
      toggle.addEventListener("click", () => {
        if (steps.firstChild) steps.replaceChildren();
        else steps.append(stepsTable(run.id));
      });
      return el("div", { class: "block", dataset: { runId: run.id } },
        el("header", {}, el("code", {}, run.id), pill(run.status), el("span", { class: "muted" }, when(run.created_at)),
          run.stop_reason ? el("span", { class: "muted" }, `stop: ${run.stop_reason}`) : null, toggle),
        steps);
    });
  return el("div", { class: "card", "data-testid": "runs-pane" }, el("h2", {}, "Runs (newest first)"), list.element);
}
