"""A stand-in engine for the LocalDeployer tests: serves ``GET /health`` on 127.0.0.1.

``--mode ok`` answers 200 (503 during ``--startup-s``), ``hang`` always answers 503 and
``crash`` writes a traceback-like line and exits with code 3 before listening.
"""

from __future__ import annotations

import argparse
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["ok", "hang", "crash"], default="ok")
    parser.add_argument("--startup-s", type=float, default=0.0)
    parser.add_argument("--model-id", default="")
    parser.add_argument("--model-type", default="")
    args = parser.parse_args()
    if args.mode == "crash":
        sys.stderr.write("RuntimeError: fake engine cannot load its weights\n")
        sys.exit(3)
    ready_at = time.monotonic() + args.startup_s

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            healthy = args.mode == "ok" and time.monotonic() >= ready_at
            self.send_response(200 if healthy and self.path == "/health" else 503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *log_args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", args.port), Handler) as server:
        server.serve_forever()


if __name__ == "__main__":
    main()
