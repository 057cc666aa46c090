# Reads Python source on stdin and prints one JSON object describing it:
# {"functions": [...top-level function names...], "schema": {...} | null,
#  "schema_error": "..." | null} or {"syntax_error": "..."}.
# The schema is derived from the LAST top-level function: its parameters
# and annotations, and a Google-style docstring ("Args:" section).
# Nothing in the source is executed: only parsed with `ast`.
import ast
import json
import re
import sys

JSON_TYPES = {"int": "integer", "str": "string", "float": "number", "bool": "boolean",
              "list": "array", "List": "array", "tuple": "array", "dict": "object", "Dict": "object"}
SECTIONS_OTHER = ("Returns:", "Return:", "Raises:", "Yields:", "Example:", "Examples:", "Note:")
PARAM_LINE = re.compile(r"^(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")


def annotation_type(node):
    if node is None:
        return None
    if isinstance(node, ast.Name):
        return JSON_TYPES.get(node.id)
    if isinstance(node, ast.Attribute):
        return JSON_TYPES.get(node.attr)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return JSON_TYPES.get(node.value)
    if isinstance(node, ast.Subscript):
        base = node.value
        name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        if name == "Optional":
            return annotation_type(node.slice)
        return JSON_TYPES.get(name)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        left = node.left
        if isinstance(left, ast.Constant) and left.value is None:
            return annotation_type(node.right)
        return annotation_type(left)
    return None


def parse_docstring(doc):
    summary, params, section, current = [], {}, "summary", None
    for line in (doc or "").splitlines():
        text = line.strip()
        if text in ("Args:", "Arguments:", "Parameters:"):
            section, current = "args", None
        elif text in SECTIONS_OTHER:
            section, current = "other", None
        elif section == "summary":
            if text or summary:
                summary.append(text)
        elif section == "args" and text:
            match = PARAM_LINE.match(text)
            if match:
                current = match.group(1).lstrip("*")
                params[current] = {"doc_type": match.group(2), "description": match.group(3).strip()}
            elif current:
                params[current]["description"] = (params[current]["description"] + " " + text).strip()
    paragraph = []
    for text in summary:
        if not text:
            break
        paragraph.append(text)
    return " ".join(paragraph), params


def schema_of(function):
    description, documented = parse_docstring(ast.get_docstring(function))
    args = function.args
    if args.vararg or args.kwarg:
        raise ValueError(f"{function.name} takes *args or **kwargs; a tool needs named parameters")
    positional = args.posonlyargs + args.args
    defaults_from = len(positional) - len(args.defaults)
    properties, required = {}, []
    params = [(a, i >= defaults_from) for i, a in enumerate(positional)]
    params += [(a, d is not None) for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    for arg, has_default in params:
        if arg.arg in ("self", "agent_state"):
            continue
        doc = documented.get(arg.arg, {})
        json_type = annotation_type(arg.annotation) or JSON_TYPES.get((doc.get("doc_type") or "").split(",")[0].strip())
        if json_type is None:
            raise ValueError(
                f"parameter `{arg.arg}` of {function.name} has no supported type; annotate it "
                "with str, int, float, bool, list or dict (or give the type in the docstring)")
        prop = {"type": json_type}
        if doc.get("description"):
            prop["description"] = doc["description"]
        properties[arg.arg] = prop
        if not has_default:
            required.append(arg.arg)
    return {"name": function.name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


def main():
    source = sys.stdin.read()
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        print(json.dumps({"syntax_error": f"line {err.lineno}: {err.msg}"}))
        return
    except ValueError as err:  # a NUL byte: Python 3.11 refuses it before parsing
        print(json.dumps({"syntax_error": str(err)}))
        return
    functions = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    out = {"functions": [f.name for f in functions], "schema": None, "schema_error": None}
    if not functions:
        out["schema_error"] = "source_code defines no top-level function"
    else:
        try:
            out["schema"] = schema_of(functions[-1])
        except ValueError as err:
            out["schema_error"] = str(err)
    print(json.dumps(out))


main()
