"""Live carbon intensity against hostile servers on loopback: a redirect to another origin, a slow
drip, a huge body, a cut answer and a garbled status line. The API key never leaves the origin it
was configured for, a fetch never outlasts its timeout or reads more than 1 MiB, and when the table
stands in, the records say why; a failing server is asked once per refresh interval, not per window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
from helpers.grid_server import grid_server
from lightning import Trainer

from lightning_green import EnergyMonitor
from lightning_green.carbon import ElectricityMapsIntensity, UKCarbonIntensity, lookup
from lightning_green.carbon.fetch import MAX_ANSWER_BYTES, redirect_refusal
from lightning_green.data import DigitsDataModule
from lightning_green.models import LitClassifier, SimpleCNN
from lightning_green.records import read_windows

Misbehaviour = Callable[[BaseHTTPRequestHandler], bool]
NATIONAL = (
    b'{"data": [{"from": "2026-11-27T12:00Z", "to": "2026-11-27T12:30Z", '
    b'"intensity": {"forecast": 105, "actual": 100, "index": "low"}}]}'
)


def redirect(location: str, only_under: str = "") -> Misbehaviour:
    """A 302 to ``location`` + the request's path below ``only_under`` (other paths: the API)."""

    def answer(handler: BaseHTTPRequestHandler) -> bool:
        if not handler.path.startswith(only_under):
            return False
        handler.send_response(302)
        handler.send_header("Location", location + handler.path[len(only_under) :])
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return True

    return answer


def raw(data: bytes, every_s: float = 0.0, done: threading.Event | None = None) -> Misbehaviour:
    """Write ``data`` as it is (no status line of the server's own), byte by byte every ``every_s``
    when given, then hang up; ``done`` is set once the client has gone or all is sent."""

    def answer(handler: BaseHTTPRequestHandler) -> bool:
        handler.close_connection = True
        try:
            if every_s:
                for i in range(len(data)):
                    handler.wfile.write(data[i : i + 1])
                    handler.wfile.flush()
                    time.sleep(every_s)
            else:
                handler.wfile.write(data)
        except OSError:  # the client hung up: what a bounded fetch should do
            pass
        finally:
            if done is not None:
                done.set()
        return True

    return answer


def flood(total: int, declare: bool, sent: list[int]) -> Misbehaviour:
    """A 200 whose body is ``total`` bytes of filler. Declared (a Content-Length saying so), it
    sends none of it and holds the line for 3 s: only a client reading it whole would wait. Else it
    streams until the client hangs up; ``sent`` gets the bytes handed over by then."""

    def answer(handler: BaseHTTPRequestHandler) -> bool:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        if declare:
            handler.send_header("Content-Length", str(total))
        handler.end_headers()
        if declare:
            time.sleep(3.0)
            return True
        chunk, count = b" " * 65536, 0
        try:
            while count < total:
                handler.wfile.write(chunk)
                count += len(chunk)
        except OSError:
            pass
        sent.append(count)
        return True

    return answer


def test_the_api_key_never_follows_a_redirect_to_another_origin():
    with (
        grid_server([250.0], key="k1") as (elsewhere, elsewhere_url),
        grid_server([250.0], key="k1") as (configured, url),
    ):
        configured.misbehave = redirect(elsewhere_url + "/v3", only_under="/v3")  # another port
        provider = ElectricityMapsIntensity("DE", api_key="k1", base_url=f"{url}/v3")
        with pytest.warns(UserWarning, match=r"refused \(another origin"):
            provider.start()
        value = provider.current()
        assert value.g_per_kwh == lookup("DE").g_per_kwh and "another origin" in value.method
        assert configured.headers[0]["auth-token"] == "k1"  # sent where the user pointed it
        assert elsewhere.requests == [] and not any("auth-token" in h for h in elsewhere.headers)

        # within the origin a redirect is followed, key and all
        configured.misbehave = redirect(f"{url}/v3", only_under="/moved")
        moved = ElectricityMapsIntensity("DE", api_key="k1", base_url=f"{url}/moved")
        moved.start()
        assert moved.current().method == "live:electricitymaps" and moved.current().g_per_kwh == 250.0
        assert configured.requests[-2].startswith("/moved/") and configured.headers[-1]["auth-token"] == "k1"

        # a provider without a key may follow a public API to another host
        configured.misbehave = redirect(elsewhere_url)
        uk = UKCarbonIntensity(base_url=url)
        uk.start()
        assert uk.current().method == "live:uk-carbon-intensity" and elsewhere.requests == ["/intensity"]


