"""The prediction server of ``drizzle-ml stream --serve``, in a process of its own.

The training driver is one Python process: a request handled on one of its
threads would share the GIL, the memory and the log with the training loop,
so one heavy or hostile client could slow or stall training. The driver
therefore only binds the listening socket, starts this module as a child
process that owns it (:class:`PredictionServer`), and pushes each new model
version (the raw model arrays, a few kilobytes) through a pipe; parsing
requests, finishing a version (PCA's eigendecomposition) and predicting all
happen in the child, at a lower CPU priority than training.

The child serves as an exposed server must:

* one asyncio loop holds every connection, so an idle or slow client costs a
  file descriptor, never a thread; at most ``max_connections`` are open, more
  are answered 503;
* the headers must arrive within ``timeout`` seconds (of the connection, or
  of the previous answer on a kept-alive one), the body within ``timeout``
  seconds of its headers: 408, then the connection is closed;
* a body larger than ``max_body`` is answered 413 before it is read (also
  with ``Expect: 100-continue``); a POST without ``Content-Length`` 411;
* predictions run on a fixed pool of ``threads`` threads; at most
  ``QUEUE_PER_THREAD * threads`` requests, holding at most
  ``BODY_BUDGET * max_body`` bytes of bodies, are admitted to wait for them,
  more are answered 503 with ``Retry-After`` at once;
* a request's JSON may nest at most ``MAX_DEPTH`` levels (checked before it
  is parsed), ``X`` must be rows of finite numbers of the model's width, or
  sparse rows ``{"indices": [...], "values": [...]}`` of its columns (wide,
  hashed-feature models): 400 with a one-line JSON error, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import http
import ipaddress
import json
import math
import os
import pickle
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import scipy.sparse as sp

BACKLOG = 128  # the kernel's queue of connections not yet accepted (capped by net.core.somaxconn)
MAX_DEPTH = 32  # JSON nesting: a request is {"X": [[...]]}, 3 levels
MAX_HEADER = 16 << 10  # bytes of request line and headers
MAX_HEADERS = 100
QUEUE_PER_THREAD = 32  # requests admitted per prediction thread (bodies are bounded by BODY_BUDGET too)
BODY_BUDGET = 4  # bodies admitted at once hold at most this many max_body
LINGER = 2.0  # seconds to drain an unread body before closing, so the client reads our answer, not a reset
_FRAME = struct.Struct("<Q")


@dataclass(frozen=True)
class ServeLimits:
    """The prediction server's limits (``--serve-max-body``, ``--serve-threads``, ``--serve-timeout``,
    ``--serve-max-connections``)."""

    max_body: int = 8 << 20
    threads: int = 4
    timeout: float = 10.0
    max_connections: int = 1024

    def argv(self) -> list[str]:
        return ["--max-body", str(self.max_body), "--threads", str(self.threads), "--timeout",
                repr(float(self.timeout)), "--max-connections", str(self.max_connections)]


def is_local_only(host: str) -> bool:
    """Whether an address bound by the server is reachable from this host only (loopback)."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------------
# The driver's side: bind, start the child, feed it versions.


