"""Every served operation's response, checked against Letta 0.16.8's own response schemas.

The calls below use a running `kelpie serve` as a user would (real ids from earlier answers, in
the order a user makes them). Each answer is checked for the success status Letta documents, and
its JSON body (or each Server-Sent Event of a stream) is validated with jsonschema (Draft 2020-12,
as OpenAPI 3.1) against the schema of that operation in the reference, vendored in
tests/fixtures/letta-v1-operations.json (scripts/vendor_letta_reference.py regenerates it).
`oneOf` with a `discriminator` is checked against the schema the discriminator names.

The recorded Letta exchanges (wire-samples.json, vendored as field lists) are replayed too: every
field of Letta's answer must be in Kelpie's answer to the same call.

Coverage: every operation that the server's GET /openapi.json lists and the reference has must be
called by CALLS with a success answer, or be in NOT_EXERCISED with the status it answers instead
(checked too) and the reason.

To add an operation: append a `Call` to CALLS, after the calls that make the ids it needs.
"""

import json
import pathlib
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import httpx
import jsonschema
import pytest
import referencing

from conftest import start_kelpie

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "scripts"))
import served_operations  # noqa: E402

FIXTURE = json.loads(
    (pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "letta-v1-operations.json").read_text()
)
PY_MCP_SERVER = pathlib.Path(__file__).resolve().parent / "fixtures" / "py_mcp_server.py"
REQUEST_TIMEOUT_S = 60
WAIT_TIMEOUT_S = 30
MODEL = "openai-proxy/fake-gpt"

# Operations served but not called with a success answer here: the status they answer instead
# (checked, with a {"detail": ...} body) and why.
NOT_EXERCISED = {
    "GET /v1/jobs/{job_id}": (404, "Kelpie creates no jobs of type job (nor does Letta 0.16.8): every id is unknown"),
    "DELETE /v1/jobs/{job_id}": (404, "as GET /v1/jobs/{job_id}: no job exists to delete"),
    "PATCH /v1/jobs/{job_id}/cancel": (404, "as GET /v1/jobs/{job_id}: no job exists to cancel"),
    "GET /v1/runs/{run_id}/trace": (501, "Kelpie keeps no OpenTelemetry traces (docs/runs.md), as Letta without ClickHouse"),
    "POST /v1/sandbox-config/e2b/default": (422, "Kelpie runs tool code in its own sandboxes, never e2b's"),
    "GET /v1/tools/mcp/oauth/callback": (
        400, "a success needs an authorization a connect stream awaits (test_server_operations.py runs the "
             "whole OAuth flow); an unknown state is refused"),
    "POST /v1/conversations/{conversation_id}/cancel": (
        409, "nothing runs in the conversation here (Letta answers 409 too); crates/kelpie-server/tests/"
             "conversations.rs cancels a running turn"),
}
_NOT_EXERCISED_PATHS = {
    "GET /v1/jobs/{job_id}": "/v1/jobs/job-00000000-0000-4000-8000-000000000000",
    "DELETE /v1/jobs/{job_id}": "/v1/jobs/job-00000000-0000-4000-8000-000000000000",
    "PATCH /v1/jobs/{job_id}/cancel": "/v1/jobs/job-00000000-0000-4000-8000-000000000000/cancel",
    "GET /v1/runs/{run_id}/trace": "/v1/runs/{run}/trace",
    "POST /v1/sandbox-config/e2b/default": "/v1/sandbox-config/e2b/default",
    "POST /v1/conversations/{conversation_id}/cancel": "/v1/conversations/{conversation}/cancel",
    "GET /v1/tools/mcp/oauth/callback": "/v1/tools/mcp/oauth/callback?code=c&state=s",
}


# The kinds of message (and stream event) the table's turns make, so each is validated somewhere.
# (Kelpie builds the system prompt at every step and stores no system message to list.)
MESSAGE_TYPES_EXPECTED = {
    "user_message", "reasoning_message", "assistant_message", "tool_call_message", "tool_return_message",
    "approval_request_message", "approval_response_message", "ping", "stop_reason", "usage_statistics",
}

# Where Kelpie answers other than Letta's schema says on purpose (docs/server.md): the schema the
# answer is validated against instead, with the reason.
SCHEMA_OVERRIDES = {
    # Letta's openapi.json calls its export a string; Letta answers the AgentFileSchema object,
    # as Kelpie does (with its kelpie_* parts beside Letta's, which the schema allows).
    "GET /v1/agents/{agent_id}/export": {"$ref": "#/components/schemas/AgentFileSchema"},
    "POST /v1/agents/{agent_id}/export": {"$ref": "#/components/schemas/AgentFileSchema"},
    # Letta's openapi.json names LettaResponse for a conversation's send, which streams by default
    # (its `text/event-stream`): each event is one of a stream's, as for the agents' stream route.
    "POST /v1/conversations/{conversation_id}/messages": {"$ref": "#/components/schemas/LettaStreamingResponse"},
    # Letta names no schema for a resumed conversation stream; its events are a stream's.
    "POST /v1/conversations/{conversation_id}/stream": {"$ref": "#/components/schemas/LettaStreamingResponse"},
}
# Fields Kelpie adds where Letta's schema forbids other fields, with the reason.
EXTRA_FIELDS = {
    ("Step", "created_at"): "when the step was stored: the time steps' start_date/end_date filters compare "
    "(Letta's Step shows none); docs/runs.md",
}


@dataclass
class Call:
    """One request of the table: `op` is the reference's "METHOD /path"; `request` builds the
    concrete path and keyword arguments of httpx from the ids gathered so far; `keep` stores
    ids of the answer for later calls."""

    op: str
    request: Callable[[dict], tuple]
    keep: Optional[Callable[[dict, object], None]] = None


@dataclass
class Outcome:
    op: str
    path: str
    status: int
    problems: list = field(default_factory=list)
    empty: bool = False
    message_types: set = field(default_factory=set)


_PLAIN_ONE_OF = jsonschema.Draft202012Validator.VALIDATORS["oneOf"]


