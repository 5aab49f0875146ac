"""Running the dashboard inside a test, and talking to it as a browser would (HTTP, Server-Sent Events).

The server runs in a thread with its own event loop, as ``labctl serve`` runs it
in the foreground, on an ephemeral loopback port.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from labctl.web import serve


@contextmanager
def running_server(db_url: str, **options: Any) -> Iterator[str]:
    """The base URL of a server on an ephemeral port, stopped (and checked stopped) afterwards."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        box["loop"] = asyncio.get_running_loop()
        box["stop"] = stop = asyncio.Event()

        def started(host: str, port: int) -> None:
            box["port"] = port
            ready.set()

        await serve(db_url, "127.0.0.1", 0, stop=stop, started=started, **{"poll_interval": 0.2, **options})

    def thread() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    t = threading.Thread(target=thread, name="labctl-web", daemon=True)
    t.start()
    assert ready.wait(20), "the server did not start"
    if "error" in box:
        raise box["error"]
    try:
        yield f"http://127.0.0.1:{box['port']}"
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        t.join(15)
        assert not t.is_alive(), "the server did not stop"
        assert "error" not in box, box.get("error")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    """Status, content type and body of a GET (errors are answers too)."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=15) as res:
            return res.status, res.headers["Content-Type"], res.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def get_json(url: str) -> Any:
    status, ctype, body = get(url)
    assert status == 200, body
    assert ctype == "application/json"
    return json.loads(body)


class EventStream:
    """A Server-Sent Events client reading ``event: log`` frames (what EventSource does)."""

    def __init__(
        self, base: str, *, last_event_id: int | None = None, after: int | None = None, path: str = "/api/stream"
    ) -> None:
        url = urlsplit(base)
        self.conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=15)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", path + (f"?after={after}" if after is not None else ""), headers=headers)
        self.res = self.conn.getresponse()
        self.status = self.res.status
        if self.status == 200:
            assert self.res.getheader("Content-Type") == "text/event-stream"

    def next(self, event: str = "log") -> tuple[int, Any]:
        """The next ``event``'s id and JSON data (comments and other frames skipped)."""
        fields: dict[str, str] = {}
        while True:
            line = self.res.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line == "":
                if fields.get("event") == event:
                    return int(fields["id"]), json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")

    def close(self) -> None:
        self.conn.close()
