"""deploy/nginx/edge.conf on its own: it renders to a config nginx accepts, and with TLS
the edge speaks HTTP/2 to clients (a stand-in origin answers behind it)."""

from __future__ import annotations

import http.server
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livecomments.cluster import edge_template, render_edge, self_signed
from tests.cluster.conftest import free_port


class Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def nginx_exe() -> str:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(exe).exists():
        pytest.fail("nginx is not installed: run scripts/setup.sh --system")
    return exe


def prepare(tmp_path: Path) -> Path:
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "cache"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    return tmp_path


def test_rendered_config_is_valid(tmp_path: Path) -> None:
    run = prepare(tmp_path)
    conf = render_edge(
        edge_template(), run_dir=str(run), listen=f"127.0.0.1:{free_port()}",
        rms=["127.0.0.1:1", "127.0.0.1:2"], ingest=["127.0.0.1:3"],
    )
    assert "{{" not in conf and "hash $video$shard_key consistent;" in conf and "proxy_cache_lock on;" in conf
    (run / "edge.conf").write_text(conf)
    check = subprocess.run(
        [nginx_exe(), "-t", "-p", str(run), "-c", str(run / "edge.conf"), "-e", str(run / "error.log")],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(not (shutil.which("openssl") and shutil.which("curl")), reason="needs the openssl and curl commands")
def test_tls_edge_speaks_http2(tmp_path: Path, origin: int) -> None:
    run = prepare(tmp_path)
    port = free_port()
    conf = render_edge(
        edge_template(), run_dir=str(run), listen=f"127.0.0.1:{port} ssl http2",
        rms=[f"127.0.0.1:{origin}"], ingest=[f"127.0.0.1:{origin}"], tls=self_signed(run),
    )
    (run / "edge.conf").write_text(conf)
    proc = subprocess.Popen([nginx_exe(), "-p", str(run), "-c", str(run / "edge.conf"), "-e", str(run / "error.log")])
    try:
        deadline = time.monotonic() + 10
        while True:
            out = subprocess.run(
                ["curl", "-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                 f"https://127.0.0.1:{port}/healthz"],
                capture_output=True, text=True,
            ).stdout
            if out == "2 200" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert out == "2 200", (out, (run / "error.log").read_text()[-2000:])
    finally:
        proc.terminate()
        proc.wait(10)
