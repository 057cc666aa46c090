// Talking to Kelpie's Letta-compatible API from the page: JSON requests,
// the bearer token, and the server-sent events of a streamed turn.
//
// The token is asked for only when the API answers 401, kept in this tab's
// sessionStorage and sent as `Authorization: Bearer`. Requests that meet a
// 401 wait for one prompt together, then are sent again with the new token.

const TOKEN_KEY = "kelpie.console.token";
/** Largest SSE event kept while waiting for its end (bytes of text). */
const SSE_EVENT_CHARS_MAX = 4 * 1024 * 1024;

export class ApiError extends Error {
  constructor(status, detail) {
    super(`${status}: ${detail}`);
    this.status = status;
    this.detail = detail;
  }
}

let pendingToken = null;

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Shows the token dialog with the server's reason; resolves once a token is given. */
function askToken(reason) {
  const dialog = document.getElementById("token-dialog");
  if (pendingToken) {
    if (!dialog.open) dialog.showModal();
    return pendingToken;
  }
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  document.getElementById("token-reason").textContent = reason;
  pendingToken = new Promise((resolve) => {
    const submitted = (event) => {
      event.preventDefault();
      const given = input.value.trim();
      if (!given) return;
      sessionStorage.setItem(TOKEN_KEY, given);
      input.value = "";
      form.removeEventListener("submit", submitted);
      dialog.close();
      pendingToken = null;
      document.getElementById("forget-token").hidden = false;
      resolve();
    };
    form.addEventListener("submit", submitted);
  });
  // Escape would close the dialog and leave the waiting requests hanging.
  dialog.oncancel = (event) => event.preventDefault();
  if (!dialog.open) dialog.showModal();
  input.focus();
  return pendingToken;
}

async function detailOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body.detail === "string") return body.detail;
    return JSON.stringify(body);
  } catch {
    return text || response.statusText;
  }
}

/** Sends a request until it is not refused for its token; the response. */
async function send(method, path, body, accept) {
  for (;;) {
    const headers = { Accept: accept };
    const current = token();
    if (current) headers.Authorization = `Bearer ${current}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
    if (response.status !== 401) return response;
    await askToken(await detailOf(response));
  }
}

/** A JSON request: the parsed answer, or an ApiError with the server's detail. */
export async function api(method, path, body) {
  const response = await send(method, path, body, "application/json");
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** A path with query parameters (those null or undefined left out). */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/**
 * POSTs `body` and reads the answer as server-sent events, calling
 * `onEvent` with each parsed `data:` payload until `[DONE]` or the end.
 */
export async function stream(path, body, onEvent) {
  const response = await send("POST", path, body, "text/event-stream");
  if (!response.ok) throw new ApiError(response.status, await detailOf(response));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replaceAll("\r\n", "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      onEvent(JSON.parse(data));
    }
    if (buffer.length > SSE_EVENT_CHARS_MAX) {
      throw new Error(`a streamed event is over ${SSE_EVENT_CHARS_MAX} characters`);
    }
  }
}
