"""Just enough of the Kubernetes API server, on a loopback port, for aif's own clients.

Routes map a path to the JSON object the real API server answers (lists of pods, nodes ...,
as ``kubectl get -o json`` shows them), so the official client parses them into its models as
it would on a cluster. Every request's path and query is kept, and each PATCH's body.
:func:`serving` starts one and points ``KUBECONFIG`` at it.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.config import kube_config


class FakeApiServer(http.server.ThreadingHTTPServer):
    def __init__(self, routes: dict[str, dict[str, Any]]) -> None:
        self.routes = routes
        self.paths: list[str] = []
        self.patches: list[tuple[str, dict[str, Any]]] = []
        super().__init__(("127.0.0.1", 0), _ApiHandler)


class _ApiHandler(http.server.BaseHTTPRequestHandler):
    server: FakeApiServer

    def _answer(self, body: dict[str, Any] | None) -> None:
        if body is None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
        payload = json.dumps(body).encode()
        self.send_response(int(body.get("code", 200)) if body.get("kind") == "Status" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        self._answer(self.server.routes.get(self.path.split("?")[0]))

    def do_PATCH(self) -> None:
        path = self.path.split("?")[0]
        length = int(self.headers.get("Content-Length", 0))
        self.server.patches.append((path, json.loads(self.rfile.read(length))))
        self._answer(self.server.routes.get(path))

    def do_DELETE(self) -> None:
        self.server.paths.append(f"DELETE {self.path}")
        self._answer(self.server.routes.get(self.path.split("?")[0]))

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(
    routes: dict[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FakeApiServer]:
    """A running server, with ``KUBECONFIG`` naming it (and no in-cluster config)."""
    server = FakeApiServer(routes)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "t", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "t", "user": {"token": "t"}}],
                "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
                "current-context": "t",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The client reads KUBECONFIG once, when it is first imported.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
