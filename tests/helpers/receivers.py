"""Loopback HTTP receivers standing in for a Prometheus Pushgateway or an OTLP/HTTP collector.

In a test's process: ``Receiver()`` keeps every PUT and POST it gets in ``requests``. As a program
(``python tests/helpers/receivers.py FOLDER``), for processes in a test's private network
namespace (a Ray study): it listens on a free loopback port, writes its URL to ``FOLDER/url`` and
each request to ``FOLDER/<n>.json`` (method, path, body as text), until it is killed.
"""

from __future__ import annotations

import gzip
import json
import signal
import sys
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

Points = list[tuple[dict[str, str], float]]  # (labels, value) of each series


class Receiver:
    """A loopback HTTP server that keeps every PUT and POST it gets and answers 200 with ``reply``;
    with ``dump``, each request is also written to ``dump/<n>.json``."""

    def __init__(
        self, reply: bytes = b"", content_type: str = "text/plain", dump: Path | None = None
    ) -> None:
        self.requests: list[SimpleNamespace] = []
        requests, lock = self.requests, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def _keep(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = SimpleNamespace(method=self.command, path=self.path, headers=headers, body=body)
                with lock:
                    requests.append(request)
                    if dump is not None:
                        text = {
                            "method": self.command,
                            "path": self.path,
                            "body": body.decode(errors="replace"),
                        }
                        (dump / f"{len(requests):04d}.json").write_text(json.dumps(text))
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_PUT = do_POST = _keep

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def dumped(folder: Path) -> list[SimpleNamespace]:
    """The requests a :class:`Receiver` run as a program wrote to ``folder``, in arrival order."""
    return [SimpleNamespace(**json.loads(p.read_text())) for p in sorted(folder.glob("[0-9]*.json"))]


def prometheus_samples(text: str) -> dict[str, Points]:
    """Each sample of a Prometheus text exposition (a push's body, a scrape), by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Points] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name].append((s.labels, s.value))
    return out


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    receiver = Receiver(dump=folder)
    (folder / "url.tmp").write_text(receiver.url)
    (folder / "url.tmp").rename(folder / "url")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        signal.pause()
