"""Prepared sets in object storage: ``s3://BUCKET/PREFIX`` (AWS S3 and every S3-compatible store) and
``gs://BUCKET/PREFIX`` (Google Cloud Storage through its S3-interoperable endpoint), read and written with boto3
(``pip install 'byol[cloud]'``).

The endpoint and the credentials come from where every AWS tool takes them: ``AWS_ENDPOINT_URL`` (MinIO, Ceph,
R2, a local test server), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and the config files,
or an instance role. Credentials that expire (an assumed role, SSO) are refreshed by botocore itself: a client is
made once per process and asks its credential provider again when they run out.

A shard is read whole, as :data:`PARTS_IN_FLIGHT` ranged GETs of :data:`PART_BYTES` in parallel, into a file the
cache (:mod:`byol.data.cache`) has reserved; it is used only once its SHA-256 is the manifest's. Every request is
retried here (timeouts, 5xx, 503 SlowDown, a body cut short or stalled; with jittered exponential backoff from
0.1 s, :data:`ATTEMPTS` times in all; botocore's own retries are off, so the attempts do not multiply), and a
whole shard whose bytes do not hash to the manifest's digest is fetched again, :data:`ATTEMPTS` times in all;
then the command stops with one line naming the object. Nothing is ever skipped: a shard either arrives intact or
the run ends.

A part that has not arrived after :data:`HEDGE_FACTOR` times the median of this process's recent parts (at least
:data:`HEDGE_MIN` seconds; :data:`HEDGE_FIRST` before it has any) is asked for a second time beside the first, and
whichever answer arrives whole first is used (a hedged request): a stalled connection costs its reader that delay,
not the timeout (20 s without a byte by default).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import random
import re
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byol.choices import URL
from byol.errors import ConfigError, DataError, first_line

# scheme -> the endpoint it means when AWS_ENDPOINT_URL is unset (None: boto3's own, AWS)
SCHEMES = {"s3": None, "gs": "https://storage.googleapis.com"}
PART_BYTES = 8 << 20  # one ranged GET
PARTS_IN_FLIGHT = 8  # ranged GETs of one shard at a time
ATTEMPTS = 6  # attempts of a request (timeouts, 5xx, SlowDown), and of a whole shard (cut, stalled, wrong bytes)
TIMEOUT_ENV = "BYOL_S3_TIMEOUT"  # seconds without a byte before a request counts as stalled
TIMEOUT = 20.0
HEDGE_FACTOR, HEDGE_MIN = 4.0, 0.25  # a second request for a part slower than 4x the median part (>= 0.25 s)
HEDGE_HISTORY = 32  # recent part durations the median is taken over
HEDGE_FIRST = 2.0  # seconds before a second request while this process has no part durations yet


def is_url(text: str) -> bool:
    return bool(URL.match(text))


@dataclass(frozen=True)
class Location:
    """Where a prepared set lives: ``scheme://bucket/prefix`` (prefix without a trailing slash)."""

    scheme: str
    bucket: str
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str = "") -> str:
        return (
            f"{self.scheme}://{self.bucket}/{self.key(name)}"
            if name
            else f"{self.scheme}://{self.bucket}/{self.prefix}"
        )


def parse(url: str, what: str = "--data-dir") -> Location:
    """The location a URL names; one line naming what is valid for anything else."""
    match = URL.match(url)
    valid = ", ".join(f"{scheme}://BUCKET/PREFIX" for scheme in SCHEMES)
    if not match or match["scheme"].lower() not in SCHEMES:
        raise ConfigError(f"{what} {url!r}: only object storage at {valid} or a local folder is read")
    bucket, _, prefix = match["rest"].partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]", bucket):
        raise ConfigError(f"{what} {url!r} names no valid bucket; write {valid}")
    return Location(match["scheme"].lower(), bucket, prefix.strip("/"))


