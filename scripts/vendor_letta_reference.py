#!/usr/bin/env python3
"""Regenerates tests/fixtures/letta-v1-operations.json from Letta 0.16.8's reference.

The fixture is what tests/python/test_response_schemas.py and scripts/served_operations.py
need from the reference, so that they run on a fresh clone without it:

- `operations`: every operation of the reference outside the `_internal`, admin, voice and
  templates paths, keyed "METHOD /path", with its success status and the schema of its JSON
  success body (null when it has none) and whether it also answers as Server-Sent Events;
- `components.schemas`: the schemas those bodies reach through `$ref`, as the reference has them;
- `samples`: for each recorded exchange of wire-samples.json, the request, the status and the
  field paths of Letta's response (`a.b` for a nested object, `a[].b` for a field of a list's
  items; for a stream, `<message_type>.field` for its events), following the operation's schema:
  the keys of a free-form object (metadata, a tool's JSON schema) are data and left out, as are
  the response values, but for the id of what a POST made (later samples' paths name it).

It also writes crates/kelpie-server/openapi/letta-contract.json, the wire contract that
`GET /openapi.json` serves (crates/kelpie-server/src/routes/openapi.rs): for every operation
above, its path and query parameters (headers only where Kelpie reads them), its request body and
its success response, and the schemas they reach. Only the shapes are kept: names, types,
formats, enums, defaults, bounds, required lists; Letta's descriptions, titles and examples are
left out.

Usage: python3 scripts/vendor_letta_reference.py [REFERENCE_DIR]
REFERENCE_DIR defaults to /work/shared/letta-v1-reference (openapi.json and wire-samples.json).
"""

import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "letta-v1-operations.json"
CONTRACT_OUT = ROOT / "crates" / "kelpie-server" / "openapi" / "letta-contract.json"
# Request headers Kelpie reads (routes/embeddings.rs); Letta's others (user_id, X-Project,
# User-Agent...) are not part of Kelpie's contract.
HEADERS_READ = ("storage-unit",)
# Keywords of a schema that are prose, not shape.
PROSE_KEYWORDS = ("description", "title", "examples", "example")
# Paths left out of the count: Letta's internal, admin, voice and template routes.
EXCLUDED_PATH = re.compile(r"/_internal|/admin/|/voice|templates")
METHODS = ("get", "post", "put", "patch", "delete")
# Schemas the test needs beyond the operations' own: Letta documents its export as a string but
# answers the AgentFileSchema object.
EXTRA_SCHEMAS = ("AgentFileSchema",)


def refs(value, found):
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[-1])
        for item in value.values():
            refs(item, found)
    elif isinstance(value, list):
        for item in value:
            refs(item, found)


def _objects(schema, schemas):
    """The object schemas (with properties) a value of `schema` may match."""
    if "$ref" in schema:
        return _objects(schemas[schema["$ref"].rsplit("/", 1)[-1]], schemas)
    found = [schema] if "properties" in schema else []
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            found += _objects(branch, schemas)
    return found


def _items(schema, schemas):
    """The item schemas of the arrays `schema` may be."""
    if "$ref" in schema:
        return _items(schemas[schema["$ref"].rsplit("/", 1)[-1]], schemas)
    found = [schema["items"]] if "items" in schema else []
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(key, []):
            found += _items(branch, schemas)
    return found


def field_paths(value, schema, schemas, prefix, out):
    """The paths of the fields of `value` that its schema names (`a.b`, `a[].b`). A free-form
    object (a dict of the user's keys, as metadata or a tool's JSON schema) is a field, but its
    keys are not: they are data, not shape."""
    if isinstance(value, dict):
        objects = _objects(schema, schemas) if schema is not None else []
        for key, item in value.items():
            declared = [o["properties"][key] for o in objects if key in o["properties"]]
            if schema is not None and not declared:
                continue
            path = f"{prefix}.{key}" if prefix else key
            out.add(path)
            field_paths(item, declared[0] if declared else None, schemas, path, out)
    elif isinstance(value, list):
        items = _items(schema, schemas) if schema is not None else []
        if schema is not None and not items:
            return
        for item in value:
            field_paths(item, items[0] if items else None, schemas, f"{prefix}[]", out)


def operation_of(method, path, operations):
    """The reference's operation a concrete request calls."""
    path = path.split("?")[0]
    for key, op in operations.items():
        op_method, template = key.split(" ", 1)
        pattern = re.sub(r"\{[^}]*\}", "[^/]+", template.rstrip("/")) + "/?"
        if op_method == method and re.fullmatch(pattern, path):
            return key
    raise KeyError(f"{method} {path} is no operation of the reference")


