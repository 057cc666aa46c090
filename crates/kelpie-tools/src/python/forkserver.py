

# ---- The fork server (appended to run.py; started with the argument `serve`).
#
# A long-lived interpreter in a process sandbox that has done its imports
# once and serves calls, one at a time, on the control socket named by
# KELPIE_CONTROL_SOCKET (the host side: kelpie_sandbox::served). It never
# runs tool code and never sees a call's payload, arguments, environment or
# output: for each call it receives the call's limits and four pipe ends
# (stdin, stdout, stderr, result), forks a supervisor that takes them, and
# waits for it. The supervisor reads the payload, sets the call's limits and
# runs the tool in a child of its own exactly as run.py does for a cold call
# (the outcome framed on a private pipe, sent on the result pipe).
#
# After each call, nothing of it may reach the next one: every process of
# the sandbox but bubblewrap's init and this server is killed (kill(-1)) and
# reaped (this server is their subreaper), and checked gone; /work, /tmp and
# /dev/shm are emptied; System V IPC objects are removed; the user, user
# session and persistent keyrings are cleared; and the sandbox's own writable trees (/ and /dev) must look as
# they did before the first call. Only then does the server answer "clean";
# otherwise it answers "not clean" and exits, and the host destroys the
# sandbox. The server is not dumpable (no ptrace, no /proc/<pid>/mem, fd or
# environ for the tool) and blocks every signal it can; the tool can still
# kill it (it runs as the same user), which ends the sandbox, never a call
# after it.
import ctypes
import gc
import resource
import shutil
import signal
import socket
import struct
import time

# Imported once here so that no call pays for them (the children inherit them).
import ast  # noqa: F401
import json  # noqa: F401
import subprocess  # noqa: F401
import typing  # noqa: F401

CALL_HEADER_BYTES = 16
CALL_FDS_COUNT = 4
SWEEP_MS_MAX = 2_000
PR_SET_DUMPABLE_ON = 1
PR_SET_CHILD_SUBREAPER = 36
OOM_SCORE_ADJ_MAX = 1000
RESULT_FD = 3
WIPED_DIRS = ("/work", "/tmp", "/dev/shm")
WATCHED_TREES = ("/", "/dev")
IPC_RMID = 0
KEYCTL_CLEAR = 7
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
KEY_SPEC_PROCESS_KEYRING = -2
KEYCTL_GET_PERSISTENT = 22
EOPNOTSUPP = 95
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}

libc = ctypes.CDLL(None, use_errno=True)


def checked(status, what):
    if status != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def prctl(option, value):
    checked(libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def snapshot():
    """Every entry of the sandbox's own writable trees but the wiped dirs'
    contents: path, mode, owner and link target. A mount point below a tree
    is recorded, not entered."""
    entries = []
    for top in WATCHED_TREES:
        device = os.lstat(top).st_dev
        stack = [top]
        while stack:
            path = stack.pop()
            status = os.lstat(path)
            target = os.readlink(path) if os.path.islink(path) else None
            entries.append((path, status.st_mode, status.st_uid, status.st_gid, target))
            entered = path == top or (status.st_dev == device and path not in WIPED_DIRS)
            if entered and not os.path.islink(path) and os.path.isdir(path):
                stack.extend(os.path.join(path, name) for name in sorted(os.listdir(path)))
    return sorted(entries)


def sweep():
    """Kills and reaps every process of the sandbox but init and this one;
    whether none is left within SWEEP_MS_MAX."""
    deadline = time.monotonic() + SWEEP_MS_MAX / 1000
    me = os.getpid()
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
        left = [name for name in os.listdir("/proc") if name.isdigit() and int(name) not in (1, me)]
        if not left:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)


