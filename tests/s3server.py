"""A real S3 API for the tests and the object-storage benchmark: moto's standalone server on 127.0.0.1, behind a
small proxy of ours that injects what real stores and networks do (``Faults``): latency, a bandwidth cap,
bursts of 503 SlowDown, bodies cut short, stalls, a flipped byte. Both run in threads of the calling process and
end with it; the proxy counts the bytes it serves to ranged GETs (the shards a client fetched)."""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


FAULTS = ("slow_down", "cut", "stall", "flip")


@dataclass
class Faults:
    """What the proxy does to the next requests. Counters count down as they are spent; ``every``: apply the
    503/cut/flip faults to one GET in every ``every`` (0: to the next ones until their counters run out)."""

    latency: float = 0.0  # seconds before each response
    bandwidth: float = 0.0  # bytes per second over all connections (0: no cap)
    slow_down: int = 0  # answer 503 SlowDown to this many GETs
    cut: int = 0  # send this many GET bodies cut in half (the connection then closes)
    stall: int = 0  # stall this many GET bodies for ``stall_seconds`` (or until ``resume`` is set) after half of it
    stall_seconds: float = 5.0
    resume: threading.Event = field(default_factory=threading.Event, repr=False)  # ends the stalls now
    flip: int = 0  # flip one byte of this many ranged GET bodies
    every: int = 0  # with it, the faults take turns: one in every ``every`` GETs, in the order of FAULTS
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    served: int = 0  # bytes sent to ranged GETs (the shards; manifests, indexes and listings are whole GETs)
    gets: int = 0
    injected: dict[str, int] = field(default_factory=dict)
    stalling: set[tuple[str, str]] = field(default_factory=set)  # (path, Range) of the GETs being stalled now
    asked_while_stalled: int = 0  # GETs of a (path, Range) that was being stalled when they came (hedged requests)

    def take(self, name: str) -> bool:
        with self.lock:
            if getattr(self, name) <= 0:
                return False
            if self.every and (self.gets % self.every or FAULTS[self.gets // self.every % len(FAULTS)] != name):
                return False
            setattr(self, name, getattr(self, name) - 1)
            self.injected[name] = self.injected.get(name, 0) + 1
            return True


class _Bucket:
    """A token bucket shared by every connection: the bandwidth cap."""

    def __init__(self, faults: Faults) -> None:
        self.faults, self.lock, self.next_free = faults, threading.Lock(), time.monotonic()

    def spend(self, size: int) -> None:
        rate = self.faults.bandwidth
        if rate <= 0:
            return
        with self.lock:
            start = max(self.next_free, time.monotonic())
            self.next_free = start + size / rate
        time.sleep(max(0.0, self.next_free - time.monotonic()))


def _handler(upstream: tuple[str, int], faults: Faults, bucket: _Bucket) -> type:
    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _forward(self) -> None:
            request = (self.path, self.headers.get("Range") or "")
            if self.command == "GET":
                with faults.lock:
                    faults.asked_while_stalled += request in faults.stalling
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            connection = http.client.HTTPConnection(*upstream, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            connection.close()
            get = self.command == "GET" and response.status in (200, 206)
            if faults.latency:
                time.sleep(faults.latency)
            if get:
                with faults.lock:
                    faults.gets += 1
                if faults.take("slow_down"):
                    self._send(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                if response.status == 206 and len(data) > 1 and faults.take("flip"):
                    data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0x55]) + data[len(data) // 2 + 1 :]
            headers = {k: v for k, v in response.getheaders() if k.lower() not in ("transfer-encoding", "connection")}
            headers["Content-Length"] = str(len(data))
            if get and len(data) > 1 and faults.take("cut"):
                self._send(response.status, headers, data[: len(data) // 2], close=True)
                return
            if get and len(data) > 1 and faults.take("stall"):
                with faults.lock:
                    faults.stalling.add(request)
                try:
                    self._send(response.status, headers, data[: len(data) // 2], stall=faults.stall_seconds, rest=data)
                finally:
                    with faults.lock:
                        faults.stalling.discard(request)
                return
            self._send(response.status, headers, data, count=response.status == 206)

        def _send(
            self, status: int, headers: dict[str, str], data: bytes, *, close: bool = False, stall: float = 0.0,
            rest: bytes = b"", count: bool = False,
        ) -> None:  # fmt: skip
            self.send_response(status)
            for key, value in headers.items():
                if key.lower() not in ("server", "date"):
                    self.send_header(key, value)
            if status == 503:
                self.send_header("Content-Length", str(len(data)))
            if close:
                self.send_header("Connection", "close")
            self.end_headers()
            try:
                for start in range(0, len(data), 65536):
                    chunk = data[start : start + 65536]
                    bucket.spend(len(chunk))
                    self.wfile.write(chunk)
                    if count:
                        with faults.lock:
                            faults.served += len(chunk)
                if stall:
                    self.wfile.flush()
                    faults.resume.wait(stall)
                    self.wfile.write(rest[len(data) :])
            except OSError:  # the client gave up (a stall it timed out on)
                self.close_connection = True
                return
            if close:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

    return Proxy


@contextmanager
def s3_server(faults: Faults | None = None) -> Iterator[tuple[str, Faults]]:
    """(the proxy's endpoint URL, its faults) while a moto server runs behind it on 127.0.0.1."""
    from moto.server import ThreadedMotoServer

    faults = faults or Faults()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(("127.0.0.1", port), faults, _Bucket(faults)))
    proxy.daemon_threads = True
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{proxy.server_address[1]}", faults
    finally:
        proxy.shutdown()
        proxy.server_close()
        moto.stop()


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def make_bucket(endpoint: str, name: str) -> Any:
    """A client of the server and a new bucket on it."""
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    return client


class ServerProcess:
    """:func:`s3_server` in a child process, so that its threads take nothing of this process's interpreter
    (a benchmark's reader should pay for the network, not for the store): ``set(**fields)`` changes its
    :class:`Faults`, ``stats()`` reads them back. It ends with the ``with`` block, or with this process.
    ``cpus``: the cores the server may run on (all, unless given)."""

    def __init__(self, cpus: set[int] | None = None) -> None:
        self.cpus = cpus

    def __enter__(self) -> ServerProcess:
        import multiprocessing

        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, os.getpid(), self.cpus), daemon=True)
        self.process.start()
        self.endpoint = self.conn.recv()
        return self

    def set(self, **fields: Any) -> None:
        self.conn.send(("set", fields))
        self.conn.recv()

    def stats(self) -> dict[str, Any]:
        self.conn.send(("stats", {}))
        return dict(self.conn.recv())

    def __exit__(self, *exc: object) -> None:
        self.conn.send(("stop", {}))
        self.process.join(timeout=10)


def _serve(conn: Any, parent: int, cpus: set[int] | None) -> None:
    from byol.processes import die_with_parent

    die_with_parent(parent)
    if cpus:
        os.sched_setaffinity(0, cpus)
    with s3_server() as (endpoint, faults):
        conn.send(endpoint)
        while True:
            command, fields = conn.recv()
            if command == "stop":
                return
            if command == "set":
                for key, value in fields.items():
                    setattr(faults, key, value)
                conn.send(None)
            else:
                conn.send({"served": faults.served, "gets": faults.gets, "injected": dict(faults.injected)})
