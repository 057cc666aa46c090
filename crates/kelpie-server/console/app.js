// The console's entry point: routes `location.hash` to a view.
//   #/agents              the agent list and search
//   #/agents/new          create an agent
//   #/agents/<id>/<tab>   one agent (chat, memory, archival, tools, runs)
//   #/nodes               the cluster's nodes and health

import { api, forgetToken, token } from "./api.js";
import { TABS, agentView } from "./agent.js";
import { replace } from "./dom.js";
import { agentsView, newAgentView, nodesView } from "./views.js";

function viewOf(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "nodes") return nodesView();
  if (parts[0] === "agents" && parts[1] === "new") return newAgentView();
  if (parts[0] === "agents" && parts[1]) return agentView(parts[1], TABS.includes(parts[2]) ? parts[2] : "chat");
  return agentsView();
}

function render() {
  const main = document.getElementById("main");
  try {
    replace(main, viewOf(location.hash));
  } catch (error) {
    replace(main, error.message);
  }
  for (const link of document.querySelectorAll(".top nav a")) {
    link.classList.toggle("active", location.hash.startsWith(link.getAttribute("href")));
  }
}

const forget = document.getElementById("forget-token");
forget.hidden = !token();
forget.addEventListener("click", () => {
  forgetToken();
  location.reload();
});
api("GET", "/v1/health/")
  .then((health) => (document.getElementById("server-version").textContent = `server ${health.version} · ${health.status}`))
  .catch(() => (document.getElementById("server-version").textContent = "server unreachable"));
window.addEventListener("hashchange", render);
render();
