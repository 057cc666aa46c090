// Building the page. Every value from the server or the person becomes a
// text node (textContent) or an attribute value, never markup: there is no
// innerHTML in the console, so an agent named "<img src=x onerror=...>"
// shows those characters.

/**
 * An element: `attrs` sets properties and attributes (`on*` functions are
 * listeners, `dataset` an object, `class` the class list); every child is
 * a node, or text made into a text node; null and false are skipped.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      node.className = value;
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (key === "value" || key === "checked" || key === "disabled" || key === "selected") {
      node[key] = value;
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

/** Appends children (nodes or text; arrays flattened; null skipped). */
export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces every child of `node`. */
export function replace(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

/** A short, readable local date and time of an ISO timestamp. */
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso.endsWith("Z") || /[+-]\d\d:\d\d$/.test(iso) ? iso : iso + "Z");
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** A status pill whose class is the status (from a closed list). */
export function pill(status) {
  const known = ["live", "completed", "success", "active", "ok", "failed", "cancelled", "left", "running", "created", "joining", "draining"];
  const text = String(status ?? "unknown");
  return el("span", { class: known.includes(text) ? `pill ${text}` : "pill" }, text);
}

/** Writes an error's message into `target` (a status line). */
export function showError(target, error) {
  target.className = "status-line error";
  target.textContent = error instanceof Error ? error.message : String(error);
}

/** Writes a neutral message into `target`. */
export function showStatus(target, message) {
  target.className = "status-line muted";
  target.textContent = message;
}