class Store:
    """One prepared set's objects. The boto3 client is made on first use in each process: a forked DataLoader
    worker makes its own (a client's connections are not shared across a fork) from the session it inherits, whose
    service model is already loaded (10 ms, against 80 ms for a new session, measured)."""

    def __init__(self, location: Location) -> None:
        self.location = location
        self._session: Any = None
        self._client: Any = None
        self._pid = 0
        self._durations: collections.deque[float] = collections.deque(maxlen=HEDGE_HISTORY)

    def __getstate__(self) -> dict[str, Any]:  # a spawned worker makes its own session and client
        return {"location": self.location, "_session": None, "_client": None, "_pid": 0}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _durations=collections.deque(maxlen=HEDGE_HISTORY))

    def client(self) -> Any:
        if self._client is None or self._pid != os.getpid():
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise ConfigError(
                    f"{self.location.url()} is in object storage, which needs boto3: pip install 'byol[cloud]'"
                ) from None
            timeout = float(os.environ.get(TIMEOUT_ENV) or TIMEOUT)
            config = Config(
                retries={"max_attempts": 1, "mode": "standard"},  # retried by _call, with this module's backoff
                connect_timeout=timeout, read_timeout=timeout, max_pool_connections=4 * PARTS_IN_FLIGHT,
            )  # fmt: skip
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            endpoint = endpoint or SCHEMES[self.location.scheme]
            logging.getLogger("botocore").setLevel(logging.WARNING)  # "found credentials in ..." on every client
            if self._session is None:
                self._session = boto3.session.Session()
            self._client = self._session.client("s3", endpoint_url=endpoint, config=config)
            self._pid = os.getpid()
        return self._client

    def _call(self, name: str, call: Callable[[Any], Any]) -> Any:
        """``call(client)``, retried with jittered exponential backoff while it fails in a way worth another
        attempt (a timeout, a 5xx, 503 SlowDown: :func:`explain`'s ``transient``), :data:`ATTEMPTS` times in all;
        its errors as one line naming the object."""
        for attempt in range(ATTEMPTS):
            try:
                return call(self.client())
            except ConfigError:
                raise
            except Exception as e:  # botocore's errors have no common base short of Exception
                error = explain(e, self.location, name)
                if attempt == ATTEMPTS - 1 or not getattr(error, "transient", False):
                    raise error from None
            _backoff(attempt)
        raise AssertionError("unreachable")

    def get(self, name: str) -> bytes:
        """A small object whole (a manifest, an index)."""
        key = self.location.key(name)
        return bytes(self._call(name, lambda c: _body(c.get_object(Bucket=self.location.bucket, Key=key))))

    def fetch(self, name: str, size: int, fd: int, verify: Callable[[int], bool]) -> int:
        """Object ``name`` (``size`` bytes) into the open file ``fd`` by parallel ranged GETs, until
        ``verify(fd)`` accepts its bytes; returns the bytes fetched (retries included). A part cut short or
        stalled is asked for again (:meth:`_call`); a shard whose bytes are wrong is fetched again, :data:`ATTEMPTS`
        times in all; then one line naming the object."""
        key, fetched = self.location.key(name), 0
        ranges = [(start, min(start + PART_BYTES, size) - 1) for start in range(0, size, PART_BYTES)]

        def part(span: tuple[int, int]) -> int:
            start, end = span
            data, requests = self._hedged(name, lambda c: _body(
                c.get_object(Bucket=self.location.bucket, Key=key, Range=f"bytes={start}-{end}"), end - start + 1
            ))  # fmt: skip
            os.pwrite(fd, data, start)  # only the answer used is written: a late one never lands in the file
            return len(data) * requests  # a hedged part counts the bytes of both requests

        for attempt in range(ATTEMPTS):  # each request retried by _call; here, bytes that arrived wrong
            if len(ranges) == 1:
                fetched += part(ranges[0])
            else:
                with ThreadPoolExecutor(min(PARTS_IN_FLIGHT, len(ranges))) as pool:
                    fetched += sum(pool.map(part, ranges))
            if verify(fd):
                return fetched
            _backoff(attempt)
        raise DataError(
            f"{self.location.url(name)} could not be fetched intact in {ATTEMPTS} attempts (its bytes do not match "
            "the SHA-256 in the manifest); check the store, or prepare the set again if the object changed"
        )

    def _hedged(self, name: str, call: Callable[[Any], bytes]) -> tuple[bytes, int]:
        """``self._call(name, call)``, asked a second time beside the first when it has not answered after the hedge
        delay; (the first whole answer, the requests made). Each request runs in a daemon thread: the slower one
        ends with its own timeout or answer, unused, and never outlives the process."""
        answers: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def request() -> None:
            started = time.monotonic()
            try:
                answers.put((True, self._call(name, call)))
                self._durations.append(time.monotonic() - started)
            except BaseException as e:  # handed to the caller's thread
                answers.put((False, e))

        threading.Thread(target=request, daemon=True).start()
        requests = 1
        recent = list(self._durations)  # one C-level copy under the GIL: no lock (a lock held across a fork hangs)
        delay = max(HEDGE_MIN, HEDGE_FACTOR * statistics.median(recent)) if recent else HEDGE_FIRST
        try:
            ok, value = answers.get(timeout=delay)
        except queue.Empty:
            threading.Thread(target=request, daemon=True).start()
            requests = 2
            ok, value = answers.get()
            if not ok:  # the first to end failed: the other may still answer
                ok, value = answers.get()
        if not ok:
            raise value
        return value, requests

    def upload(self, path: Path, name: str) -> None:
        """A local file to object ``name`` (multipart for a large one: the object appears whole or not at all)."""
        key = self.location.key(name)
        self._call(name, lambda c: c.upload_file(os.fspath(path), self.location.bucket, key))

    def put(self, name: str, data: bytes) -> None:
        key = self.location.key(name)
        self._call(name, lambda c: c.put_object(Bucket=self.location.bucket, Key=key, Body=data))

    def delete(self, name: str) -> None:
        key = self.location.key(name)
        self._call(name, lambda c: c.delete_object(Bucket=self.location.bucket, Key=key))

    def listing(self) -> dict[str, int]:
        """The objects under the prefix, by name relative to it, with their sizes."""
        prefix = self.location.key("")

        def pages(client: Any) -> dict[str, int]:
            found = {}
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.location.bucket, Prefix=prefix):
                for item in page.get("Contents", ()):
                    found[item["Key"][len(prefix) :]] = int(item["Size"])
            return found

        return dict(self._call("", pages))