def _discriminated_one_of(validator, one_of, instance, schema):
    """`oneOf` with a discriminator: the named schema only (so its errors are the ones reported)."""
    discriminator = schema.get("discriminator")
    if discriminator and isinstance(instance, dict):
        value = instance.get(discriminator["propertyName"])
        target = discriminator.get("mapping", {}).get(value)
        if target is None:
            yield jsonschema.ValidationError(
                f"{discriminator['propertyName']}={value!r} is none of {sorted(discriminator.get('mapping', {}))}"
            )
            return
        yield from validator.descend(instance, {"$ref": "urn:letta" + target if target.startswith("#/") else target})
        return
    yield from _PLAIN_ONE_OF(validator, one_of, instance, schema)


LettaValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"oneOf": _discriminated_one_of}
)
def _with_extra_fields(components):
    schemas = dict(components["schemas"])
    for (name, field_name), _reason in EXTRA_FIELDS.items():
        schema = dict(schemas[name])
        schema["properties"] = dict(schema["properties"], **{field_name: {}})
        schemas[name] = schema
    return {"schemas": schemas}


_ROOT = {"components": _with_extra_fields(FIXTURE["components"])}
_REGISTRY = referencing.Registry().with_resource(
    "urn:letta", referencing.Resource.from_contents(_ROOT, default_specification=referencing.jsonschema.DRAFT202012)
)


def _schema_errors(schema: dict, instance) -> list:
    wrapped = {"$id": "urn:letta-op", "allOf": [_relative_to_root(schema)]}
    validator = LettaValidator(wrapped, registry=_REGISTRY)
    return [
        f"at {'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message[:300]}"
        for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
    ]


def _relative_to_root(value):
    """The operation's schema with its "#/components/..." references pointing into the root."""
    if isinstance(value, dict):
        return {
            k: ("urn:letta" + v if k == "$ref" and v.startswith("#/") else _relative_to_root(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_relative_to_root(v) for v in value]
    return value


def _events(text: str) -> list:
    events = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[len("data: "):]))
    return events


def _check(op: str, status: int, response: httpx.Response) -> list:
    spec = dict(FIXTURE["operations"][op])
    spec["schema"] = SCHEMA_OVERRIDES.get(op, spec["schema"])
    problems = []
    if status != spec["status"]:
        problems.append(f"status {status}, Letta answers {spec['status']}: {response.text[:300]}")
        return problems
    if spec["schema"] is None:
        if response.content:
            problems.append(f"Letta answers {spec['status']} with no body; Kelpie sent {response.text[:200]}")
        return problems
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        if not spec["event_stream"]:
            return [f"an event stream where Letta answers JSON: {response.text[:200]}"]
        events = _events(response.text)
        if not events:
            problems.append("an empty event stream")
        for event in events:
            problems += [f"event {event.get('message_type')}: {e}" for e in _schema_errors(spec["schema"], event)]
        return problems
    return _schema_errors(spec["schema"], response.json())


