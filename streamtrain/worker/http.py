"""The worker's HTTP endpoints: ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the training loop thread is alive or still starting (a dead loop should be restarted).
``/readyz`` answers 200 when the worker is doing its job: partitions are assigned and either a step
happened recently or nothing is waiting to be trained; otherwise 503 with a one-line reason.
Both are decided by callables passed in, so this module knows nothing about the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["MetricsServer"]

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
"""Returns (ok, reason); the reason is the response body."""


class MetricsServer:
    """A small threaded HTTP server on ``host:port`` (port 0 = any free port; see ``port``)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, *, healthy: Check, ready: Check) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, reason = (healthy if path == "/healthz" else ready)()
                    self._reply(200 if ok else 503, (reason + "\n").encode(), "text/plain; charset=utf-8")
                else:
                    self._reply(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

            def _reply(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes every few seconds: stay quiet
                log.debug("%s " + format, self.address_string(), *args)

        self.registry = registry
        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="streamtrain-http", daemon=True)

    def start(self) -> None:
        """Serve on a background thread; the bound port is ``self.port``."""
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics (also /healthz, /readyz)", self.host, self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
