// The agent list (with search), the form that creates an agent, and the
// cluster's nodes with their health.

import { api, withQuery } from "./api.js";
import { el, pill, replace, showError, showStatus, when } from "./dom.js";

/** Agents asked for per request; the list grows by pages through `after`. */
const AGENT_PAGE_COUNT = 20;
/** Pages one "More" reads at most while a search finds too few matches. */
const SEARCH_PAGES_PER_LOAD_MAX = 10;
/** Quiet time after typing before a search starts. */
const SEARCH_DEBOUNCE_MS = 250;

export function agentHref(agentId, tab = "chat") {
  return `#/agents/${encodeURIComponent(agentId)}/${tab}`;
}

function agentRow(agent) {
  return el("tr", { class: "clickable", dataset: { agentId: agent.id }, onclick: () => (location.hash = agentHref(agent.id)) },
    el("td", {}, el("a", { href: agentHref(agent.id), "data-testid": "agent-name" }, agent.name ?? "")),
    el("td", { class: "mono" }, agent.id),
    el("td", {}, agent.llm_config?.handle ?? agent.model ?? agent.llm_config?.model ?? ""),
    el("td", { class: "muted" }, when(agent.created_at)));
}

/**
 * Every agent, a page at a time. A search matches names containing the
 * text (any case) over the same paged list: the server's `name` filter is
 * an exact match, so the pages are read in order and filtered here.
 */
export function agentsView() {
  const search = el("input", { type: "search", placeholder: "Search agents by name", "aria-label": "Search agents by name", "data-testid": "agent-search" });
  const rows = el("tbody", { "data-testid": "agent-rows" });
  const status = el("p", { class: "status-line", "data-testid": "agents-status" });
  const more = el("button", { type: "button", class: "quiet", "data-testid": "agents-more" }, "More");
  let cursor = null;
  let exhausted = false;
  let shown = 0;
  let generation = 0;
  let debounce = null;

  async function load(reset) {
    if (reset) {
      generation += 1;
      cursor = null;
      exhausted = false;
      shown = 0;
      rows.replaceChildren();
    }
    const mine = generation;
    const needle = search.value.trim().toLowerCase();
    let found = 0;
    let pages = 0;
    more.disabled = true;
    showStatus(status, "Loading…");
    try {
      while (!exhausted && found < AGENT_PAGE_COUNT && pages < SEARCH_PAGES_PER_LOAD_MAX) {
        const page = await api("GET", withQuery("/v1/agents/", { limit: AGENT_PAGE_COUNT, after: cursor }));
        if (mine !== generation) return;
        pages += 1;
        if (page.length < AGENT_PAGE_COUNT) exhausted = true;
        if (page.length > 0) cursor = page[page.length - 1].id;
        for (const agent of page) {
          if (needle && !(agent.name ?? "").toLowerCase().includes(needle)) continue;
          rows.append(agentRow(agent));
          found += 1;
          shown += 1;
        }
      }
      const noun = needle ? `agent${shown === 1 ? "" : "s"} matching` : `agent${shown === 1 ? "" : "s"}`;
      showStatus(status, `${shown} ${noun}${exhausted ? " (all read)" : ""}`);
      more.disabled = exhausted;
    } catch (error) {
      if (mine !== generation) return;
      showError(status, error);
      more.disabled = false;
    }
  }

  search.addEventListener("input", () => {
    clearTimeout(debounce);
    debounce = setTimeout(() => load(true), SEARCH_DEBOUNCE_MS);
  });
  more.addEventListener("click", () => load(false));
  load(true);
  return el("section", { "data-testid": "agents-view" },
    el("div", { class: "toolbar" }, el("h1", {}, "Agents"), search, el("a", { href: "#/agents/new", class: "button" }, "New agent")),
    el("div", { class: "card" },
      el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Id"), el("th", {}, "Model"), el("th", {}, "Created"))), rows),
      el("div", { class: "actions" }, more, status)));
}

function options(select, models, empty) {
  replace(select, models.length === 0 ? el("option", { value: "" }, empty) : null,
    models.map((model) => el("option", { value: model.handle }, model.handle)));
}

