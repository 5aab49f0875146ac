"""Running the dashboard: uvicorn in the foreground, where it may listen, and stopping cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

from labctl.errors import InputError
from labctl.web.app import Web, create_app
from labctl.web.stream import QuietSlowReaders, StreamLimits

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port."""
    host, sep, port = bind.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InputError(f"--bind {bind!r}: expected HOST:PORT, e.g. 127.0.0.1:8765")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """Host headers this server answers to (a page on another name is refused: DNS rebinding)."""
    names = [*LOOPBACK_NAMES, *extra]
    if not is_loopback(host):
        names.append(host)
        if _is_ip(host) and ipaddress.ip_address(host).is_unspecified:
            names += [socket.gethostname(), socket.getfqdn()]
    return list(dict.fromkeys(n for n in names if n))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    url: str,
    host: str,
    port: int,
    *,
    stop: asyncio.Event,
    started: Callable[[str, int], None] | None = None,
    poll_interval: float = 1.0,
    token: str | None = None,
    extra_hosts: list[str] | None = None,
    cluster: dict[str, Any] | None = None,
    max_connections: int = 256,
    limits: StreamLimits | None = None,
) -> None:
    """Serve until ``stop`` is set, then end every stream and close the pool."""
    quiet = QuietSlowReaders()
    logging.getLogger("uvicorn.error").addFilter(quiet)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=512)  # OSError: cannot listen there
    web = Web(url, token=token, cluster=cluster, limits=limits, poll_interval=poll_interval)
    try:
        await web.start()
        app = create_app(web, allowed_hosts=allowed_hosts(host, extra_hosts or []), max_requests=max_connections)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            # the app answers past max_connections (Bound); uvicorn's cap, further out, bounds sockets
            limit_concurrency=2 * max_connections + 16,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
            server_header=False,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        if started is not None:
            bound = sock.getsockname()
            started(str(bound[0]), int(bound[1]))
        waiting = asyncio.create_task(stop.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        web.stop_streams()  # open streams end now, so the shutdown does not wait for them
        server.should_exit = True
        waiting.cancel()
        await task
    finally:
        await web.stop()
        sock.close()
        logging.getLogger("uvicorn.error").removeFilter(quiet)


def run_server(url: str, host: str, port: int, **options: Any) -> None:
    """Serve in the foreground until SIGINT or SIGTERM."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await serve(url, host, port, stop=stop, **options)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    asyncio.run(main())
