"""GET /openapi.json is typed, and the server keeps to it under schemathesis.

The document (crates/kelpie-server/src/routes/openapi.rs) takes every Letta operation's
parameters, request body and success response from the vendored wire contract. This test checks
that shape, then runs schemathesis (PyPI, pinned by .ci/run) against a running `kelpie serve`
with a key and every check on (no server error, status codes and content types as documented,
responses valid against their schemas, auth not ignored, ...) but the two listed in
FUZZ_EXCLUDED_CHECKS; FUZZ_EXCLUDED_OPERATION_CHECKS names one check left out for one operation.
Each has its reason there and in docs/server.md. A failure fails the test with schemathesis's
report of it. The run takes about 13 minutes on 2 cores (the coverage phase's ~40 000 cases).
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import urllib.request

import httpx

from conftest import start_kelpie

API_KEY = "fuzz-key-0123456789"
# Test cases per operation and phase; the seed makes a run repeatable.
FUZZ_EXAMPLES_PER_OPERATION = 8
FUZZ_SEED = 20261130
FUZZ_TIMEOUT_S = 1500
REQUEST_TIMEOUT_S = 30
MODEL = "openai-proxy/fake-gpt"

# Checks left out of the whole run, with the reason (docs/server.md, "The OpenAPI document").
FUZZ_EXCLUDED_CHECKS = {
    "positive_data_acceptance": (
        "Kelpie refuses, with 4xx and a reason, values Letta's schema cannot express as invalid: empty "
        "names, its named limits, hosts that do not resolve, an e2b sandbox, deleting a built-in tool or a "
        "base provider, summarizing an empty context"),
    "negative_data_rejection": (
        "Kelpie ignores what it does not use: query parameters it has no use for (order_by, include, "
        "Letta's project and template filters) are not parsed, so a malformed one is not refused"),
}
# A check left out for one operation (operationId: (check, reason)).
FUZZ_EXCLUDED_OPERATION_CHECKS = {
    "retrieve_trace_for_run": (
        "not_a_server_error", "answers 501 on purpose: Kelpie keeps no OpenTelemetry traces (docs/runs.md)"),
}


def _get(url, token=None):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


def _refs(value, found):
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            found.add(value["$ref"])
        for item in value.values():
            _refs(item, found)
    elif isinstance(value, list):
        for item in value:
            _refs(item, found)


def test_document_is_typed_and_every_reference_resolves():
    base_url, stop = start_kelpie({"KELPIE_API_KEY": API_KEY})
    try:
        document = _get(f"{base_url}/openapi.json", API_KEY)
    finally:
        stop()
    paths = document["paths"]
    schemas = document["components"]["schemas"]
    create = paths["/v1/agents/"]["post"]
    assert create["operationId"] == "create_agent"
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateAgentRequest"}
    assert create["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AgentState"}
    assert "name" in schemas["CreateAgentRequest"]["properties"]
    listing = {p["name"]: p for p in paths["/v1/agents/"]["get"]["parameters"]}
    assert listing["limit"]["in"] == "query" and listing["after"]["in"] == "query"
    # Kelpie answers its export as the agent-file object, and Step with created_at.
    export = paths["/v1/agents/{agent_id}/export"]["get"]["responses"]["200"]["content"]
    assert export["application/json"]["schema"] == {"$ref": "#/components/schemas/AgentFileSchema"}
    assert schemas["Step"]["properties"]["created_at"]["format"] == "date-time"
    # Errors and auth.
    assert schemas["HTTPError"]["required"] == ["detail", "trace_id"]
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "The server's API key (KELPIE_API_KEY), when it has one"}
    assert document["security"] == [{"bearer": []}]
    assert paths["/v1/health/"]["get"]["security"] == []
    assert "security" not in create
    # Letta's prose is not copied: no description below components.schemas.
    assert "description" not in json.dumps(schemas["CreateAgentRequest"]).replace('"description": {', "")
    # Every reference resolves inside the document.
    found = set()
    _refs(document, found)
    missing = sorted(ref for ref in found if ref.rsplit("/", 1)[-1] not in schemas)
    assert missing == [], missing
    typed = [op for ops in paths.values() for op in ops.values() if op["tags"] != ["kelpie"]]
    assert len(typed) == 226, len(typed)


def _seed_objects(base_url):
    """One of each kind of object the operations' path parameters name, made as a user makes
    them, so that the fuzzer reaches real objects and not only 404s: ({parameter name: id},
    {operationId: its own parameters}). The agent's delete gets an agent of its own: deleting the
    shared one would end the other operations' reach, and cut an export streaming at that moment
    (an export is cut, never silently partial, when its agent goes during it)."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S) as http:
        def post(path, body):
            response = http.post(path, json=body)
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response.json()

        agent = post("/v1/agents/", {"name": "fuzzed", "model": MODEL, "embedding": "kelpie/local-hash-256",
                                     "memory_blocks": [{"label": "human", "value": "Ada"}]})
        doomed = post("/v1/agents/", {"name": "deleted-by-the-fuzzer", "model": MODEL})
        turn = post(f"/v1/agents/{agent['id']}/messages", {"messages": [{"role": "user", "content": "hi"}]})
        block = post("/v1/blocks/", {"label": "notes", "value": "shared"})
        tool = post("/v1/tools/", {"source_code": "def shout(text: str) -> str:\n"
                                   "    \"\"\"Shout.\n\n    Args:\n        text: what to shout\n    \"\"\"\n"
                                   "    return text.upper()\n"})
        folder = post("/v1/folders/", {"name": "fuzz-folder", "embedding": "kelpie/local-hash-256"})
        conversation = post(f"/v1/conversations/?agent_id={agent['id']}", {})
        group = post("/v1/groups/", {"agent_ids": [agent["id"]], "description": "fuzzed group"})
        identity = post("/v1/identities/", {"identifier_key": "fuzz-user", "name": "Fuzz", "identity_type": "user"})
        archive = post("/v1/archives/", {"name": "fuzz-archive"})
        config = post("/v1/sandbox-config/local", {})
        run_id = turn["messages"][0].get("run_id") or http.get("/v1/runs/").json()[0]["id"]
        steps = http.get(f"/v1/runs/{run_id}/steps").json()
    return {
        "agent_id": agent["id"], "block_id": block["id"], "tool_id": tool["id"], "tool_name": "shout",
        "folder_id": folder["id"], "source_id": folder["id"], "conversation_id": conversation["id"],
        "group_id": group["id"], "identity_id": identity["id"], "archive_id": archive["id"],
        "sandbox_config_id": config["id"], "run_id": run_id, "step_id": steps[0]["id"] if steps else "",
        "message_id": turn["messages"][0]["id"], "block_label": "human",
    }, {"delete_agent": {"agent_id": doomed["id"]}}


