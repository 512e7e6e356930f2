"""A local HTTP server on loopback answering in the Carbon Intensity API's and Electricity Maps'
documented formats, so that the real providers (urllib, timeouts, parsing) are tested offline."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class GridServer:
    """``values``: the intensities it answers, one per request (the last repeats).

    ``requests`` and ``headers`` record each request's path and headers (lower-case names), so a
    test can see what reached this origin. ``misbehave``, when set, gets each request's handler
    first and may write whatever it likes (a redirect, a slow drip, a cut body); it returns whether
    it answered, else the API answers as usual.
    """

    def __init__(self, values: list[float], key: str = "secret") -> None:
        self.values = values
        self.key = key
        self.requests: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.broken = False  # answer 503 while True
        self.misbehave: Callable[[BaseHTTPRequestHandler], bool] | None = None

    def next_value(self) -> float:
        return self.values[min(len(self.requests) - 1, len(self.values) - 1)]

    def answer(self, path: str, headers: Any) -> tuple[int, Any]:
        if self.broken:
            return 503, {"error": "down"}
        value = self.next_value()
        period = {"from": "2026-11-27T12:00Z", "to": "2026-11-27T12:30Z"}
        if path == "/intensity":  # national: {"data": [{from, to, intensity: {forecast, actual, index}}]}
            return 200, {
                "data": [{**period, "intensity": {"forecast": value + 5, "actual": value, "index": "low"}}]
            }
        if path.startswith("/regional/regionid/"):
            region = int(path.rsplit("/", 1)[1])
            intensity = {"forecast": value, "index": "low"}
            return 200, {"data": [{"regionid": region, "dnoregion": "UKPN London", "shortname": "London",
                                   "data": [{**period, "intensity": intensity, "generationmix": []}]}]}  # fmt: skip
        if path.startswith("/v3/carbon-intensity/latest"):
            if headers.get("auth-token") != self.key:
                return 401, {"error": "invalid token"}
            zone = path.split("zone=", 1)[1]
            return 200, {"zone": zone, "carbonIntensity": value, "datetime": "2026-11-27T12:00:00.000Z",
                         "updatedAt": "2026-11-27T12:05:00.000Z", "emissionFactorType": "lifecycle",
                         "isEstimated": False, "estimationMethod": None}  # fmt: skip
        return 404, {"error": "not found"}


@contextmanager
def grid_server(values: list[float], key: str = "secret") -> Iterator[tuple[GridServer, str]]:
    """Yields the server's state and its base URL (``http://127.0.0.1:<port>``)."""
    state = GridServer(values, key)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            if state.misbehave is not None and state.misbehave(self):
                return
            status, body = state.answer(self.path, self.headers)
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
