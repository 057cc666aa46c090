# Runs one tool call, or one piece of code for the code interpreter, inside
# a sandbox. stdin: {"source", "name", "args", "paths"} for a tool, or
# {"code", "paths"} for code (its result is the value of a last expression
# statement, if there is one). The outcome goes to the result socket named
# by KELPIE_RESULT_SOCKET, never to stdout: {"ok": true, "result": "..."} or
# {"ok": false, "error": "..."}.
#
# The runner connects to the socket before any tool code runs (the server
# accepts only that first connection), then runs the tool in a forked child
# that has no access to the socket: the child closes its copy, and the
# runner makes itself non-dumpable so the child cannot reach the runner's
# descriptors through /proc. Whatever the tool prints stays its stdout and
# stderr; it cannot forge the outcome.
import _socket
import ctypes
import json
import os
import sys

PR_SET_DUMPABLE = 4
OUTCOME_BYTES_MAX = 16 * 1024 * 1024


def render(result):
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return str(result)


def call_tool(payload):
    try:
        sys.path[:0] = payload.get("paths", [])
        namespace = {"__name__": "kelpie_tool"}
        exec(compile(payload["source"], "<tool>", "exec"), namespace)
        function = namespace.get(payload["name"])
        if not callable(function):
            raise NameError(f"the source defines no function {payload['name']}")
        return {"ok": True, "result": render(function(**payload["args"]))}
    except BaseException as err:  # the tool's failure is reported, whatever it is
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}


def run_code(payload):
    import ast  # only the code interpreter needs it

    try:
        sys.path[:0] = payload.get("paths", [])
        tree = ast.parse(payload["code"], "<code>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        namespace = {"__name__": "__main__"}
        exec(compile(tree, "<code>", "exec"), namespace)
        if last is None:
            return {"ok": True, "result": ""}
        value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
        return {"ok": True, "result": "" if value is None else repr(value)}
    except BaseException as err:  # the code's failure is reported, whatever it is
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}


def describe(status):
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def main():
    payload = json.loads(sys.stdin.buffer.read())
    channel = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    channel.connect(os.environ["KELPIE_RESULT_SOCKET"])
    ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        channel.close()
        os.close(read_end)
        run = run_code if "code" in payload else call_tool
        outcome = json.dumps(run(payload)).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        # Framed as the last line: whatever the tool itself wrote into this
        # pipe before (it can reach its own descriptors) cannot displace it.
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(b"\n" + outcome + b"\n")
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reported = pipe.read(OUTCOME_BYTES_MAX + 1)
    _, status = os.waitpid(child, 0)
    last = reported.strip().rsplit(b"\n", 1)[-1] if reported.strip() else b""
    try:
        outcome = json.loads(last) if len(reported) <= OUTCOME_BYTES_MAX else None
    except ValueError:
        outcome = None
    if not isinstance(outcome, dict) or not isinstance(outcome.get("ok"), bool):
        outcome = {"ok": False, "error": f"the tool {describe(status)} without returning"}
    channel.sendall(json.dumps(outcome).encode())
    channel.close()


main()
