"""Running the dashboard inside a test, and talking to it as a browser would (HTTP, Server-Sent Events).

The server runs in a thread with its own event loop, as ``labctl serve`` runs it
in the foreground, on an ephemeral loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import projections
from events import NewEvent
from events.types import (
    AliasSet,
    ArtifactRegistered,
    EvalRecorded,
    EvalRequested,
    InputRef,
    MetricPoint,
    MetricsLogged,
    OutputLinked,
    PipelineCreated,
    RunPending,
    RunSubmitted,
    StageSpec,
    SweepCreated,
)
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


class DatabaseProxy:
    """A byte-for-byte forwarder in front of a real Postgres: ``stop()`` takes the database away (every
    connection cut, new ones refused), ``start()`` brings it back at the same address."""

    def __init__(self, db_url: str) -> None:
        params = conninfo_to_dict(db_url)
        host, port = str(params.get("host") or "/tmp"), int(params.get("port") or 5432)
        self.unix = host.startswith("/")
        self.target: Any = os.path.join(host, f".s.PGSQL.{port}") if self.unix else (host, port)
        if self.unix:
            self.dir = tempfile.mkdtemp(prefix="labctl-db-proxy-")
            self.address: Any = os.path.join(self.dir, f".s.PGSQL.{port}")
            self.url = make_conninfo(db_url, host=self.dir)
        else:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                self.address = ("127.0.0.1", probe.getsockname()[1])
            self.url = make_conninfo(db_url, host="127.0.0.1", hostaddr="127.0.0.1", port=str(self.address[1]))
        self.family = socket.AF_UNIX if self.unix else socket.AF_INET
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self.listener = socket.socket(self.family)
        if not self.unix:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(self.address)
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self) -> None:
        assert self.listener is not None
        self.listener.close()
        self.listener = None
        if self.unix:
            os.unlink(self.address)
        with self.lock:
            for s in self.sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.sockets.clear()

    def close(self) -> None:
        if self.listener is not None:
            self.stop()
        if self.unix:
            os.rmdir(self.dir)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            upstream = socket.socket(self.family)
            upstream.connect(self.target)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


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


def seed_world(conn: psycopg.Connection[Any]) -> None:
    """A training run with two checkpoints (each evaluated), logged loss, and a run that used one checkpoint."""
    train = RunSubmitted(
        run_id="run_t1",
        name="train",
        user="alice",
        executor="local",
        run_dir="/runs/run_t1",
        recipe={"params": {"lr": 0.1}, "resources": {"mem": "1GB"}},
        tracking_url="javascript:alert(1)",
    )
    other = RunSubmitted(
        run_id="run_t2",
        name="train",
        user="alice",
        executor="local",
        run_dir="/runs/run_t2",
        recipe={"params": {"lr": 0.5}, "resources": {"mem": "1GB"}},
        tracking_url="https://wandb.ai/lab/p/runs/x",
    )
    batch = [NewEvent("run-run_t1", train, 0), NewEvent("run-run_t2", other, 0)]
    for step, run_id in ((1, "run_t1"), (2, "run_t1"), (1, "run_t2")):
        aid = f"artifact_{run_id}_{step}"
        batch += [
            NewEvent(
                f"artifact-{aid}",
                ArtifactRegistered(
                    artifact_id=aid,
                    hash=f"{step}{run_id}".ljust(64, "0"),
                    kind="checkpoint",
                    path=f"/a/{aid}",
                    user="alice",
                    producer_run_id=run_id,
                    metadata={"step": step},
                ),
                0,
            ),
            NewEvent(
                f"run-{run_id}", OutputLinked(run_id=run_id, role="ckpts", artifact_id=aid, path=f"/a/{aid}", step=step)
            ),
            NewEvent(
                f"eval-k{aid}",
                EvalRequested(
                    eval_key=f"k{aid}",
                    policy="every-epoch",
                    checkpoint_artifact_id=aid,
                    eval_recipe_hash="h",
                    run_id=f"run_e{step}{run_id[-1]}",
                    step=step,
                ),
                0,
            ),
            NewEvent(
                f"eval-k{aid}",
                EvalRecorded(
                    eval_key=f"k{aid}",
                    run_id=f"run_e{step}{run_id[-1]}",
                    metrics={"accuracy": 0.5 + step / 10 + (run_id == "run_t2") / 100, "step": step},
                ),
            ),
        ]
    batch.append(
        NewEvent(
            "metrics-run_t1",
            MetricsLogged(
                run_id="run_t1",
                offset=0,
                end=10,
                points=[MetricPoint(step=1, values={"loss": 2.0}), MetricPoint(step=2, values={"loss": 1.0})],
            ),
            0,
        )
    )
    consumer = RunSubmitted(
        run_id="run_u1",
        name="use",
        user="bob",
        executor="local",
        run_dir="/runs/run_u1",
        recipe={},
        inputs=[InputRef(role="model", type="artifact", path="/a/artifact_run_t1_2", artifact_id="artifact_run_t1_2")],
    )
    batch.append(NewEvent("run-run_u1", consumer, 0))
    batch.append(NewEvent("alias-alice/best", AliasSet(user="alice", alias="best", artifact_id="artifact_run_t1_2"), 0))
    projections.record(conn, batch)


def seed_pipeline(conn: psycopg.Connection[Any], pipeline_id: str = "pipeline_demo") -> None:
    """prepare -> train (a 3-point sweep over lr) -> report, every run still pending."""
    train_ids = [f"run_{pipeline_id[-4:]}s{i}" for i in range(3)]
    stages = [
        StageSpec(name="prepare", run_ids=[f"run_{pipeline_id[-4:]}p"]),
        StageSpec(name="train", run_ids=train_ids, parents=["prepare"], sweep_id=f"sweep_{pipeline_id[-4:]}"),
        StageSpec(name="report", run_ids=[f"run_{pipeline_id[-4:]}r"], parents=["train"]),
    ]
    batch = [
        NewEvent(
            f"pipeline-{pipeline_id}",
            PipelineCreated(pipeline_id=pipeline_id, name="demo", user="alice", stages=stages),
            0,
        )
    ]
    sweep = SweepCreated(
        sweep_id=f"sweep_{pipeline_id[-4:]}",
        name="train",
        user="alice",
        arg="lr_index",
        start=0,
        end=2,
        run_ids=train_ids,
        pipeline_id=pipeline_id,
    )
    batch.append(NewEvent(f"sweep-sweep_{pipeline_id[-4:]}", sweep, 0))
    for stage in stages:
        for i, run_id in enumerate(stage.run_ids):
            pending = RunPending(
                run_id=run_id,
                name=stage.name,
                user="alice",
                executor="local",
                run_dir=f"/runs/{run_id}",
                recipe={"args": {"lr_index": str(i)}, "params": {"lr": [0.001, 0.01, 0.1][i]}},
                pipeline_id=pipeline_id,
                stage_name=stage.name,
                parents=stage.parents,
                sweep_id=stage.sweep_id,
                sweep_index=i if stage.sweep_id else None,
            )
            batch.append(NewEvent(f"run-{run_id}", pending, 0))
    projections.record(conn, batch)
