# Runs one tool call, or one piece of code for the code interpreter, inside
# a sandbox. stdin: {"source", "name", "args", "paths", "env"} for a tool, or
# {"code", "paths", "env"} for code (its result is the value of a last expression
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
#
# Every call starts an interpreter, so the runner imports as little as it
# can: the C halves of json (`_json`) and ctypes (`_ctypes`) instead of the
# modules, which pull in `re`, `enum` and more (about half the CPU time of a
# call); `json` is imported only to render a result that is a container.
import _json
import _socket
import os
import sys

PR_SET_DUMPABLE = 4
OUTCOME_BYTES_MAX = 16 * 1024 * 1024


class Decoding:
    """What `_json.make_scanner` reads from a decoder: strict JSON, plain types."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = {}

    @staticmethod
    def parse_constant(name):
        raise ValueError(f"{name} is not JSON")


scan = _json.make_scanner(Decoding())
quote = _json.encode_basestring_ascii


def decode(text):
    """The JSON value that is all of `text` (str or bytes); ValueError if none."""
    if isinstance(text, bytes):
        text = text.decode()
    try:
        value, end = scan(text, 0)
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip():
        raise ValueError("extra data after JSON")
    return value


def encode_outcome(outcome):
    """`{"ok": true, "result": ...}` or `{"ok": false, "error": ...}` as bytes."""
    if outcome["ok"]:
        return f'{{"ok": true, "result": {quote(outcome["result"])}}}'.encode()
    return f'{{"ok": false, "error": {quote(outcome["error"])}}}'.encode()


def render(result):
    if isinstance(result, str):
        return result
    if result is None:
        return "null"
    if result is True or result is False:
        return "true" if result else "false"
    if type(result) is int:
        return str(result)
    import json  # containers and floats: the full encoder

    try:
        return json.dumps(result)
    except (TypeError, ValueError):
        return str(result)


def set_not_dumpable():
    """prctl(PR_SET_DUMPABLE, 0): /proc/<pid>/fd of this process becomes
    root's, out of the tool's reach."""
    try:
        import _ctypes

        prctl = _ctypes.dlsym(_ctypes.dlopen(None), "prctl")
        status = _ctypes.call_function(prctl, (PR_SET_DUMPABLE, 0, 0, 0, 0))
    except (ImportError, AttributeError):  # an interpreter without these internals
        import ctypes

        status = ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    if status != 0:
        raise OSError("prctl(PR_SET_DUMPABLE, 0) failed")


def call_tool(payload):
    try:
        os.environ.update(payload.get("env", {}))
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
        os.environ.update(payload.get("env", {}))
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


def well_formed(outcome):
    if not isinstance(outcome, dict) or not isinstance(outcome.get("ok"), bool):
        return False
    return isinstance(outcome.get("result" if outcome["ok"] else "error"), str)


def describe(status):
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)}"
    return f"exited with code {os.WEXITSTATUS(status)}"


def supervise(payload, send, private):
    """Runs the call in a forked child, which first closes the descriptors
    in `private` (the result channel), and sends its outcome with `send`."""
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    child = os.fork()
    if child == 0:
        for fd in private:
            os.close(fd)
        os.close(read_end)
        run = run_code if "code" in payload else call_tool
        outcome = encode_outcome(run(payload))
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
        outcome = decode(last) if len(reported) <= OUTCOME_BYTES_MAX else None
    except ValueError:
        outcome = None
    if not well_formed(outcome):
        outcome = {"ok": False, "error": f"the tool {describe(status)} without returning"}
    send(encode_outcome(outcome))


def main():
    channel = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    channel.connect(os.environ["KELPIE_RESULT_SOCKET"])
    set_not_dumpable()
    payload = decode(sys.stdin.buffer.read())
    supervise(payload, channel.sendall, [channel.fileno()])
    channel.close()


# `serve` starts the fork server (forkserver.py, appended to this script).
if sys.argv[1:] != ["serve"]:
    main()