def wipe():
    """Empties the wiped dirs; System V IPC objects and the user keyrings go too."""
    for top in WIPED_DIRS:
        for name in os.listdir(top):
            path = os.path.join(top, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for kind in ("shm", "msg", "sem"):
        with open(f"/proc/sysvipc/{kind}") as table:
            ids = [int(line.split()[1]) for line in table.read().splitlines()[1:] if line.strip()]
        for ident in ids:
            if kind == "shm":
                checked(libc.shmctl(ident, IPC_RMID, None), "shmctl")
            elif kind == "msg":
                checked(libc.msgctl(ident, IPC_RMID, None), "msgctl")
            else:
                checked(libc.semctl(ident, 0, IPC_RMID), "semctl")
    keyctl = SYS_KEYCTL[os.uname().machine]
    for keyring in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING):
        checked(libc.syscall(keyctl, KEYCTL_CLEAR, keyring), "keyctl clear")
    # The user's persistent keyring outlives every process (days); linked
    # into this server's process keyring, which no child inherits.
    persistent = libc.syscall(keyctl, KEYCTL_GET_PERSISTENT, -1, KEY_SPEC_PROCESS_KEYRING)
    if persistent >= 0:
        checked(libc.syscall(keyctl, KEYCTL_CLEAR, persistent), "keyctl clear persistent")
    elif ctypes.get_errno() != EOPNOTSUPP:
        checked(-1, "keyctl get_persistent")


def tidy(baseline):
    """Whether the sandbox is as the first call found it."""
    try:
        wipe()
        return snapshot() == baseline
    except OSError:
        return False


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve_call(control, fds, cpu_seconds, file_size_bytes):
    """The supervisor of one call (a child of the server): takes the call's
    pipes, sets its limits, runs it; never returns."""
    control.close()
    stdin, stdout, stderr, result = fds
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2), (result, RESULT_FD)):
        os.dup2(fd, target)
    os.closerange(RESULT_FD + 1, os.sysconf("SC_OPEN_MAX"))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_bytes, file_size_bytes))
    # No POSIX message queues: they outlive processes and cannot be listed here.
    resource.setrlimit(resource.RLIMIT_MSGQUEUE, (0, 0))
    # The memory limit's OOM kill should pick the call, not the server. No
    # tool code runs yet, so the supervisor may be dumpable for this write.
    prctl(PR_SET_DUMPABLE, PR_SET_DUMPABLE_ON)
    with open("/proc/self/oom_score_adj", "w") as adj:
        adj.write(str(OOM_SCORE_ADJ_MAX))
    set_not_dumpable()
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    payload = decode(sys.stdin.buffer.read())
    supervise(payload, lambda data: write_all(RESULT_FD, data), [RESULT_FD])
    os.close(RESULT_FD)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def status_words(status):
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status), os.WTERMSIG(status)
    return os.WEXITSTATUS(status), 0


def serve():
    control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    control.connect(os.environ.pop("KELPIE_CONTROL_SOCKET"))
    set_not_dumpable()
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    baseline = snapshot()
    # The imports are done: keep the collector off the inherited objects,
    # so children copy fewer pages.
    gc.freeze()
    while True:
        header, fds, flags, _ = socket.recv_fds(control, CALL_HEADER_BYTES, CALL_FDS_COUNT)
        if not header:
            return  # the host closed the channel: the sandbox ends
        if len(header) != CALL_HEADER_BYTES or len(fds) != CALL_FDS_COUNT or flags & socket.MSG_CTRUNC:
            raise SystemExit(f"a malformed call: {len(header)} bytes, {len(fds)} descriptors")
        cpu_seconds, file_size_bytes = struct.unpack(">QQ", header)
        child = os.fork()
        if child == 0:
            try:
                serve_call(control, fds, cpu_seconds, file_size_bytes)
            finally:
                os._exit(1)
        for fd in fds:
            os.close(fd)
        _, status = os.waitpid(child, 0)
        clean = sweep() and tidy(baseline)
        exit_code, signal_number = status_words(status)
        control.sendall(struct.pack(">iiI", exit_code, signal_number, 1 if clean else 0))
        if not clean:
            return


if sys.argv[1:] == ["serve"]:
    serve()
