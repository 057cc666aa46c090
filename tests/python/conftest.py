"""Starts the fake LLM and `kelpie serve` as processes for the client tests.

Binaries come from KELPIE_BIN and KELPIE_FAKE_LLM_BIN (built by .ci/run).
Everything listens on 127.0.0.1 only.
"""

import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

START_TIMEOUT_S = 30


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base_url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"kelpie serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base_url}/v1/health/", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("kelpie serve did not become healthy in time")


def start_kelpie(extra_env=None, log_path=None):
    """The fake LLM and a `kelpie serve` on it: (base_url, stop). With `log_path`, the server's
    log (its standard error) goes to that file instead of the test's output."""
    fake = subprocess.Popen([os.environ["KELPIE_FAKE_LLM_BIN"]], stdout=subprocess.PIPE, text=True)
    fake_url = fake.stdout.readline().strip()
    assert fake_url.startswith("http://127.0.0.1:"), fake_url
    port = _free_port()
    data_dir = tempfile.mkdtemp(prefix="kelpie-pytest-")
    env = dict(os.environ)
    env.pop("KELPIE_API_KEY", None)  # only a test's extra_env gives the server a key
    env.update(OPENAI_BASE_URL=fake_url, KELPIE_DEFAULT_MODEL="openai-proxy/fake-gpt",
               OPENAI_API_KEY="sk-server-secret", **(extra_env or {}))
    log = open(log_path, "wb") if log_path else None
    server = subprocess.Popen(
        [os.environ["KELPIE_BIN"], "serve", "--bind", f"127.0.0.1:{port}", "--data-dir", data_dir],
        env=env, stderr=log,
    )
    base_url = f"http://127.0.0.1:{port}"

    def stop():
        server.terminate()
        server.wait(timeout=30)
        fake.terminate()
        fake.wait(timeout=10)
        if log:
            log.close()

    try:
        _wait_healthy(base_url, server)
    except Exception:
        stop()
        raise
    return base_url, stop


@pytest.fixture(scope="session")
def kelpie_url():
    base_url, stop = start_kelpie()
    try:
        yield base_url
    finally:
        stop()


@pytest.fixture()
def client(kelpie_url):
    from letta_client import Letta

    return Letta(base_url=kelpie_url)
