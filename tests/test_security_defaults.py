"""Safe defaults at the edges: who may join a coordinator off loopback, TLS options that contradict
--insecure, and the visibility of the hub repository --push-to-hub creates (against a local HTTP endpoint)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants

from coordinator.server import ServerOptions
from participant.client import ClientOptions, ParticipantClient
from zk0 import hub
from zk0.errors import Zk0Error

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent
TLS = dict(tls_cert=Path("server.pem"), tls_key=Path("server.key"))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_tls_off_loopback_without_tokens_or_client_ca_is_refused(host):
    with pytest.raises(Zk0Error) as refused:
        ServerOptions(host=host, **TLS).check()
    message = str(refused.value)
    assert "\n" not in message
    assert f"serving on {host} without --tokens or --tls-client-ca admits anyone" in message
    assert "--allow-anonymous" in message


@pytest.mark.parametrize(
    "extra",
    [
        dict(tokens=Path("tokens.txt")),
        dict(tls_client_ca=Path("ca.pem")),
        dict(allow_anonymous=True),
    ],
    ids=["tokens", "client-ca", "allow-anonymous"],
)
def test_tls_off_loopback_with_credentials_or_an_explicit_choice_is_accepted(extra):
    ServerOptions(host="0.0.0.0", **TLS, **extra).check()


def test_tls_on_loopback_needs_no_credentials():
    ServerOptions(host="127.0.0.1", **TLS).check()


def test_public_without_push_is_refused():
    with pytest.raises(Zk0Error, match="--public only says how --push-to-hub"):
        ServerOptions(insecure=True, public=True).check()


@pytest.mark.slow
def test_coordinator_console_script_refuses_anonymous_tls_in_one_line(tmp_path):
    """Through the real console script: one line, exit 2, no run directory."""
    result = subprocess.run(
        [
            str(BIN / "zk0-coordinator"),
            "serve",
            "--config",
            "configs/demo.toml",
            "--run-dir",
            str(tmp_path / "run"),
            "--host",
            "0.0.0.0",
            "--tls-cert",
            str(tmp_path / "server.pem"),
            "--tls-key",
            str(tmp_path / "server.key"),
        ],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zk0-coordinator: error: serving on 0.0.0.0 without --tokens")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "tls",
    [dict(tls_ca=Path("ca.pem")), dict(tls_cert=Path("c.pem"), tls_key=Path("c.key"))],
    ids=["ca", "client-cert"],
)
def test_participant_refuses_insecure_with_tls_files(tls):
    options = ClientOptions(coordinator="127.0.0.1:50051", dataset="demo:p0", name="p0", insecure=True, **tls)
    with pytest.raises(Zk0Error, match="--insecure contradicts --tls-ca/--tls-cert/--tls-key"):
        ParticipantClient(options)


# ------------------------------------------------------------------------------- hub repository visibility


class FakeHubHandler(BaseHTTPRequestHandler):
    """Records every request; answers repo creation like the hub and refuses everything else (so the upload
    fails after the create call, which is all these tests look at)."""

    requests: list[tuple[str, str, dict]] = []
    whoami: dict | None = None  # the account /api/whoami-v2 reports, when a test sets one

    def _record(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        try:
            data = json.loads(body) if body else {}
        except ValueError:
            data = {}
        self.requests.append((self.command, self.path, data))
        return data

    def do_POST(self):  # noqa: N802 - http.server's naming
        data = self._record()
        if self.path == "/api/repos/create":
            host, port = self.server.server_address[:2]
            url = f"http://{host}:{port}/{data.get('organization')}/{data.get('name')}"
            payload = json.dumps({"url": url})
            self._reply(200, payload)
        else:
            self._reply(500, json.dumps({"error": "test endpoint"}))

    def do_GET(self):  # noqa: N802
        self._record()
        if self.path == "/api/whoami-v2" and self.whoami is not None:
            self._reply(200, json.dumps(self.whoami))
        else:
            self._reply(500, json.dumps({"error": "test endpoint"}))

    def _reply(self, status: int, payload: str) -> None:
        data = payload.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        return


@pytest.fixture
def fake_hub(monkeypatch):
    """A local HTTP endpoint standing in for the hub, with huggingface_hub online and a token set."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHubHandler)
    FakeHubHandler.requests = []
    FakeHubHandler.whoami = None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token_not_real")
    yield FakeHubHandler.requests
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("kwargs", "private"), [({}, True), ({"private": False}, False)])
def test_push_creates_a_private_repository_unless_told_public(fake_hub, tmp_path, kwargs, private):
    (tmp_path / "README.md").write_text("card")
    with pytest.raises(Zk0Error):  # the fake endpoint refuses the upload itself
        hub.push_folder(tmp_path, "someone/zk0-model", **kwargs)
    creates = [body for method, path, body in fake_hub if method == "POST" and path == "/api/repos/create"]
    assert len(creates) == 1, fake_hub
    assert creates[0]["name"] == "zk0-model"
    assert creates[0].get("visibility") == ("private" if private else "public")


@pytest.mark.slow
def test_simulate_public_flag_reaches_the_repository_it_creates(fake_hub, demo_root, tmp_path):
    """`zk0 simulate --public` down to the hub call: the run trains, then creates a public repository."""
    from conftest import small_config

    from zk0.simulate import simulate

    FakeHubHandler.whoami = {"name": "someone", "orgs": [], "auth": {"accessToken": {"role": "write"}}}
    config = small_config(
        demo_root,
        "train.local_steps=1",
        "eval.action_error=false",
        'data.participants=["demo:p0", "demo:p1"]',
        "federation.min_participants=2",
        "federation.round_timeout_s=120",
    )
    with pytest.raises(Zk0Error, match="refused the upload"):  # the fake endpoint takes no files
        simulate(
            config,
            tmp_path / "run",
            device="cpu",
            progress=False,
            push_to_hub="someone/zk0-model",
            public=True,
        )
    creates = [body for method, path, body in fake_hub if method == "POST" and path == "/api/repos/create"]
    assert [body.get("visibility") for body in creates] == ["public"]