def test_redirects_that_would_leak_or_downgrade_are_refused():
    # same origin: scheme, host (any case) and port (the default one written or not)
    assert redirect_refusal("https://api.example.com/v3/a", "https://API.example.com:443/v3/b", True) is None
    assert redirect_refusal("http://127.0.0.1:8080/a", "http://127.0.0.1:8080/b", True) is None
    for elsewhere in (
        "https://evil.example/v3",
        "https://api.example.com:8443/v3",
        "http://api.example.com/v3",
    ):
        assert "another origin" in redirect_refusal("https://api.example.com/v3", elsewhere, True) or (
            "https to http" in redirect_refusal("https://api.example.com/v3", elsewhere, True)
        )
    # without a key, another host is fine, a downgrade or another scheme never
    assert redirect_refusal("https://api.example.com/a", "https://cdn.example.net/a", False) is None
    assert "https to http" in redirect_refusal("https://api.example.com/a", "http://api.example.com/a", False)
    assert "not http" in redirect_refusal("https://api.example.com/a", "file:///etc/passwd", False)
    assert "invalid URL" in redirect_refusal("https://api.example.com/a", "https://api.example.com:x/", False)


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_slow_drip_costs_at_most_the_timeout(where: str):
    data = NATIONAL
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data)
    hung_up = threading.Event()
    with grid_server([100.0]) as (server, url):
        if where == "body":  # the head at once, then one byte every 0.5 s
            server.misbehave = _then(raw(head), raw(data, every_s=0.5, done=hung_up))
        else:  # even the status line one byte at a time
            server.misbehave = raw(head + data, every_s=0.5, done=hung_up)
        provider = UKCarbonIntensity(base_url=url, timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.warns(UserWarning, match=r"no complete answer from .* within 1 s"):
            provider.start()
        assert time.monotonic() - t0 < 2.0  # a 3 s timeout used to mean minutes here
        assert "within 1 s" in provider.current().method and provider.current().place == "GB"
        # the fetch hung up at its deadline rather than leave a thread reading on
        assert hung_up.wait(3.0) and len(server.requests) == 1


def _then(first: Misbehaviour, second: Misbehaviour) -> Misbehaviour:
    def answer(handler: BaseHTTPRequestHandler) -> bool:
        first(handler)
        return second(handler)

    return answer


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "until-close"])
def test_a_huge_answer_is_refused_without_reading_it_whole(declare: bool):
    sent: list[int] = []
    total = 10 * 1024 * 1024 if declare else 100 * 1024 * 1024
    with grid_server([100.0]) as (server, url):
        server.misbehave = flood(total, declare, sent)
        provider = UKCarbonIntensity(base_url=url, timeout_s=5.0)
        t0 = time.monotonic()
        with pytest.warns(UserWarning, match=f"larger than {MAX_ANSWER_BYTES} bytes"):
            provider.start()
        # refused on the announcement (the body never came), or after 1 MiB of the stream
        assert time.monotonic() - t0 < 2.0
        assert ("announced" if declare else "without a length") in provider.current().method
        if not declare:  # the client hung up early: most of the body could not be handed over
            deadline = time.monotonic() + 3.0
            while not sent and time.monotonic() < deadline:
                time.sleep(0.02)
            assert sent and sent[0] < total // 2  # what was sent is socket buffers, not read


BROKEN = {
    # Content-Length promises 100 bytes more than come: http.client's IncompleteRead
    "IncompleteRead": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(NATIONAL) + 100, NATIONAL),
    "BadStatusLine": b"HTTP/1.1 two hundred OK\r\n\r\n",
    "RemoteDisconnected": b"",  # hangs up without a word
}


@pytest.mark.parametrize("failure", list(BROKEN))
def test_a_broken_answer_falls_back_once_and_says_why(failure: str, monkeypatch: pytest.MonkeyPatch):
    died: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    with grid_server([100.0]) as (server, url):
        server.misbehave = raw(BROKEN[failure])
        provider = UKCarbonIntensity(base_url=url, timeout_s=2.0, refresh_s=0.5)
        with pytest.warns(UserWarning, match=failure) as warned:
            provider.start()
            for _ in range(200):  # every window close asks for the value in force
                value = provider.current()
        assert len(warned) == 1 and len(server.requests) == 1  # no new fetch per window
        assert (
            value.method.startswith("table (live unavailable: broken answer from") and failure in value.method
        )
        time.sleep(0.6)  # stale after refresh_s: one background refetch, not one per call
        for _ in range(50):
            provider.current()
        provider.close()
        assert len(server.requests) == 2 and provider.failures == 2
    assert died == []  # no fetch thread ended in a traceback


def test_a_fit_against_a_broken_server_records_why_and_asks_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    died: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    with grid_server([100.0]) as (server, url):
        server.misbehave = raw(BROKEN["IncompleteRead"])
        monitor = EnergyMonitor(
            output_dir=tmp_path, carbon_intensity=UKCarbonIntensity(base_url=url), baseline_s=0
        )
        trainer = Trainer(max_epochs=2, callbacks=[monitor], logger=False, enable_progress_bar=False,
                          enable_checkpointing=False, enable_model_summary=False, limit_train_batches=2,
                          limit_val_batches=1, num_sanity_val_steps=0)  # fmt: skip
        with pytest.warns(UserWarning, match="IncompleteRead") as warned:
            trainer.fit(LitClassifier(SimpleCNN(conv_layers=1)), datamodule=DigitsDataModule())
        assert len(server.requests) == 1  # the 15-minute refresh holds after a failure
    windows = read_windows(tmp_path)
    assert len(windows) >= 4
    for w in windows:
        assert w.carbon["g_per_kwh"] == lookup("GB").g_per_kwh
        assert (
            "live unavailable: broken answer" in w.carbon["method"] and "IncompleteRead" in w.carbon["method"]
        )
    assert sum("live carbon intensity" in str(w.message) for w in warned) == 1
    assert died == [] and "Traceback" not in capfd.readouterr().err