/** Name, model and embedding (from the server's lists), first memory. */
export function newAgentView() {
  const name = el("input", { type: "text", name: "name", required: true, "data-testid": "new-agent-name" });
  const model = el("select", { name: "model", "data-testid": "new-agent-model" });
  const embedding = el("select", { name: "embedding", "data-testid": "new-agent-embedding" });
  const human = el("textarea", { name: "human", "data-testid": "new-agent-human" });
  human.value = "Name: unknown.";
  const persona = el("textarea", { name: "persona", "data-testid": "new-agent-persona" });
  persona.value = "A helpful assistant.";
  const status = el("p", { class: "status-line", "data-testid": "new-agent-status" });
  const submit = el("button", { type: "submit", "data-testid": "new-agent-submit" }, "Create agent");

  Promise.all([api("GET", "/v1/models/"), api("GET", "/v1/models/embedding")])
    .then(([llms, embeddings]) => {
      options(model, llms, "no model is configured");
      options(embedding, embeddings, "no embedding model");
    })
    .catch((error) => showError(status, error));

  const form = el("form", { class: "card", "data-testid": "new-agent-form" },
    el("label", {}, "Name", name),
    el("label", {}, "Model", model),
    el("label", {}, "Embedding", embedding),
    el("label", {}, "Human block (what the agent knows about you)", human),
    el("label", {}, "Persona block (who the agent is)", persona),
    el("div", { class: "actions" }, submit, status));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    showStatus(status, "Creating…");
    const body = {
      name: name.value.trim(),
      model: model.value || undefined,
      embedding: embedding.value || undefined,
      memory_blocks: [{ label: "human", value: human.value }, { label: "persona", value: persona.value }],
    };
    try {
      const agent = await api("POST", "/v1/agents/", body);
      location.hash = agentHref(agent.id);
    } catch (error) {
      showError(status, error);
      submit.disabled = false;
    }
  });
  return el("section", { "data-testid": "new-agent-view" }, el("h1", {}, "New agent"), form);
}

/** The nodes this node sees (`/v1/cluster/nodes`) and its own health and readiness. */
export function nodesView() {
  const summary = el("div", { class: "card", "data-testid": "node-summary" });
  const rows = el("tbody", { "data-testid": "node-rows" });
  const status = el("p", { class: "status-line" });

  async function load() {
    showStatus(status, "Loading…");
    try {
      const [health, ready, cluster] = await Promise.all([
        api("GET", "/v1/health/"),
        api("GET", "/v1/ready/").then(() => "ready", (error) => `not ready (${error.message})`),
        api("GET", "/v1/cluster/nodes"),
      ]);
      replace(summary,
        el("p", {}, "Answered by node ", el("code", { "data-testid": "answering-node" }, cluster.node_id), cluster.cluster ? " of a cluster." : ", running alone."),
        el("p", {}, "Health: ", pill(health.status), ` (version ${health.version}); `, el("span", { "data-testid": "readiness" }, ready), "."));
      replace(rows, cluster.nodes.map((node) => el("tr", { dataset: { nodeId: node.node_id } },
        el("td", { class: "mono" }, node.node_id),
        el("td", { class: "mono" }, node.advertise ?? "—"),
        el("td", {}, pill(node.status)),
        el("td", {}, pill(node.liveness)),
        el("td", {}, node.heartbeat_age_ms === null ? "—" : `${node.heartbeat_age_ms} ms`),
        el("td", {}, node.routable ? "yes" : "no"))));
      showStatus(status, `${cluster.nodes.length} node${cluster.nodes.length === 1 ? "" : "s"}, read ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      showError(status, error);
    }
  }

  load();
  return el("section", { "data-testid": "nodes-view" },
    el("div", { class: "toolbar" }, el("h1", {}, "Nodes"), el("button", { type: "button", class: "quiet", onclick: load }, "Refresh")),
    summary,
    el("div", { class: "card" },
      el("table", {}, el("thead", {}, el("tr", {}, ["Node", "Address", "Status", "Liveness", "Heartbeat age", "Routable"].map((h) => el("th", {}, h)))), rows),
      status));
}