class PredictionServer:
    """Serve predictions from ``estimator.model_store_``'s newest versions, in a child process.

    Binding happens here (an address in use is an ``OSError`` at once);
    ``address`` is the bound ``HOST:PORT``. A feeder thread pushes each new
    visible and durable version to the child; it never blocks training: it
    waits on the store, sends the newest version only (a slow child makes it
    skip versions, never queue them), and rests four times as long as each
    push took (at least 5 ms). The child dies with this process (parent-death signal, and the
    pipe's end); :meth:`close` stops it.
    """

    def __init__(self, estimator: Any, host: str, port: int, limits: ServeLimits = ServeLimits()):
        self.estimator = estimator
        self.limits = limits
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        dual = host == "::" and socket.has_dualstack_ipv6()
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG, dualstack_ipv6=dual)
        try:
            bound = sock.getsockname()
            self.host, self.port = bound[0], bound[1]
            self.address = (f"[{self.host}]" if ":" in self.host else self.host) + f":{self.port}"
            command = [sys.executable, "-m", "drizzle_ml.launch.serve", "--fd", str(sock.fileno()),
                       "--parent", str(os.getpid()), "--address", self.address, *limits.argv()]
            # A new session: a Ctrl-C or SIGUSR1 meant for the MPI job's process group is not for it.
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(sock.fileno(),),
                                            env=_child_env(), start_new_session=True)
        finally:
            sock.close()  # the child owns it now: if the child dies, clients are refused, not left waiting
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, name="drizzle-serve-feed", daemon=True)
        self._feeder.start()

    @property
    def local_only(self) -> bool:
        return is_local_only(self.host)

    def _feed(self) -> None:
        store, pipe = self.estimator.model_store_, self.process.stdin
        known: tuple[int | None, int | None] = (None, None)
        template_sent = False
        try:
            while not self._stop.is_set():
                now = store.wait_changed(known, 0.2)
                if now == known:
                    continue
                started = time.perf_counter()
                frames: list[tuple[str, Any]] = []
                if not template_sent:
                    # The estimator's parameters and setup (classes_, n_features_in_), without the store:
                    # the child finishes each version on a copy of it, as at_version() does.
                    template = copy.copy(self.estimator)
                    template.model_store_ = None
                    frames.append(("template", template))
                    template_sent = True
                sent = list(known)
                if now[1] is not None and now[1] != known[1]:
                    entry = store.latest(durable=True)
                    frames.append(("version", entry))
                    sent[1] = entry.version
                if now[0] is not None and now[0] != known[0]:
                    entry = store.latest()
                    if entry.version != sent[1]:
                        frames.append(("version", entry))
                    sent[0] = entry.version
                for frame in frames:
                    data = pickle.dumps(frame, protocol=pickle.HIGHEST_PROTOCOL)
                    pipe.write(_FRAME.pack(len(data)) + data)
                pipe.flush()
                known = (sent[0], sent[1])
                self._stop.wait(max(0.005, 4 * (time.perf_counter() - started)))
        except (OSError, ValueError) as exc:  # the child is gone (or close() closed the pipe)
            if not self._stop.is_set():
                print(f"drizzle-ml: warning: the prediction server stopped ({_exit_text(self.process)}: "
                      f"{type(exc).__name__}); training goes on", file=sys.stderr, flush=True)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            print(f"drizzle-ml: warning: the prediction server gets no versions: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        """Stop the child (the pipe's end tells it) and the feeder."""
        self._stop.set()
        self._feeder.join(timeout=2.0)
        if self._feeder.is_alive():  # blocked writing to a child that does not read
            self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._feeder.join(timeout=2.0)


def _exit_text(process: subprocess.Popen) -> str:
    code = process.poll()
    if code is None:
        return "not reading"
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def _child_env() -> dict[str, str]:
    """The driver's environment minus MPI's: the child must not take itself for a rank of the job."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "HYDI_", "MPIR_", "MPI_LOCALN"))}
    env.update(MPI4PY_RC_INITIALIZE="0", DRIZZLE_NO_SERVE="1",
               # one BLAS thread: predictions must not take the cores the training uses
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


# ---------------------------------------------------------------------------------------------------
# The child: the versions it was sent, and the answers.


class Models:
    """The newest visible and durable versions the driver pushed, each finished into an estimator once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._template: Any = None
        self._entries: dict[bool, Any] = {False: None, True: None}
        self._finished: dict[bool, Any] = {}
        self._finishing = {False: threading.Lock(), True: threading.Lock()}

    def set_template(self, estimator: Any) -> None:
        with self._lock:
            self._template = estimator
            self._finished.clear()

    def add(self, entry: Any) -> None:
        """A :class:`~drizzle_ml.store.ModelVersion`; a durable one is visible too."""
        with self._lock:
            for durable in (False, True):
                if durable and not entry.durable:
                    continue
                known = self._entries[durable]
                if known is None or entry.version > known.version:
                    self._entries[durable] = entry

    def describe(self) -> dict:
        with self._lock:
            return {name: None if self._entries[d] is None else int(self._entries[d].version)
                    for name, d in (("version", False), ("durable_version", True))}

    def model(self, durable: bool) -> Any:
        """The estimator at the newest (durable) version; LookupError before the first one."""
        with self._lock:
            entry, template = self._entries[durable], self._template
        if entry is None or template is None:
            raise LookupError("no model version has been " + ("committed" if durable else "published") + " yet")
        with self._finishing[durable]:  # concurrent requests finish a new version once, not each
            done = self._finished.get(durable)
            if done is not None and done.model_version_ == entry.version:
                return done
            clone = copy.copy(template)
            try:
                clone.online_finish(dict(entry.model))
            except KeyError:
                raise LookupError(f"model version {entry.version} was made by fit, not by a stream") from None
            clone.model_version_ = entry.version
            self._finished[durable] = clone
            return clone


class RequestError(Exception):
    """A request the server refuses: the status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# A string, or an unterminated one up to the end: a search that failed on an unterminated string would
# start again at every quote inside it, quadratic in the body (a few MB of \" would take hours).
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\\?\Z)', re.DOTALL)
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text nests arrays and objects more than ``limit`` deep (before it is parsed).

    Strings are cut out, everything but brackets is dropped, and the
    innermost pairs are removed, one level per pass, in C: no recursion, no
    per-byte Python, at most ``limit + 1`` passes over a shrinking text.
    Unbalanced brackets are left to the parser to report.
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit + 1):
        if not brackets:
            return False
        shorter = _INNERMOST.sub(b"", brackets)
        if shorter == brackets:
            return False
        brackets = shorter
    return True


def rows_of_numbers(X: Any) -> np.ndarray:
    """``X`` of a request as a 2-D float array; RequestError(400) naming what is wrong."""
    if not isinstance(X, list) or not X:
        raise RequestError(400, "\"X\" must be a non-empty list of rows of numbers")
    try:
        arr = np.asarray(X)
    except (ValueError, OverflowError):
        raise RequestError(400, "\"X\" must be a list of rows of numbers, all of one length") from None
    if arr.ndim != 2:
        raise RequestError(400, f"\"X\" must be a list of rows (2-D), got {arr.ndim}-D of shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise RequestError(400, "\"X\" must hold numbers only")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise RequestError(400, f"\"X\" row {int(bad[0])} is not finite (NaN or infinity)"
                           + (f", and {bad.size - 1} more rows" if bad.size > 1 else ""))
    return arr


def _finite_number(value: Any) -> bool:
    """A JSON number that is a finite float (an integer beyond float's range is not)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int of 309 digits or more
        return False


def sparse_rows(X: list, width: int) -> sp.csr_matrix:
    """``X`` of sparse rows, ``{"indices": [...], "values": [...]}`` each, as a CSR matrix ``width`` wide.

    For wide models (hashed features): a row names only its nonzero columns.
    RequestError(400) naming the first row that is wrong.
    """
    indptr, indices, values = [0], [], []
    for r, row in enumerate(X):
        if not isinstance(row, dict) or set(row) != {"indices", "values"}:
            raise RequestError(400, f"\"X\" row {r} must be {{\"indices\": [...], \"values\": [...]}} "
                                    "like the rows before it")
        idx, val = row["indices"], row["values"]
        if not (isinstance(idx, list) and isinstance(val, list) and len(idx) == len(val)):
            raise RequestError(400, f"\"X\" row {r}: \"indices\" and \"values\" must be lists of one length")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < width for i in idx):
            raise RequestError(400, f"\"X\" row {r}: \"indices\" must be integers in 0..{width - 1} "
                                    "(the model's columns)")
        if not all(map(_finite_number, val)):
            raise RequestError(400, f"\"X\" row {r}: \"values\" must be finite numbers")
        indices.extend(idx)
        values.extend(val)
        indptr.append(len(indices))
    matrix = sp.csr_matrix((np.asarray(values, dtype=np.float64), np.asarray(indices, dtype=np.int64),
                            np.asarray(indptr, dtype=np.int64)), shape=(len(X), width))
    matrix.sum_duplicates()
    return matrix


def answer_predict(body: bytes, models: Models, max_depth: int = MAX_DEPTH) -> tuple[int, bytes]:
    """``POST /predict``: the status and the JSON answer (``{"error": ...}`` on a refusal)."""
    try:
        if json_depth_exceeds(body, max_depth):
            raise RequestError(400, f"the JSON nests deeper than {max_depth} levels")
        try:
            request = json.loads(body) if body.strip() else {}
        except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
            raise RequestError(400, f"the body is not JSON: {str(exc).splitlines()[0][:200]}") from None
        if not isinstance(request, dict):
            raise RequestError(400, "TypeError: the request body must be a JSON object")
        durable = request.get("durable", False)
        if not isinstance(durable, bool):  # "false" is a string, and truthy
            raise RequestError(400, f"TypeError: 'durable' must be true or false, got {durable!r:.100}")
        if "X" not in request:
            raise RequestError(400, "the request needs \"X\": a list of rows of numbers")
        X = request["X"]
        sparse = isinstance(X, list) and bool(X) and isinstance(X[0], dict)
        if not sparse:
            X = rows_of_numbers(X)
        try:
            model = models.model(durable)
        except (LookupError, ValueError) as exc:  # (PCA before two records: ValueError)
            raise RequestError(503, f"no model to answer yet: {exc}") from None
        if sparse:
            X = sparse_rows(X, int(model.n_features_in_))
        width = getattr(model, "n_features_in_", X.shape[1])
        if X.shape[1] != width:
            raise RequestError(400, f"\"X\" has {X.shape[1]} features per row, the model takes {width}")
        out = model.predict(X) if hasattr(model, "predict") else model.transform(X)
        return 200, json.dumps({"version": int(model.model_version_),
                                "predictions": np.asarray(out).tolist()}).encode()
    except RequestError as exc:
        return exc.status, json.dumps({"error": str(exc)}).encode()
    except Exception as exc:  # a defect of ours: the client still gets an answer, the log one line
        message = f"internal error: {type(exc).__name__}: {exc}"
        _complain(message)
        return 500, json.dumps({"error": message}).encode()


# ---------------------------------------------------------------------------------------------------
# The child: HTTP over asyncio.


class _HeadTooLarge(Exception):
    pass


class _Server:
    def __init__(self, sock: socket.socket, models: Models, limits: ServeLimits):
        self.sock, self.models, self.limits = sock, models, limits
        self.pool = ThreadPoolExecutor(limits.threads, thread_name_prefix="drizzle-predict")
        self.open = self.lingering = self.admitted = self.admitted_bytes = 0
        self.last_complaint = 0.0
        self.closing = False

    async def run(self, feed: BinaryIO) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        stopped = asyncio.Event()

        def read_feed() -> None:
            try:
                _read_feed(feed, self.models)
            finally:
                loop.call_soon_threadsafe(stopped.set)

        threading.Thread(target=read_feed, name="drizzle-serve-feed", daemon=True).start()
        server = await asyncio.start_server(self._connection, sock=self.sock, backlog=BACKLOG, limit=MAX_HEADER)
        await stopped.wait()  # the driver closed the pipe, or died
        self.closing = True  # connections cancelled from here on are no news
        server.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # asyncio would log a traceback (accept() out of descriptors, ...): one line, at most every 10 s.
        now = time.monotonic()
        if not self.closing and now - self.last_complaint >= 10.0:
            self.last_complaint = now
            exc = context.get("exception")
            _complain(context.get("message", "error") + (f": {type(exc).__name__}: {exc}" if exc else ""))

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open >= self.limits.max_connections:
            try:
                await self._send(reader, writer, 503, {"error": "too many connections; retry later"},
                                 keep_alive=False, extra=("Retry-After: 1",),
                                 linger=self.lingering < self.limits.max_connections)
            except ConnectionError:
                pass
            self._close(writer)
            return
        self.open += 1
        try:
            while await self._request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, asyncio.TimeoutError):
            pass
        except Exception as exc:  # never a traceback: one line, and the connection goes
            _complain(f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.open -= 1
            self._close(writer)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()  # flushes what is buffered; a client that never reads it is cut off later
        asyncio.get_running_loop().call_later(self.limits.timeout, writer.transport.abort)

    async def _read_head(self, reader: asyncio.StreamReader, head: list[bytes], begun: list[bool]) -> None:
        size = 0
        while True:
            if head:
                line = await reader.readuntil(b"\n")
            else:  # the request line's first byte: from then on the connection is not idle (a 408 is due)
                first = await reader.readexactly(1)
                begun.append(True)
                line = first if first == b"\n" else first + await reader.readuntil(b"\n")
            if not head and line in (b"\r\n", b"\n"):  # empty lines before a request are ignored (RFC 9112)
                continue
            size += len(line)
            if size > MAX_HEADER or len(head) > MAX_HEADERS:
                raise _HeadTooLarge
            if line in (b"\r\n", b"\n"):
                return
            head.append(line)

    async def _request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; True to wait for the next on this connection."""
        limits = self.limits
        head: list[bytes] = []
        begun: list[bool] = []
        try:
            await asyncio.wait_for(self._read_head(reader, head, begun), limits.timeout)
        except (asyncio.TimeoutError, TimeoutError):
            if begun:
                await self._send(reader, writer, 408, {"error": f"the request headers took longer than "
                                                                f"{limits.timeout:g} s"}, keep_alive=False)
            return False  # an idle kept-alive connection just ends
        except asyncio.IncompleteReadError:
            return False
        except (asyncio.LimitOverrunError, ValueError, _HeadTooLarge):
            await self._send(reader, writer, 431, {"error": f"the request line and headers exceed {MAX_HEADER} "
                                                            f"bytes or {MAX_HEADERS} lines"}, keep_alive=False,
                             linger=True)
            return False
        try:
            method, target, version = head[0].decode("latin-1").rstrip("\r\n").split(" ")
            if not version.startswith("HTTP/1."):
                raise ValueError(version)
            headers: dict[str, str] = {}
            for line in head[1:]:
                name, sep, value = line.decode("latin-1").partition(":")
                name = name.lower()
                if not sep or not name or name != name.strip():
                    raise ValueError(line)
                if name == "content-length" and name in headers and headers[name] != value.strip():
                    raise ValueError(line)
                headers[name] = value.strip()
        except ValueError:
            await self._send(reader, writer, 400, {"error": "malformed HTTP request"}, keep_alive=False, linger=True)
            return False
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        path = target.split("?", 1)[0].rstrip("/") or "/"
        if "transfer-encoding" in headers:
            await self._send(reader, writer, 501, {"error": "chunked bodies are not accepted; send Content-Length"},
                             keep_alive=False, linger=True)
            return False
        text = headers.get("content-length")
        if text is not None and not (text.isascii() and text.isdigit()):
            await self._send(reader, writer, 400, {"error": f"Content-Length must be a number of bytes, got "
                                                            f"{text[:40]!r}"}, keep_alive=False, linger=True)
            return False
        length = None if text is None else (int(text) if len(text) <= 18 else 1 << 62)
        if path != "/predict":
            if path != "/model":
                code, answer, extra = 404, {"error": "use GET /model or POST /predict"}, ()
            elif method not in ("GET", "HEAD"):
                code, answer, extra = 405, {"error": "use GET /model"}, ("Allow: GET, HEAD",)
            else:
                code, answer, extra = 200, self.models.describe(), ()
            # A body we do not read would be taken for the next request: close after answering.
            unread = bool(length)
            return await self._send(reader, writer, code, answer, keep_alive=keep_alive and not unread, extra=extra,
                                    linger=unread, head_only=method == "HEAD")
        if method != "POST":
            return await self._send(reader, writer, 405, {"error": "use POST /predict"}, extra=("Allow: POST",),
                                    keep_alive=keep_alive and not length, linger=bool(length),
                                    head_only=method == "HEAD")
        if length is None:
            return await self._send(reader, writer, 411, {"error": "POST /predict needs a Content-Length"},
                                    keep_alive=False, linger=True)
        if length > limits.max_body:
            return await self._send(reader, writer, 413, {"error": f"the body ({length} bytes) exceeds the limit of "
                                                                   f"{limits.max_body} bytes (--serve-max-body)"},
                                    keep_alive=False, linger=True)
        if (self.admitted >= QUEUE_PER_THREAD * limits.threads
                or self.admitted and self.admitted_bytes + length > BODY_BUDGET * limits.max_body):
            return await self._send(reader, writer, 503, {"error": "the server is busy; retry later"},
                                    keep_alive=False, extra=("Retry-After: 1",), linger=True)
        self.admitted += 1
        self.admitted_bytes += length
        try:
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            try:
                body = await asyncio.wait_for(reader.readexactly(length), limits.timeout)
            except (asyncio.TimeoutError, TimeoutError):
                return await self._send(reader, writer, 408, {"error": f"the body took longer than "
                                                                       f"{limits.timeout:g} s"}, keep_alive=False)
            except asyncio.IncompleteReadError as exc:
                return await self._send(reader, writer, 400, {"error": f"the body ended after {len(exc.partial)} of "
                                                                       f"{length} bytes"}, keep_alive=False)
            code, data = await asyncio.get_running_loop().run_in_executor(self.pool, answer_predict, body,
                                                                          self.models)
        finally:
            self.admitted -= 1
            self.admitted_bytes -= length
        return await self._send(reader, writer, code, data, keep_alive=keep_alive,
                                extra=("Retry-After: 1",) if code == 503 else ())

    async def _send(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, code: int, body: dict | bytes,
                    *, keep_alive: bool, extra: tuple[str, ...] = (), linger: bool = False,
                    head_only: bool = False) -> bool:
        """Write one answer; True if the connection stays open for another request."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        lines = [f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}", "Content-Type: application/json",
                 f"Content-Length: {len(data)}", *extra] + ([] if keep_alive else ["Connection: close"])
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else data))
        try:
            await asyncio.wait_for(writer.drain(), self.limits.timeout)
        except (asyncio.TimeoutError, TimeoutError):  # a client that does not read its answer
            writer.transport.abort()
            return False
        if keep_alive:
            return True
        if linger:
            await self._linger(reader, writer)
        return False

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closing with unread data makes the kernel send a reset, and a client still sending its body
        # would then lose our answer: say we are done, and drain what comes, for a little while.
        self.lingering += 1
        try:
            if writer.can_write_eof():
                writer.write_eof()
            deadline = time.monotonic() + min(LINGER, self.limits.timeout)
            while (left := deadline - time.monotonic()) > 0:
                if not await asyncio.wait_for(reader.read(1 << 16), left):
                    break
        except (asyncio.TimeoutError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self.lingering -= 1
            writer.transport.abort()


def _read_feed(stream: BinaryIO, models: Models) -> None:
    """Apply the driver's frames until its end of the pipe closes."""
    try:
        while True:
            head = stream.read(_FRAME.size)
            if len(head) < _FRAME.size:
                return
            data = stream.read(_FRAME.unpack(head)[0])
            kind, payload = pickle.loads(data)  # from our own parent, through a pipe only it holds
            if kind == "template":
                models.set_template(payload)
            else:
                models.add(payload)
    except Exception as exc:
        _complain(f"the feed of model versions failed: {type(exc).__name__}: {exc}")


def _complain(message: str) -> None:
    print(f"drizzle-ml: prediction server: {message}", file=sys.stderr, flush=True)


def _die_with(parent: int) -> None:
    # SIGTERM when the driver dies, even by SIGKILL (Linux); the pipe's end covers the rest.
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the driver died before the prctl took effect
        sys.exit(0)


def _lowest_priority() -> None:
    """When cores are short, training goes first: nice 19, for this process and for its session.

    With the kernel's autogroups (``sched_autogroup_enabled``), CPU time is
    shared between sessions first, and a process's nice only counts within
    its session: a niced process in a session of its own would still take a
    full session's share from the training.
    """
    try:
        os.nice(19 - os.nice(0))
    except OSError:
        pass
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write("19")
    except OSError:  # no autogroups (or not Linux): the process's nice is what counts
        pass


def _descriptors_for(connections: int) -> int:
    """Raise the open-file limit to hold ``connections`` (and a margin); the connections it allows."""
    import resource

    margin = 64  # the socket, the pipe, imported libraries, a connection being refused
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if connections + margin > soft:
        wanted = connections + margin if hard == resource.RLIM_INFINITY else min(hard, connections + margin)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if connections + margin > soft:
        _complain(f"at most {soft - margin} connections (the open-file limit is {soft}), not {connections}")
        connections = max(1, soft - margin)
    return connections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drizzle_ml.launch.serve",
                                     description="the prediction server process of drizzle-ml stream --serve")
    parser.add_argument("--fd", type=int, required=True, help="the listening socket, inherited")
    parser.add_argument("--parent", type=int, required=True, help="the driver's pid")
    parser.add_argument("--address", default="", help="the bound address (shown by ps)")
    parser.add_argument("--max-body", type=int, default=ServeLimits.max_body)
    parser.add_argument("--threads", type=int, default=ServeLimits.threads)
    parser.add_argument("--timeout", type=float, default=ServeLimits.timeout)
    parser.add_argument("--max-connections", type=int, default=ServeLimits.max_connections)
    args = parser.parse_args(argv)
    _die_with(args.parent)
    for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):  # the driver decides when serving ends
        signal.signal(sig, signal.SIG_IGN)
    _lowest_priority()
    limits = ServeLimits(args.max_body, args.threads, args.timeout, _descriptors_for(args.max_connections))
    try:
        sock = socket.socket(fileno=args.fd)
        asyncio.run(_Server(sock, Models(), limits).run(sys.stdin.buffer))
    except Exception as exc:  # one line in the training's log, not a traceback
        _complain(f"stopped: {type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