def _config(parameters, operation_parameters):
    """schemathesis.toml: the seeded ids, and the checks left out (every other check is on, as
    schemathesis has them by default; naming them on the command line would override the
    per-operation exceptions)."""
    lines = ["[checks]"]
    lines += [f"{check}.enabled = false" for check in FUZZ_EXCLUDED_CHECKS]
    lines += ["", "[parameters]"]
    lines += [f"{name} = {json.dumps(value)}" for name, value in parameters.items() if value]
    for operation_id, values in operation_parameters.items():
        table = ", ".join(f"{name} = {json.dumps(value)}" for name, value in values.items())
        lines += ["", "[[operations]]", f"include-operation-id = {json.dumps(operation_id)}",
                  f"parameters = {{ {table} }}"]
    for operation_id, (check, _reason) in FUZZ_EXCLUDED_OPERATION_CHECKS.items():
        lines += ["", "[[operations]]", f"include-operation-id = {json.dumps(operation_id)}",
                  f"checks.{check}.enabled = false"]
    return "\n".join(lines) + "\n"


def _server_trouble(log_path):
    """The lines of the server's log that say something went wrong (warnings, errors, panics),
    without terminal colours: what a failure report needs to name the cause on the server's side."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", pathlib.Path(log_path).read_text(errors="replace"))
    return [line for line in text.splitlines() if re.search(r" WARN | ERROR |panicked", line)]


def test_schemathesis_finds_no_failure(tmp_path):
    server_log = tmp_path / "server.log"
    base_url, stop = start_kelpie({"KELPIE_API_KEY": API_KEY}, log_path=server_log)
    try:
        parameters, operation_parameters = _seed_objects(base_url)
        config = tmp_path / "schemathesis.toml"
        config.write_text(_config(parameters, operation_parameters))
        command = [
            sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
            "run", f"{base_url}/openapi.json",
            "--url", base_url,
            "--header", f"Authorization: Bearer {API_KEY}",
            "--max-examples", str(FUZZ_EXAMPLES_PER_OPERATION),
            "--seed", str(FUZZ_SEED),
            "--workers", "2",
            "--request-timeout", str(REQUEST_TIMEOUT_S),
            "--phases", "examples,coverage,fuzzing",
            "--report", "junit", "--report-dir", str(tmp_path / "report"),
        ]
        run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S,
                             env={**os.environ, "NO_COLOR": "1"})
    finally:
        stop()
    report = run.stdout + run.stderr
    pathlib.Path(os.environ.get("KELPIE_FUZZ_REPORT", tmp_path / "schemathesis.txt")).write_text(report)
    trouble = "\n".join(_server_trouble(server_log)[-50:])
    assert run.returncode == 0, report[-20000:] + "\n\nThe server's warnings and errors:\n" + trouble
    assert re.search(r"Tested: 23\d", report), report[-4000:]
    # Every generated case passed every check (schemathesis's warnings, such as operations that
    # answered 404 to made-up ids, are not failures).
    counts = re.search(r"(\d+) generated, (\d+) passed", report)
    assert counts and counts.group(1) == counts.group(2) and int(counts.group(1)) > 10_000, report[-4000:]
    assert "failures" not in report.splitlines()[-1], report[-4000:]
