"""One bounded HTTP GET for the live providers: a deadline on the whole fetch, a cap on the
answer's size, and redirects that never carry an API key to another origin or downgrade to http.

A socket timeout bounds each read, not their sum, and urllib forwards a request's headers to any
host a redirect names; :func:`get_json` closes both gaps. Every failure is a
:class:`LiveIntensityError` whose message says what went wrong, for the records.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class LiveIntensityError(RuntimeError):
    """A live provider could not give a value (offline, no key, bad answer)."""


#: The most bytes an answer may hold. Both APIs answer in under 2 KiB; anything near this is not an
#: intensity, and reading it whole would hold training's memory hostage to a stranger's server.
MAX_ANSWER_BYTES = 1 << 20
_CHUNK_BYTES = 64 * 1024


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def redirect_refusal(from_url: str, to_url: str, carries_headers: bool) -> str | None:
    """Why a redirect from ``from_url`` to ``to_url`` must not be followed, or ``None`` if it may.

    The headers a provider adds (Electricity Maps' ``auth-token``) are meant for the configured
    origin only, and urllib would forward them to any host a server names, so with such headers a
    redirect must stay on the same scheme, host and port. Without them a redirect may change host,
    but never from https to http (a downgrade lets anyone on the path rewrite the answer).
    """
    try:
        old, new = _origin(from_url), _origin(to_url)
    except ValueError:  # a port that is not a number
        return f"redirect from {from_url} to an invalid URL {to_url!r} refused"
    if new[0] not in ("http", "https"):
        return f"redirect from {from_url} to {to_url} refused (not http or https)"
    if old[0] == "https" and new[0] != "https":
        return f"redirect from {from_url} to {to_url} refused (https to http)"
    if carries_headers and new != old:
        return (
            f"redirect from {from_url} to {to_url} refused (another origin: the API key is sent to "
            f"{old[0]}://{old[1]}:{old[2]} only)"
        )
    return None


class _GuardedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows only the redirects :func:`redirect_refusal` allows; the others fail the fetch."""

    def __init__(self, carries_headers: bool) -> None:
        super().__init__()
        self.carries_headers = carries_headers

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        refusal = redirect_refusal(req.full_url, newurl, self.carries_headers)
        if refusal is not None:
            fp.close()
            raise LiveIntensityError(refusal)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Fetch:
    """One GET whose whole duration (name lookup, connect, headers, body) is bounded by a deadline.

    A socket timeout bounds each read, not their sum: a server sending one byte every second never
    trips it. So the request runs in a worker thread that the caller waits for at most
    ``timeout_s``; at the deadline the caller gives up and shuts the fetch's sockets down, which
    ends the worker's blocked read at once instead of leaving it to drip on.
    """

    def __init__(self, url: str, headers: dict[str, str], timeout_s: float, max_bytes: int) -> None:
        self.url, self.headers, self.timeout_s, self.max_bytes = url, headers, timeout_s, max_bytes
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._abandoned = False
        self._outcome: tuple[bool, Any] = (False, LiveIntensityError(f"no answer from {url}"))

    def run(self) -> Any:
        worker = threading.Thread(target=self._work, name="lg-carbon-fetch", daemon=True)
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            self._abandon()
            raise LiveIntensityError(f"no complete answer from {self.url} within {self.timeout_s:g} s")
        ok, value = self._outcome
        if not ok:
            raise value
        return value

    def _work(self) -> None:
        # Every failure becomes the outcome: a worker thread must never die with a traceback.
        try:
            self._outcome = (True, self._get())
        except LiveIntensityError as err:
            self._outcome = (False, err)
        except Exception as err:
            failure = LiveIntensityError(self._explain(err))
            failure.__cause__ = err
            self._outcome = (False, failure)

    def _get(self) -> Any:
        opener = urllib.request.build_opener(
            _WatchedHTTPHandler(self), _WatchedHTTPSHandler(self), _GuardedRedirects(bool(self.headers))
        )
        request = urllib.request.Request(self.url, headers={"Accept": "application/json", **self.headers})
        with opener.open(request, timeout=self.timeout_s) as response:
            declared = str(response.headers.get("Content-Length", "")).strip()
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise LiveIntensityError(self._too_large(f"{int(declared)} announced"))
            body = bytearray()
            while chunk := response.read(min(_CHUNK_BYTES, self.max_bytes + 1 - len(body))):
                body += chunk
                if len(body) > self.max_bytes:
                    raise LiveIntensityError(self._too_large("sent without a length"))
            # A chunked read of a body shorter than its Content-Length ends quietly (http.client
            # raises IncompleteRead only for a whole read): a cut answer must not pass for complete.
            missing = getattr(response, "length", None)
            if missing:
                raise http.client.IncompleteRead(bytes(body), missing)
        return json.loads(body.decode("utf-8"))

    def _too_large(self, detail: str) -> str:
        return f"answer from {self.url} larger than {self.max_bytes} bytes ({detail}): refused unread"

    def _explain(self, err: Exception) -> str:
        url = self.url
        if isinstance(err, urllib.error.HTTPError):
            err.close()
            return f"HTTP {err.code} from {url}"
        if isinstance(err, http.client.HTTPException):  # IncompleteRead, BadStatusLine, RemoteDisconnected
            return f"broken answer from {url} ({err!r})"
        if isinstance(err, urllib.error.URLError):
            return f"cannot reach {url} ({err.reason})"
        if isinstance(err, TimeoutError):
            return f"no complete answer from {url} within {self.timeout_s:g} s"
        if isinstance(err, OSError):
            return f"connection to {url} failed ({err})"
        if isinstance(err, ValueError):  # JSONDecodeError, UnicodeDecodeError
            return f"not JSON from {url}"
        return f"fetch from {url} failed ({err!r})"

    def watched(self, http_class: type[http.client.HTTPConnection]) -> Any:
        """``http_class``, but each connection's socket is registered for :meth:`_abandon`."""

        def connection(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            conn = http_class(*args, **kwargs)
            connect = conn.connect

            def connect_and_watch() -> None:
                connect()
                self._watch(conn.sock)

            conn.connect = connect_and_watch  # type: ignore[method-assign]
            return conn

        return connection

    def _watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._sockets.append(sock)
            abandoned = self._abandoned
        if abandoned:  # connected after the caller gave up
            _shut(sock)

    def _abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    # The plain socket's shutdown, also for TLS: it wakes a read blocked in another thread, where
    # SSLSocket.shutdown would first drop the TLS state under that read's feet.
    with contextlib.suppress(OSError):  # already closed: nothing left to wake
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, fetch: _Fetch) -> None:
        super().__init__()
        self._fetch = fetch

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._fetch.watched(http_class), req, **kwargs)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, fetch: _Fetch) -> None:
        super().__init__()
        self._fetch = fetch

    def do_open(self, http_class: Any, req: Any, **kwargs: Any) -> Any:
        return super().do_open(self._fetch.watched(http_class), req, **kwargs)


def get_json(
    url: str,
    headers: dict[str, str] | None = None,
    timeout_s: float = 3.0,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> Any:
    """GET ``url`` and parse JSON; :class:`LiveIntensityError` with the reason on any failure.

    ``timeout_s`` bounds the whole fetch, not each read, and an answer over ``max_bytes`` is
    refused unread. ``headers`` (an API key) go to ``url``'s origin only: a redirect elsewhere, or
    from https to http, fails the fetch rather than carry them there.
    """
    return _Fetch(url, dict(headers or {}), timeout_s, max_bytes).run()