def _message_types(response: httpx.Response) -> set:
    """The `message_type`s an answer holds, at any depth (for the check that every kind was seen)."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        values = _events(response.text)
    elif response.headers.get("content-type", "").startswith("application/json"):
        values = [response.json()]
    else:
        return set()
    found, todo = set(), values
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            if isinstance(value.get("message_type"), str):
                found.add(value["message_type"])
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return found


def _wait(http, path, done, what):
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline:
        body = http.get(path).json()
        if done(body):
            return body
        time.sleep(0.05)
    raise AssertionError(f"{what} not done in {WAIT_TIMEOUT_S} s: {body}")


def _set(name):
    return lambda ids, body: ids.__setitem__(name, body["id"])


def _keep_reply(ids, body):
    messages = body["messages"]
    ids["assistant_message"] = next(m["id"] for m in messages if m["message_type"] == "assistant_message")
    ids["step"] = messages[-1]["step_id"]
    ids["run"] = messages[-1]["run_id"]


def _keep_approval(ids, body):
    request = body["messages"][-1]
    assert request["message_type"] == "approval_request_message", body
    ids["approval_call"] = request["tool_call"]["tool_call_id"]


def _keep_passage(ids, body):
    ids["passage"] = body[0]["id"]


def _text(content):
    return {"messages": [{"role": "user", "content": content}]}


def _get(op, path, **kwargs):
    return Call(f"GET {op}", lambda ids: (path(ids) if callable(path) else path, kwargs))


def _do(method, op, path, body=None, keep=None, **kwargs):
    def request(ids):
        args = dict(kwargs)
        if body is not None:
            args["json"] = body(ids) if callable(body) else body
        return (path(ids) if callable(path) else path, args)

    return Call(f"{method} {op}", request, keep)


TOOL_SOURCE = '''def roll_die(sides: int) -> str:
    """Roll a die.

    Args:
        sides (int): number of sides

    Returns:
        str: the face
    """
    return str(sides)
'''

A = "/v1/agents/{agent_id}"


def _a(suffix=""):
    return lambda ids: f"/v1/agents/{ids['agent']}{suffix}"


def _fmt(template):
    return lambda ids: template.format(**ids)


def _wait_file(http, ids):
    _wait(http, f"/v1/folders/{ids['folder']}/files/{ids['file']}",
          lambda f: f["processing_status"] in ("completed", "error"), "the upload")


def _wait_batch(http, ids):
    _wait(http, f"/v1/messages/batches/{ids['batch']}", lambda b: b["status"] != "running", "the batch")


def _group_turn(http, ids):
    """A round robin turn (Kelpie's own route), so that the group has messages to list."""
    response = http.post(f"/v1/groups/{ids['group']}/messages", json=_text("hello group"))
    assert response.status_code == 200, response.text


def _refusals(http, ids):
    """The operations of NOT_EXERCISED answer the status their reason gives, with a detail."""
    results = []
    for op, (status, _reason) in NOT_EXERCISED.items():
        path = _NOT_EXERCISED_PATHS[op].format(**ids)
        response = http.request(op.split(" ", 1)[0], path)
        body = response.json()
        detail_ok = isinstance(body, dict) and isinstance(body.get("detail"), str) and body["detail"] != ""
        problems = [] if (response.status_code, detail_ok) == (status, True) else [
            f"expected {status} with a detail, got {response.status_code}: {response.text[:200]}"]
        results.append(Outcome(op, path, response.status_code, problems))
    return results


def _conversation_run(http, ids):
    """The background run the conversation's last send started, once ended."""
    runs = http.get("/v1/runs/", params={"conversation_id": ids["conversation"]}).json()
    assert runs and runs[0]["background"], runs
    ids["conversation_run"] = runs[0]["id"]
    _wait(http, f"/v1/runs/{runs[0]['id']}", lambda run: run["status"] != "running", "the conversation's run")


def _wait_runs(http, ids):
    _wait(http, f"/v1/runs/active?agent_id={ids['agent']}", lambda runs: runs == [], "the agent's runs")


# The table, in order; a plain function between calls waits for or prepares what the next needs,
# and `_refusals` checks the operations of NOT_EXERCISED (while a run exists for the trace).
CALLS = [
    _get("/v1/health/", "/v1/health/"),
    _do("POST", "/v1/auth", "/v1/auth", body={"password": "any: this server has no API key"}),
    _get("/v1/ready/", "/v1/ready/"),
    _get("/v1/models/", "/v1/models/"),
    _get("/v1/models/embedding", "/v1/models/embedding"),
    _do("POST", "/v1/agents/", "/v1/agents/", keep=_set("agent"), body={
        "name": "schemas", "model": MODEL, "description": "checked against Letta's schemas",
        "memory_blocks": [{"label": "human", "value": "Name: Ana."}, {"label": "persona", "value": "Terse."}],
    }),
    _do("POST", "/v1/agents/", "/v1/agents/", keep=_set("agent2"), body={"name": "schemas-2", "model": MODEL}),
    _get("/v1/agents/", "/v1/agents/", params={"limit": 5}),
    _get("/v1/agents/count", "/v1/agents/count"),
    _get(A, _a()),
    _do("PATCH", A, _a(), body={"description": "modified", "tags": ["schemas"]}),
    _get("/v1/tags/", "/v1/tags/"),
    _get(A + "/core-memory", _a("/core-memory")),
    _get(A + "/core-memory/blocks", _a("/core-memory/blocks")),
    _get(A + "/core-memory/blocks/{block_label}", _a("/core-memory/blocks/human")),
    _do("PATCH", A + "/core-memory/blocks/{block_label}", _a("/core-memory/blocks/human"),
        body={"value": "Name: Ana. Likes chess."}),
    # Standalone blocks.
    _do("POST", "/v1/blocks/", "/v1/blocks/", keep=_set("block"), body={"label": "shared", "value": "Tea at five."}),
    _get("/v1/blocks/", "/v1/blocks/"),
    _get("/v1/blocks/count", "/v1/blocks/count"),
    _get("/v1/blocks/{block_id}", _fmt("/v1/blocks/{block}")),
    _do("PATCH", "/v1/blocks/{block_id}", _fmt("/v1/blocks/{block}"), body={"value": "Tea at six."}),
    _do("PATCH", A + "/core-memory/blocks/attach/{block_id}", _fmt("/v1/agents/{agent}/core-memory/blocks/attach/{block}")),
    _get("/v1/blocks/{block_id}/agents", _fmt("/v1/blocks/{block}/agents")),
    _do("PATCH", A + "/core-memory/blocks/detach/{block_id}", _fmt("/v1/agents/{agent}/core-memory/blocks/detach/{block}")),
    # Messages and what a turn leaves: runs and steps.
    _do("POST", A + "/messages", _a("/messages"), body=_text("hello"), keep=_keep_reply),
    _do("POST", A + "/messages/stream", _a("/messages/stream"), body=dict(_text("stream me"), stream_tokens=False)),
    _do("POST", A + "/messages/async", _a("/messages/async"), body=_text("later"), keep=_set("async_run")),
    _wait_runs,
    _get(A + "/messages", _a("/messages"), params={"limit": 10}),
    _do("PATCH", A + "/messages/{message_id}", _fmt("/v1/agents/{agent}/messages/{assistant_message}"),
        body={"message_type": "assistant_message", "content": "edited reply"}),
    _get("/v1/messages/{message_id}", _fmt("/v1/messages/{assistant_message}")),
    _do("POST", "/v1/messages/search", "/v1/messages/search", body={"query": "hello"}),
    _do("POST", "/v1/agents/messages/search", "/v1/agents/messages/search",
        body=lambda ids: {"query": "hello", "agent_id": ids["agent"]}),
    _do("POST", A + "/messages/cancel", _a("/messages/cancel"), body={}),
    _do("POST", A + "/messages/preview-raw-payload", _a("/messages/preview-raw-payload"), body=_text("preview")),
    _do("POST", A + "/generate", _a("/generate"), body={"prompt": "say hi"}),
    _do("POST", A + "/recompile", _a("/recompile")),
    _do("POST", A + "/system-prompt/recompile", _a("/system-prompt/recompile")),
    _get(A + "/context", _a("/context")),
    _get("/v1/runs/", "/v1/runs/", params=lambda ids: {"agent_id": ids["agent"]}),
    _get("/v1/runs/active", "/v1/runs/active"),
    _get("/v1/runs/{run_id}", _fmt("/v1/runs/{async_run}")),
    _get("/v1/runs/{run_id}/messages", _fmt("/v1/runs/{run}/messages")),
    _get("/v1/runs/{run_id}/usage", _fmt("/v1/runs/{run}/usage")),
    _get("/v1/runs/{run_id}/steps", _fmt("/v1/runs/{run}/steps")),
    _get("/v1/runs/{run_id}/metrics", _fmt("/v1/runs/{run}/metrics")),
    # Conversations: histories of one agent that share its memory.
    _do("POST", "/v1/conversations/", lambda ids: f"/v1/conversations/?agent_id={ids['agent']}",
        keep=_set("conversation"), body={"summary": "a side thread"}),
    _get("/v1/conversations/", lambda ids: f"/v1/conversations/?agent_id={ids['agent']}"),
    _get("/v1/conversations/{conversation_id}", _fmt("/v1/conversations/{conversation}")),
    _do("PATCH", "/v1/conversations/{conversation_id}", _fmt("/v1/conversations/{conversation}"),
        body={"summary": "the side thread"}),
    _do("POST", "/v1/conversations/{conversation_id}/messages", _fmt("/v1/conversations/{conversation}/messages"),
        body=_text("hello thread")),
    _do("POST", "/v1/conversations/{conversation_id}/messages", _fmt("/v1/conversations/{conversation}/messages"),
        body=dict(_text("in the background"), background=True)),
    _conversation_run,
    _do("POST", "/v1/conversations/{conversation_id}/stream", _fmt("/v1/conversations/{conversation}/stream"),
        body=lambda ids: {"run_id": ids["conversation_run"]}),
    _get("/v1/conversations/{conversation_id}/messages", _fmt("/v1/conversations/{conversation}/messages")),
    _do("POST", "/v1/conversations/{conversation_id}/messages/preview-raw-payload",
        _fmt("/v1/conversations/{conversation}/messages/preview-raw-payload"), body=_text("preview")),
    _do("POST", "/v1/conversations/{conversation_id}/recompile", _fmt("/v1/conversations/{conversation}/recompile")),
    _do("POST", "/v1/conversations/{conversation_id}/fork", _fmt("/v1/conversations/{conversation}/fork"),
        keep=_set("fork")),
    _do("POST", "/v1/conversations/{conversation_id}/compact", _fmt("/v1/conversations/{conversation}/compact"),
        body={}),
    _do("DELETE", "/v1/conversations/{conversation_id}", _fmt("/v1/conversations/{fork}")),
    _refusals,
    _do("DELETE", "/v1/runs/{run_id}", _fmt("/v1/runs/{async_run}")),
    _do("POST", "/v1/runs/{run_id}/stream", _fmt("/v1/runs/{run}/stream"), body={}),
    _get("/v1/steps/", "/v1/steps/", params=lambda ids: {"agent_id": ids["agent"]}),
    _get("/v1/steps/{step_id}", _fmt("/v1/steps/{step}")),
    _get("/v1/steps/{step_id}/metrics", _fmt("/v1/steps/{step}/metrics")),
    _get("/v1/steps/{step_id}/trace", _fmt("/v1/steps/{step}/trace")),
    _get("/v1/telemetry/{step_id}", _fmt("/v1/telemetry/{step}")),
    _get("/v1/steps/{step_id}/messages", _fmt("/v1/steps/{step}/messages")),
    _do("PATCH", "/v1/steps/{step_id}/feedback", _fmt("/v1/steps/{step}/feedback"),
        body={"feedback": "positive", "tags": ["good"]}),
    _do("PATCH", "/v1/steps/{step_id}/transaction/{transaction_id}", _fmt("/v1/steps/{step}/transaction/tx-1")),
    # Archival memory.
    _do("POST", A + "/archival-memory", _a("/archival-memory"), body={"text": "The lighthouse key is under the blue stone."},
        keep=_keep_passage),
    _get(A + "/archival-memory", _a("/archival-memory")),
    _get("/v1/embeddings/total_storage_size", "/v1/embeddings/total_storage_size", headers={"storage-unit": "KB"}),
    _get(A + "/archival-memory/search", _a("/archival-memory/search"), params={"query": "lighthouse", "top_k": 1}),
    _do("POST", "/v1/passages/search", "/v1/passages/search",
        body=lambda ids: {"agent_id": ids["agent"], "query": "lighthouse"}),
    _do("DELETE", A + "/archival-memory/{memory_id}", _fmt("/v1/agents/{agent}/archival-memory/{passage}")),
    # Tools.
    _do("POST", "/v1/tools/", "/v1/tools/", body={"source_code": TOOL_SOURCE}, keep=_set("tool")),
    _do("PUT", "/v1/tools/", "/v1/tools/", body={"source_code": TOOL_SOURCE, "description": "Roll it."}),
    _get("/v1/tools/", "/v1/tools/", params={"limit": 50}),
    _get("/v1/tools/count", "/v1/tools/count"),
    _get("/v1/tools/{tool_id}", _fmt("/v1/tools/{tool}")),
    _do("PATCH", "/v1/tools/{tool_id}", _fmt("/v1/tools/{tool}"), body={"tags": ["dice"]}),
    _do("POST", "/v1/tools/search", "/v1/tools/search", body={"query": "roll a die"}),
    _do("POST", "/v1/tools/run", "/v1/tools/run", body={"source_code": TOOL_SOURCE, "args": {"sides": 6}}),
    _do("POST", "/v1/tools/generate-schema", "/v1/tools/generate-schema", body={"code": TOOL_SOURCE}),
    _do("POST", "/v1/tools/generate-tool", "/v1/tools/generate-tool",
        body={"tool_name": "shout", "prompt": "Shout the text.", "validation_errors": []}),
    _do("POST", "/v1/tools/add-base-tools", "/v1/tools/add-base-tools"),
    _do("PATCH", A + "/tools/attach/{tool_id}", _fmt("/v1/agents/{agent}/tools/attach/{tool}")),
    _get(A + "/tools", _a("/tools")),
    _do("POST", A + "/tools/{tool_name}/run", _a("/tools/roll_die/run"), body={"args": {"sides": 4}}),
    _do("PATCH", A + "/tools/approval/{tool_name}", _a("/tools/approval/roll_die"), body={"requires_approval": True}),
    # Turns that make every kind of message: an approval asked and given, a tool call and its
    # return, a stream of tokens; then the whole history listed.
    _do("POST", A + "/messages", _a("/messages"), body=_text('/call roll_die {"sides": 3}'), keep=_keep_approval),
    _do("POST", A + "/messages", _a("/messages"), body=lambda ids: {"messages": [{"type": "approval", "approvals": [
        {"type": "approval", "approve": True, "tool_call_id": ids["approval_call"]}]}]}),
    _do("POST", A + "/messages", _a("/messages"), body=_text('/call archival_memory_insert {"content": "tea at five"}')),
    _do("POST", A + "/messages/stream", _a("/messages/stream"), body=dict(_text("tokens please"), stream_tokens=True)),
    _get(A + "/messages", _a("/messages"), params={"limit": 100}),
    _do("PATCH", A + "/tools/detach/{tool_id}", _fmt("/v1/agents/{agent}/tools/detach/{tool}")),
    # MCP servers (the Python MCP SDK's server over streamable HTTP, on loopback).
    _do("POST", "/v1/mcp-servers/", "/v1/mcp-servers/", keep=_set("mcp"), body=lambda ids: {
        "server_name": "py", "config": {"mcp_server_type": "streamable_http", "server_url": ids["mcp_url"]}}),
    _get("/v1/mcp-servers/", "/v1/mcp-servers/"),
    _get("/v1/mcp-servers/{mcp_server_id}", _fmt("/v1/mcp-servers/{mcp}")),
    _do("PATCH", "/v1/mcp-servers/{mcp_server_id}", _fmt("/v1/mcp-servers/{mcp}"),
        body={"server_name": "py-2", "config": {"mcp_server_type": "streamable_http"}}),
    _get("/v1/mcp-servers/{mcp_server_id}/tools", _fmt("/v1/mcp-servers/{mcp}/tools")),
    Call("GET /v1/mcp-servers/{mcp_server_id}/tools/{tool_id}",
         lambda ids: (f"/v1/mcp-servers/{ids['mcp']}/tools/{ids['mcp_tool']}", {})),
    _do("POST", "/v1/mcp-servers/{mcp_server_id}/tools/{tool_id}/run", _fmt("/v1/mcp-servers/{mcp}/tools/{mcp_tool}/run"),
        body={"args": {"text": "hi"}}),
    _do("PATCH", "/v1/mcp-servers/{mcp_server_id}/refresh", _fmt("/v1/mcp-servers/{mcp}/refresh")),
    _get("/v1/mcp-servers/connect/{mcp_server_id}", _fmt("/v1/mcp-servers/connect/{mcp}")),
    _do("DELETE", "/v1/mcp-servers/{mcp_server_id}", _fmt("/v1/mcp-servers/{mcp}")),
    _do("PUT", "/v1/tools/mcp/servers", "/v1/tools/mcp/servers", body=lambda ids: {
        "server_name": "legacy", "type": "streamable_http", "server_url": ids["mcp_url"]}),
    _get("/v1/tools/mcp/servers", "/v1/tools/mcp/servers"),
    _do("POST", "/v1/tools/mcp/servers/test", "/v1/tools/mcp/servers/test", body=lambda ids: {
        "server_name": "x", "type": "streamable_http", "server_url": ids["mcp_url"]}),
    _do("POST", "/v1/tools/mcp/servers/connect", "/v1/tools/mcp/servers/connect", body=lambda ids: {
        "server_name": "x", "type": "streamable_http", "server_url": ids["mcp_url"]}),
    _get("/v1/tools/mcp/servers/{mcp_server_name}/tools", "/v1/tools/mcp/servers/legacy/tools"),
    _do("POST", "/v1/tools/mcp/servers/{mcp_server_name}/resync", "/v1/tools/mcp/servers/legacy/resync"),
    _do("POST", "/v1/tools/mcp/servers/{mcp_server_name}/{mcp_tool_name}", "/v1/tools/mcp/servers/legacy/add"),
    _do("POST", "/v1/tools/mcp/servers/{mcp_server_name}/tools/{tool_name}/execute",
        "/v1/tools/mcp/servers/legacy/tools/shout/execute", body={"args": {"text": "hi"}}),
    _do("PATCH", "/v1/tools/mcp/servers/{mcp_server_name}", "/v1/tools/mcp/servers/legacy",
        body={"server_name": "legacy-2"}),
    _do("DELETE", "/v1/tools/mcp/servers/{mcp_server_name}", "/v1/tools/mcp/servers/legacy-2"),
    # Identities.
    _do("POST", "/v1/identities/", "/v1/identities/", keep=_set("identity"),
        body={"identifier_key": "ana", "name": "Ana", "identity_type": "user"}),
    _do("PUT", "/v1/identities/", "/v1/identities/", body={"identifier_key": "bo", "name": "Bo", "identity_type": "user"}),
    _get("/v1/identities/", "/v1/identities/"),
    _get("/v1/identities/count", "/v1/identities/count"),
    _get("/v1/identities/{identity_id}", _fmt("/v1/identities/{identity}")),
    _do("PATCH", "/v1/identities/{identity_id}", _fmt("/v1/identities/{identity}"), body={"name": "Ana B."}),
    _do("PUT", "/v1/identities/{identity_id}/properties", _fmt("/v1/identities/{identity}/properties"),
        body=[{"key": "tz", "value": "UTC", "type": "string"}]),
    _do("PATCH", A + "/identities/attach/{identity_id}", _fmt("/v1/agents/{agent}/identities/attach/{identity}")),
    _do("PATCH", "/v1/blocks/{block_id}/identities/attach/{identity_id}",
        _fmt("/v1/blocks/{block}/identities/attach/{identity}")),
    _get("/v1/identities/{identity_id}/agents", _fmt("/v1/identities/{identity}/agents")),
    _get("/v1/identities/{identity_id}/blocks", _fmt("/v1/identities/{identity}/blocks")),
    _do("PATCH", "/v1/blocks/{block_id}/identities/detach/{identity_id}",
        _fmt("/v1/blocks/{block}/identities/detach/{identity}")),
    _do("PATCH", A + "/identities/detach/{identity_id}", _fmt("/v1/agents/{agent}/identities/detach/{identity}")),
    _do("DELETE", "/v1/identities/{identity_id}", _fmt("/v1/identities/{identity}")),
    # Groups.
    _do("POST", "/v1/groups/", "/v1/groups/", keep=_set("group"),
        body=lambda ids: {"agent_ids": [ids["agent"], ids["agent2"]], "description": "pair"}),
    _get("/v1/groups/", "/v1/groups/"),
    _get("/v1/groups/count", "/v1/groups/count"),
    _get("/v1/groups/{group_id}", _fmt("/v1/groups/{group}")),
    _do("PATCH", "/v1/groups/{group_id}", _fmt("/v1/groups/{group}"), body={"description": "a pair"}),
    _get(A + "/groups", _a("/groups")),
    _group_turn,
    _get("/v1/groups/{group_id}/messages", _fmt("/v1/groups/{group}/messages")),
    _do("PATCH", "/v1/groups/{group_id}/messages/{message_id}", _fmt("/v1/groups/{group}/messages/{assistant_message}"),
        body={"message_type": "assistant_message", "content": "edited in a group"}),
    _do("PATCH", "/v1/groups/{group_id}/blocks/attach/{block_id}", _fmt("/v1/groups/{group}/blocks/attach/{block}")),
    _do("PATCH", "/v1/groups/{group_id}/blocks/detach/{block_id}", _fmt("/v1/groups/{group}/blocks/detach/{block}")),
    _do("DELETE", "/v1/groups/{group_id}", _fmt("/v1/groups/{group}")),
    # Folders and files, under both names.
    _do("POST", "/v1/folders/", "/v1/folders/", body={"name": "docs"}, keep=_set("folder")),
    _do("POST", "/v1/sources/", "/v1/sources/", body={"name": "old-docs"}, keep=_set("source")),
    Call("POST /v1/folders/{folder_id}/upload", lambda ids: (
        f"/v1/folders/{ids['folder']}/upload", {"files": {"file": ("notes.txt", b"The lighthouse is red.\n", "text/plain")}}),
        _set("file")),
    _wait_file,
    Call("POST /v1/sources/{source_id}/upload", lambda ids: (
        f"/v1/sources/{ids['source']}/upload", {"files": {"file": ("more.txt", b"A second file.\n", "text/plain")}}),
        _set("source_file")),
    _get("/v1/folders/", "/v1/folders/"),
    _get("/v1/sources/", "/v1/sources/"),
    _get("/v1/folders/count", "/v1/folders/count"),
    _get("/v1/sources/count", "/v1/sources/count"),
    _get("/v1/folders/metadata", "/v1/folders/metadata", params={"include_detailed_per_source_metadata": True}),
    _get("/v1/sources/metadata", "/v1/sources/metadata"),
    _get("/v1/folders/name/{folder_name}", "/v1/folders/name/docs"),
    _get("/v1/sources/name/{source_name}", "/v1/sources/name/old-docs"),
    _get("/v1/folders/{folder_id}", _fmt("/v1/folders/{folder}")),
    _get("/v1/sources/{source_id}", _fmt("/v1/sources/{source}")),
    _do("PATCH", "/v1/folders/{folder_id}", _fmt("/v1/folders/{folder}"), body={"description": "notes"}),
    _do("PATCH", "/v1/sources/{source_id}", _fmt("/v1/sources/{source}"), body={"description": "more notes"}),
    _do("PATCH", A + "/folders/attach/{folder_id}", _fmt("/v1/agents/{agent}/folders/attach/{folder}")),
    _do("PATCH", A + "/sources/attach/{source_id}", _fmt("/v1/agents/{agent}/sources/attach/{source}")),
    _get(A + "/folders", _a("/folders")),
    _get(A + "/sources", _a("/sources")),
    _get("/v1/folders/{folder_id}/agents", _fmt("/v1/folders/{folder}/agents")),
    _get("/v1/sources/{source_id}/agents", _fmt("/v1/sources/{source}/agents")),
    _get("/v1/folders/{folder_id}/passages", _fmt("/v1/folders/{folder}/passages")),
    _get("/v1/sources/{source_id}/passages", _fmt("/v1/sources/{folder}/passages")),
    _get("/v1/folders/{folder_id}/files", _fmt("/v1/folders/{folder}/files")),
    _get("/v1/sources/{source_id}/files", _fmt("/v1/sources/{folder}/files")),
    _get("/v1/folders/{folder_id}/files/{file_id}", _fmt("/v1/folders/{folder}/files/{file}")),
    _get("/v1/sources/{source_id}/files/{file_id}", _fmt("/v1/sources/{folder}/files/{file}")),
    _get(A + "/files", _a("/files")),
    _do("PATCH", A + "/files/{file_id}/open", _fmt("/v1/agents/{agent}/files/{file}/open")),
    _do("PATCH", A + "/files/{file_id}/close", _fmt("/v1/agents/{agent}/files/{file}/close")),
    _do("PATCH", A + "/files/close-all", _a("/files/close-all")),
    _do("PATCH", A + "/sources/detach/{source_id}", _fmt("/v1/agents/{agent}/sources/detach/{source}")),
    _do("PATCH", A + "/folders/detach/{folder_id}", _fmt("/v1/agents/{agent}/folders/detach/{folder}")),
    _do("DELETE", "/v1/sources/{source_id}/{file_id}", _fmt("/v1/sources/{source}/{source_file}")),
    _do("DELETE", "/v1/folders/{folder_id}/{file_id}", _fmt("/v1/folders/{folder}/{file}")),
    _do("DELETE", "/v1/sources/{source_id}", _fmt("/v1/sources/{source}")),
    _do("DELETE", "/v1/folders/{folder_id}", _fmt("/v1/folders/{folder}")),
    # Archives (shared archival memory).
    _do("POST", "/v1/archives/", "/v1/archives/", keep=_set("archive"),
        body={"name": "shared", "description": "facts the agents share"}),
    _get("/v1/archives/", "/v1/archives/"),
    _get("/v1/archives/{archive_id}", _fmt("/v1/archives/{archive}")),
    _do("PATCH", "/v1/archives/{archive_id}", _fmt("/v1/archives/{archive}"), body={"description": "more facts"}),
    _do("POST", "/v1/archives/{archive_id}/passages", _fmt("/v1/archives/{archive}/passages"),
        keep=_set("archive_passage"), body={"text": "The harbour closes at nine.", "tags": ["harbour"]}),
    _do("POST", "/v1/archives/{archive_id}/passages/batch", _fmt("/v1/archives/{archive}/passages/batch"),
        body={"passages": [{"text": "Ferries leave hourly."}, {"text": "The pier is wooden."}]}),
    _do("PATCH", A + "/archives/attach/{archive_id}", _fmt("/v1/agents/{agent}/archives/attach/{archive}")),
    _get("/v1/archives/{archive_id}/agents", _fmt("/v1/archives/{archive}/agents")),
    _do("PATCH", A + "/archives/detach/{archive_id}", _fmt("/v1/agents/{agent}/archives/detach/{archive}")),
    _do("DELETE", "/v1/archives/{archive_id}/passages/{passage_id}",
        _fmt("/v1/archives/{archive}/passages/{archive_passage}")),
    _do("DELETE", "/v1/archives/{archive_id}", _fmt("/v1/archives/{archive}")),
    # Providers (bring your own key), on the fake LLM the server already uses.
    _get("/v1/providers/", "/v1/providers/"),
    _do("POST", "/v1/providers/check", "/v1/providers/check",
        body=lambda ids: {"provider_type": "openai", "api_key": "sk-schemas", "base_url": ids["fake_url"]}),
    _do("POST", "/v1/providers/", "/v1/providers/", keep=_set("provider"), body=lambda ids: {
        "name": "schemas-byok", "provider_type": "openai", "api_key": "sk-schemas", "base_url": ids["fake_url"]}),
    _get("/v1/providers/{provider_id}", _fmt("/v1/providers/{provider}")),
    _do("PATCH", "/v1/providers/{provider_id}", _fmt("/v1/providers/{provider}"), body={"api_key": "sk-rotated"}),
    _do("POST", "/v1/providers/{provider_id}/check", _fmt("/v1/providers/{provider}/check")),
    _do("PATCH", "/v1/providers/{provider_id}/refresh", _fmt("/v1/providers/{provider}/refresh")),
    _do("DELETE", "/v1/providers/{provider_id}", _fmt("/v1/providers/{provider}")),
    # Every agent's messages; an agent as an OpenAI chat model.
    _get("/v1/messages/", "/v1/messages/"),
    _do("POST", "/v1/chat/completions", "/v1/chat/completions",
        body=lambda ids: {"model": ids["agent"], "messages": [{"role": "user", "content": "hello"}]}),
    # Batches.
    _do("POST", "/v1/messages/batches", "/v1/messages/batches", keep=_set("batch"), body=lambda ids: {
        "requests": [dict(_text("batched"), agent_id=ids["agent2"])]}),
    _get("/v1/messages/batches", "/v1/messages/batches"),
    _get("/v1/messages/batches/{batch_id}", _fmt("/v1/messages/batches/{batch}")),
    _wait_batch,
    _get("/v1/messages/batches/{batch_id}/messages", _fmt("/v1/messages/batches/{batch}/messages")),
    _do("PATCH", "/v1/messages/batches/{batch_id}/cancel", _fmt("/v1/messages/batches/{batch}/cancel")),
    _get("/v1/jobs/", "/v1/jobs/"),
    _get("/v1/jobs/active", "/v1/jobs/active"),
    # Sandbox configurations.
    _do("POST", "/v1/sandbox-config/local/default", "/v1/sandbox-config/local/default", keep=_set("sandbox")),
    _do("POST", "/v1/sandbox-config/", "/v1/sandbox-config/", body={"config": {"venv_name": "tools"}}),
    _do("POST", "/v1/sandbox-config/local", "/v1/sandbox-config/local", body={"venv_name": "tools"}),
    _get("/v1/sandbox-config/", "/v1/sandbox-config/"),
    _do("PATCH", "/v1/sandbox-config/{sandbox_config_id}", _fmt("/v1/sandbox-config/{sandbox}"),
        body={"config": {"venv_name": "venv"}}),
    _do("POST", "/v1/sandbox-config/local/recreate-venv", "/v1/sandbox-config/local/recreate-venv"),
    _do("POST", "/v1/sandbox-config/{sandbox_config_id}/environment-variable",
        _fmt("/v1/sandbox-config/{sandbox}/environment-variable"), keep=_set("env_var"),
        body={"key": "GREETING", "value": "hello"}),
    _get("/v1/sandbox-config/{sandbox_config_id}/environment-variable",
         _fmt("/v1/sandbox-config/{sandbox}/environment-variable")),
    _do("PATCH", "/v1/sandbox-config/environment-variable/{env_var_id}",
        _fmt("/v1/sandbox-config/environment-variable/{env_var}"), body={"key": "GREETING", "value": "hi"}),
    _do("DELETE", "/v1/sandbox-config/environment-variable/{env_var_id}",
        _fmt("/v1/sandbox-config/environment-variable/{env_var}")),
    _do("DELETE", "/v1/sandbox-config/{sandbox_config_id}", _fmt("/v1/sandbox-config/{sandbox}")),
    # Export, import, summarize, reset and the deletes last.
    _get(A + "/export", _a("/export")),
    _do("POST", A + "/export", _a("/export"), body={}),
    Call("POST /v1/agents/import", lambda ids: ("/v1/agents/import", {
        "files": {"file": ("a.af", ids["export"], "application/json")}})),
    _do("POST", A + "/summarize", _a("/summarize"), body={}),
    _do("PATCH", "/v1/groups/{group_id}/reset-messages", _fmt("/v1/groups/{group2}/reset-messages")),
    _do("PATCH", A + "/reset-messages", _a("/reset-messages"), body={}),
    _do("DELETE", "/v1/tools/{tool_id}", _fmt("/v1/tools/{tool}")),
    _do("DELETE", "/v1/blocks/{block_id}", _fmt("/v1/blocks/{block}")),
    _do("DELETE", A, _fmt("/v1/agents/{agent2}")),
]


def _prepare(http, ids, call):
    """Ids a call needs that no earlier answer of the table gives."""
    if call.op == "GET /v1/mcp-servers/{mcp_server_id}/tools/{tool_id}" or call.op.endswith("/tools/{tool_id}/run"):
        tools = http.get(f"/v1/mcp-servers/{ids['mcp']}/tools").json()
        ids["mcp_tool"] = next(t["id"] for t in tools if t["name"] == "shout")
    if call.op == "POST /v1/providers/check":
        base = [p for p in http.get("/v1/providers/").json() if p["provider_category"] == "base"]
        ids["fake_url"] = next(p["base_url"] for p in base if p["base_url"] and "127.0.0.1" in p["base_url"])
    if call.op == "POST /v1/agents/import":
        ids["export"] = http.get(f"/v1/agents/{ids['agent']}/export").content
    if call.op == "PATCH /v1/groups/{group_id}/reset-messages":
        group = http.post("/v1/groups/", json={"agent_ids": [ids["agent2"]], "description": "reset"}).json()
        ids["group2"] = group["id"]


@pytest.fixture(scope="module")
def served():
    """A server that may reach the MCP test server on loopback, and that server."""
    from test_mcp_and_tools import _serve

    port, mcp = _serve([sys.executable, str(PY_MCP_SERVER), "streamable-http", "{port}"], {}, "the Python MCP server")
    url, stop = start_kelpie({"KELPIE_MCP_ALLOW_INTERNAL_URLS": "true", "KELPIE_ALLOW_INTERNAL_PROVIDER_URLS": "true"})
    try:
        yield url, f"http://127.0.0.1:{port}/mcp"
    finally:
        stop()
        mcp.kill()
        mcp.wait()


@pytest.fixture(scope="module")
def outcomes(served):
    """Runs CALLS once; the outcome of each call."""
    url, mcp_url = served
    ids = {"mcp_url": mcp_url}
    results = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        for call in CALLS:
            if call is _refusals:
                results += _refusals(http, ids)
                continue
            if not isinstance(call, Call):
                call(http, ids)
                continue
            assert call.op in FIXTURE["operations"], f"{call.op} is not an operation of the reference"
            _prepare(http, ids, call)
            path, kwargs = call.request(ids)
            kwargs = dict(kwargs)
            if callable(kwargs.get("params")):
                kwargs["params"] = kwargs["params"](ids)
            method = call.op.split(" ", 1)[0]
            response = http.request(method, path, **kwargs)
            outcome = Outcome(call.op, path, response.status_code, _check(call.op, response.status_code, response))
            outcome.message_types = _message_types(response)
            outcome.empty = response.status_code < 300 and response.content.strip() in (b"[]", b"{}", b"null", b"")
            results.append(outcome)
            if call.keep and response.status_code < 300:
                call.keep(ids, response.json())
    return results


def test_every_answer_validates_against_letta_response_schema(outcomes):
    failures = [f"{o.op} ({o.path}): {p}" for o in outcomes for p in o.problems]
    print(f"\n{len(outcomes)} calls, {len({o.op for o in outcomes})} operations, {len(failures)} problems")
    print("empty answers:", sorted({o.op for o in outcomes if o.empty}))
    seen = set().union(*(o.message_types for o in outcomes))
    print("message types validated:", sorted(seen))
    assert MESSAGE_TYPES_EXPECTED <= seen, f"no answer held {sorted(MESSAGE_TYPES_EXPECTED - seen)}"
    assert not failures, "\n".join(failures)


def test_every_served_operation_is_exercised(outcomes, served):
    url, _ = served
    served_ops = served_operations.served_operations(url)
    reference = {served_operations.normalise(*op.split(" ", 1)): op for op in FIXTURE["operations"]}
    exercised = {o.op for o in outcomes if 200 <= o.status < 300}
    in_both = sorted(reference[op] for op in served_ops if op in reference)
    assert set(NOT_EXERCISED) <= set(in_both), f"exceptions not served: {set(NOT_EXERCISED) - set(in_both)}"
    assert set(_NOT_EXERCISED_PATHS) == set(NOT_EXERCISED)
    missing = [op for op in in_both if op not in exercised and op not in NOT_EXERCISED]
    print(f"\nserved and in the reference: {len(in_both)}; validated: {len(exercised)}; "
          f"excepted: {len(NOT_EXERCISED)}")
    assert not missing, "served but not exercised:\n" + "\n".join(missing)
    excepted_but_exercised = sorted(set(NOT_EXERCISED) & exercised)
    assert not excepted_but_exercised, f"remove from NOT_EXERCISED: {excepted_but_exercised}"


def _field_paths(value, prefix, out):
    """As scripts/vendor_letta_reference.py: `a.b` in objects, `a[].b` in lists' items."""
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            _field_paths(item, path, out)
    elif isinstance(value, list):
        for item in value:
            _field_paths(item, f"{prefix}[]", out)
    return out


_LETTA_ID = re.compile(r"(agent|tool|run)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# The id of Letta's 404 sample is of no agent anywhere: it stays as it is.
_UNKNOWN_AGENT = "agent-00000000-0000-4000-8000-000000000000"


def test_letta_samples_fields_are_the_floor(served, outcomes):
    """Replays Letta's recorded exchanges in their order, with Kelpie's ids for Letta's: the same
    status, and every field Letta answered is in Kelpie's answer."""
    url, _ = served
    ours = {_UNKNOWN_AGENT: _UNKNOWN_AGENT}
    failures = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        for sample in FIXTURE["samples"]:
            path = _LETTA_ID.sub(lambda m: ours[m.group(0)], sample["path"])
            response = http.request(sample["method"], path, json=sample["body"])
            where = f"{sample['operation']} ({sample['path']})"
            if response.status_code != sample["status"]:
                failures.append(f"{where}: status {response.status_code}, Letta {sample['status']}: {response.text[:300]}")
                continue
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                answered = set()
                for event in _events(response.text):
                    _field_paths({event["message_type"]: event}, "", answered)
            else:
                answered = _field_paths(response.json(), "", set())
            missing = sorted(set(sample["fields"]) - answered)
            if missing:
                failures.append(f"{where}: Letta's fields missing: {missing}")
            if sample["made_id"]:
                # Kelpie's id of what this call made stands for Letta's in later calls.
                ours[sample["made_id"]] = response.json()["id"]
    print(f"\n{len(FIXTURE['samples'])} Letta samples replayed, {len(failures)} problems")
    assert not failures, "\n".join(failures)


def test_the_validator_refuses_what_letta_schemas_refuse():
    """The check can fail: answers Kelpie once gave, that Letta's schemas refuse."""
    agent = "GET /v1/agents/{agent_id}"
    schema = FIXTURE["operations"][agent]["schema"]
    [sample] = [s for s in FIXTURE["samples"] if s["operation"] == agent and s["status"] == 200]
    assert "embedding_config.embedding_endpoint_type" in sample["fields"]
    bad_embedding = {"embedding_config": {"embedding_endpoint_type": "kelpie", "embedding_model": "m", "embedding_dim": 8}}
    assert any("embedding_endpoint_type" in e or "embedding_config" in e for e in _schema_errors(schema, bad_embedding))
    assert any("name" in e for e in _schema_errors(schema, {"id": "agent-1"})), "required fields are checked"
    messages = FIXTURE["operations"]["GET /v1/agents/{agent_id}/messages"]["schema"]
    unknown = [{"id": "message-1", "date": "2026-01-01T00:00:00Z", "message_type": "kelpie_message"}]
    assert _schema_errors(messages, unknown) == ["at 0: message_type='kelpie_message' is none of "
                                                 + str(sorted(FIXTURE["components"]["schemas"]["LettaMessageUnion"]
                                                              ["discriminator"]["mapping"]))]
    # The discriminator picks the schema: an assistant message without content names the field.
    no_content = [{"id": "message-1", "date": "2026-01-01T00:00:00Z", "message_type": "assistant_message"}]
    assert _schema_errors(messages, no_content) == ["at 0: 'content' is a required property"]
