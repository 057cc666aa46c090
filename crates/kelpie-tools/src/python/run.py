# Runs one tool call. stdin: {"source": ..., "name": ..., "args": {...}}.
# The tool's own prints are captured; the last line of stdout is the
# outcome: {"ok": true, "result": "..."} or {"ok": false, "error": "..."},
# with "stdout" (the tool's prints, clipped).
import contextlib
import io
import json
import sys

STDOUT_CHARS_MAX = 4000


def render(result):
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return str(result)


def main():
    payload = json.loads(sys.stdin.read())
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            namespace = {"__name__": "kelpie_tool"}
            exec(compile(payload["source"], "<tool>", "exec"), namespace)
            function = namespace.get(payload["name"])
            if not callable(function):
                raise NameError(f"the source defines no function {payload['name']}")
            outcome = {"ok": True, "result": render(function(**payload["args"]))}
    except BaseException as err:  # the tool's failure is reported, whatever it is
        outcome = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    outcome["stdout"] = captured.getvalue()[-STDOUT_CHARS_MAX:]
    sys.stdout.write("\n" + json.dumps(outcome) + "\n")


main()
