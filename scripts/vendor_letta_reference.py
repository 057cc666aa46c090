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

Usage: python3 scripts/vendor_letta_reference.py [REFERENCE_DIR]
REFERENCE_DIR defaults to /work/shared/letta-v1-reference (openapi.json and wire-samples.json).
"""

import json
import pathlib
import re
import sys

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "letta-v1-operations.json"
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


def main() -> None:
    reference = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/letta-v1-reference")
    openapi = json.loads((reference / "openapi.json").read_text())
    samples = json.loads((reference / "wire-samples.json").read_text())
    operations = {}
    for path, ops in openapi["paths"].items():
        if EXCLUDED_PATH.search(path):
            continue
        for method in METHODS:
            if method not in ops:
                continue
            [(status, success)] = [(c, r) for c, r in ops[method]["responses"].items() if c.startswith("2")]
            content = success.get("content", {})
            schema = content.get("application/json", {}).get("schema")
            operations[f"{method.upper()} {path}"] = {
                "operation_id": ops[method].get("operationId"),
                "status": int(status),
                "schema": schema,
                "event_stream": "text/event-stream" in content,
            }
    schemas = openapi["components"]["schemas"]
    needed, todo = set(), set(EXTRA_SCHEMAS)
    refs([op["schema"] for op in operations.values()], todo)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        refs(schemas[name], todo)
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
    print(f"{OUT}: {len(operations)} operations, {len(needed)} schemas, {len(vendored_samples)} samples")


if __name__ == "__main__":
    main()