def reference_operations(openapi):
    """`("METHOD /path", operation)` for every operation outside EXCLUDED_PATH."""
    for path, ops in openapi["paths"].items():
        if EXCLUDED_PATH.search(path):
            continue
        for method in METHODS:
            if method in ops:
                yield f"{method.upper()} {path}", ops[method]


def reached_schemas(value, schemas, extra):
    """The names of the schemas `value` and `extra` reach through `$ref`, at any depth."""
    needed, todo = set(), set(extra)
    refs(value, todo)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        refs(schemas[name], todo)
    return needed


def shape(schema):
    """`schema` without its prose keywords, at every depth. The keys of `properties` are field
    names, kept whatever they are called."""
    if isinstance(schema, list):
        return [shape(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in PROSE_KEYWORDS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: shape(field) for name, field in value.items()}
        elif key in ("default", "enum", "const", "required"):
            out[key] = value
        else:
            out[key] = shape(value)
    return out


def contract(openapi):
    """The served contract: every operation's parameters, body and success response, shapes only."""
    operations = {}
    for key, op in reference_operations(openapi):
        parameters = [
            {field: (shape(value) if field == "schema" else value)
             for field, value in parameter.items() if field in ("name", "in", "required", "schema")}
            for parameter in op.get("parameters", [])
            if parameter["in"] in ("path", "query") or parameter["name"] in HEADERS_READ
        ]
        [(status, success)] = [(c, r) for c, r in op["responses"].items() if c.startswith("2")]
        entry = {
            "operation_id": op.get("operationId"),
            "tags": op.get("tags", []),
            "parameters": parameters,
            "status": status,
            "content": {media: shape(body) for media, body in success.get("content", {}).items()},
        }
        if "requestBody" in op:
            body = op["requestBody"]
            entry["request_body"] = {
                "required": body.get("required", False),
                "content": {media: shape(value) for media, value in body["content"].items()},
            }
        operations[key] = entry
    schemas = openapi["components"]["schemas"]
    needed = reached_schemas(operations, schemas, set(EXTRA_SCHEMAS) | {"HTTPValidationError"})
    return {
        "$comment": "Generated by scripts/vendor_letta_reference.py from Letta 0.16.8's openapi.json "
        "(shapes only); regenerate rather than edit.",
        "operations": operations,
        "schemas": {name: shape(schemas[name]) for name in sorted(needed)},
    }


def main() -> None:
    reference = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/letta-v1-reference")
    openapi = json.loads((reference / "openapi.json").read_text())
    samples = json.loads((reference / "wire-samples.json").read_text())
    operations = {}
    for key, op in reference_operations(openapi):
        [(status, success)] = [(c, r) for c, r in op["responses"].items() if c.startswith("2")]
        content = success.get("content", {})
        schema = content.get("application/json", {}).get("schema")
        operations[key] = {
            "operation_id": op.get("operationId"),
            "status": int(status),
            "schema": schema,
            "event_stream": "text/event-stream" in content,
        }
    schemas = openapi["components"]["schemas"]
    needed = reached_schemas([op["schema"] for op in operations.values()], schemas, EXTRA_SCHEMAS)
    vendored_samples = []
    for sample in samples:
        method, path = sample["request"]["method"], sample["request"]["path"]
        op = operation_of(method, path, operations)
        response = sample["response"]
        fields = set()
        if isinstance(response, str):
            # A stream: the fields of each event, under its message type.
            for line in response.splitlines():
                if line.startswith("data: {"):
                    event = json.loads(line[len("data: "):])
                    field_paths({event["message_type"]: event}, None, schemas, "", fields)
        elif sample["status"] == 200:
            field_paths(response, operations[op]["schema"], schemas, "", fields)
        else:
            field_paths(response, None, schemas, "", fields)
        vendored_samples.append({
            "method": method,
            "path": path,
            "operation": op,
            "status": sample["status"],
            "body": sample["request"]["body"],
            "fields": sorted(fields),
            # The id of what the call made, which later samples' paths name.
            "made_id": response.get("id") if method == "POST" and isinstance(response, dict) else None,
        })
    fixture = {
        "$comment": "Generated by scripts/vendor_letta_reference.py from Letta 0.16.8's openapi.json and "
        "wire-samples.json; regenerate rather than edit.",
        "operations": operations,
        "components": {"schemas": {name: schemas[name] for name in sorted(needed)}},
        "samples": vendored_samples,
    }
    OUT.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    served = contract(openapi)
    CONTRACT_OUT.parent.mkdir(parents=True, exist_ok=True)
    CONTRACT_OUT.write_text(json.dumps(served, indent=1, sort_keys=True) + "\n")
    print(f"{CONTRACT_OUT}: {len(served['operations'])} operations, {len(served['schemas'])} schemas")
    print(f"{OUT}: {len(operations)} operations, {len(needed)} schemas, {len(vendored_samples)} samples")


if __name__ == "__main__":
    main()