class ShortBody(Exception):
    """A body that ended before its length."""


def _body(response: dict[str, Any], size: int | None = None) -> bytes:
    """The whole body of a GET (botocore raises on one cut short of its Content-Length; ``size``: the bytes it
    must hold besides)."""
    body = response["Body"]
    try:
        data = body.read()
    finally:
        body.close()
    if size is not None and len(data) != size:
        raise ShortBody(f"{len(data)} bytes of {size} arrived")
    return bytes(data)


def _backoff(attempt: int) -> None:
    """Sleeps 0.05–0.1 s after a first failure, doubling each time up to 3.2–6.4 s (full jitter's upper half)."""
    time.sleep(min(6.4, 0.1 * 2**attempt) * (0.5 + random.random() / 2))


def explain(error: Exception, location: Location, name: str) -> DataError:
    """A boto3/botocore error as one line naming the object and what to do. ``transient`` on the result: worth
    another attempt (a body cut short, a stall, a 5xx after botocore's own retries)."""
    from botocore import exceptions as b

    url = location.url(name)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
    transient = False
    if isinstance(error, b.NoCredentialsError | b.PartialCredentialsError | b.CredentialRetrievalError):
        text = (
            f"no credentials to read {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run "
            "where an instance role applies (the AWS credential chain)"
        )
    elif isinstance(error, b.EndpointConnectionError | b.ConnectTimeoutError):
        text = f"cannot reach the object store {endpoint} for {url} ({first_line(error)}); check AWS_ENDPOINT_URL"
        transient = True
    elif isinstance(error, b.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "NoSuchBucket":
            text = f"bucket {location.bucket!r} does not exist at {endpoint} (for {url}); check the URL and endpoint"
        elif code in ("NoSuchKey", "404", "NotFound"):
            text = f"{url} does not exist; check the URL (a prepared set has manifest.json at its top)"
        elif code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            text = f"access to {url} was refused ({code}); check the credentials and the bucket's policy"
        else:
            text = f"{url}: the store answered {code or status} ({first_line(error)})"
            transient = status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError")
    else:  # a body cut short, a stall, a connection closed mid-way
        text = f"{url}: {type(error).__name__}: {first_line(error)}"
        transient = True
    result = DataError(text)
    result.transient = transient  # type: ignore[attr-defined]
    return result


def check_objects(store: Store, sizes: dict[str, int]) -> None:
    """Every object of ``sizes`` (name -> bytes) is there at its size, checked by one listing of the prefix; the
    first that is not is named in one line."""
    present = store.listing()
    for name, size in sizes.items():
        if name not in present:
            raise DataError(f"{store.location.url(name)} does not exist (the manifest lists it); prepare the set again")
        if present[name] != size:
            raise DataError(
                f"{store.location.url(name)} is {present[name]} bytes, not the {size} the manifest records "
                "(replaced or cut short); prepare the set again"
            )
