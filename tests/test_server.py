"""The prediction server of ``drizzle-ml stream --serve``: real sockets against a server fed by a training stream.

Hostile and careless clients (oversized, slow, truncated, nested, idle,
concurrent) are answered or cut off by the server's limits, while the
stream keeps training: every test checks that the driver's versions keep
increasing. No timing assertions: socket timeouts only keep a broken server
from hanging the test.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from sklearn.datasets import make_regression

import drizzle_ml as dm
from drizzle_ml.launch.serve import Models, answer_predict, json_depth_exceeds

TIMEOUT = 1.5  # --serve-timeout of the stream under test


class Stream:
    """``drizzle-ml stream --serve`` on a CSV file that a thread keeps appending to."""

    def __init__(self, tmp_path, *extra: str):
        self.path = tmp_path / "live.csv"
        self.path.write_text("")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "drizzle_ml", "stream", "--algorithm", "linear", "--source", f"file:{self.path}",
             "--n-features", "2", "--workers", "1", "--batch-interval", "0.005", "--max-batch", "50",
             "--serve", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self.versions: list[int] = []
        self.stop = threading.Event()
        for pipe, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(pipe, lines), daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()
        deadline = time.time() + 60
        while not any("serving predictions on" in ln for ln in self.out):
            assert self.proc.poll() is None and time.time() < deadline, "".join(self.err)
            time.sleep(0.05)
        line = next(ln for ln in self.out if "serving predictions on" in ln)
        self.host, port = re.search(r"http://([\d.]+):(\d+)", line).groups()
        assert self.host == "127.0.0.1"  # --serve PORT: loopback only
        self.port = int(port)
        while self.model()["version"] is None:
            assert time.time() < deadline, "".join(self.err)
            time.sleep(0.05)

    def _read(self, pipe, lines) -> None:
        for line in pipe:
            lines.append(line)
            found = re.search(r" version (\d+) group", line)
            if found:
                self.versions.append(int(found.group(1)))

    def _write(self) -> None:
        rng = np.random.default_rng(0)
        with open(self.path, "a") as f:
            while not self.stop.is_set():
                X = rng.standard_normal((100, 2))
                f.write("".join(f"{a},{b},{2 * a - b + 0.5}\n" for a, b in X))
                f.flush()
                time.sleep(0.02)

    def connect(self, timeout: float = 30.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")
        finally:
            conn.close()

    def predict(self, X=((1.0, 1.0),), **fields) -> tuple[int, dict]:
        rows = [list(r) for r in X] if isinstance(X, tuple) else X
        return self.request("POST", "/predict", json.dumps({"X": rows, **fields}).encode())

    def model(self) -> dict:
        return self.request("GET", "/model")[1]

    def server_pid(self) -> int:
        """The serving process (its command line names the address)."""
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().split(b"\0")
            except OSError:
                continue
            if b"drizzle_ml.launch.serve" in cmd and f"{self.host}:{self.port}".encode() in cmd:
                return int(pid)
        raise LookupError("no serving process")

    def trains(self, since: int, timeout: float = 60.0) -> bool:
        """Whether the driver makes a version newer than ``since`` (from its progress lines)."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if self.versions and self.versions[-1] > since:
                return True
            time.sleep(0.05)
        return False

    def close(self) -> int:
        self.stop.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    s = Stream(tmp_path_factory.mktemp("serve"), "--serve-timeout", str(TIMEOUT), "--serve-max-body", "1M",
               "--serve-threads", "2", "--serve-max-connections", "400")
    server = s.server_pid()
    yield s
    code = s.close()
    assert code == 0, "".join(s.err)
    assert _state(server) in ("gone", "Z")  # stopped with the stream
    assert not any("Traceback" in line for line in s.err), "".join(s.err)


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def read_answer(sock: socket.socket) -> tuple[int, dict | None, bool]:
    """Read one answer from a raw socket: status, JSON body, and whether the server closed after it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    closed = b"Connection: close" in head
    if closed:
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            pass
    return status, json.loads(body) if body else None, closed


def test_answers_and_refusals(stream):
    version = stream.model()["version"]
    status, answer = stream.predict()
    assert status == 200 and answer["version"] >= version and len(answer["predictions"]) == 1
    assert stream.predict(durable=True)[0] == 200
    for X, message in [([[1.0, 2.0, 3.0]], '"X" has 3 features per row, the model takes 2'),
                       ([[1.0, float("nan")]], '"X" row 0 is not finite (NaN or infinity)'),
                       ([[1.0, "a"]], '"X" must hold numbers only'),
                       ([[1.0, 2.0], [3.0]], '"X" must be a list of rows of numbers, all of one length'),
                       ([1.0, 2.0], '"X" must be a list of rows (2-D), got 1-D of shape (2,)')]:
        assert stream.predict(X) == (400, {"error": message})
    assert stream.request("POST", "/predict", b"{not json")[0] == 400
    assert stream.request("POST", "/predict", b'{"x": 1}') == (400, {"error": 'the request needs "X": a list of rows '
                                                                                'of numbers'})
    assert stream.request("GET", "/nowhere")[0] == 404
    assert stream.request("PUT", "/predict", b"{}")[0] == 405
    # http.client sends a chunked body when it has no length
    assert stream.request("POST", "/predict", iter([b'{"X": [[1, 2]]}']))[0] == 501
    with stream.connect() as sock:  # no Content-Length
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock)[0] == 411
    with stream.connect() as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: -5\r\n\r\n")
        assert read_answer(sock)[0] == 400
    # A sparse row's value beyond float's range is the client's mistake, not an internal error.
    huge = b'{"X": [{"indices": [0], "values": [1' + b"0" * 400 + b']}]}'
    assert stream.request("POST", "/predict", huge) == (400, {"error": '"X" row 0: "values" must be finite numbers'})
    assert not any("internal error" in line for line in stream.err), "".join(stream.err)


def test_keep_alive_and_expect_continue(stream):
    conn = http.client.HTTPConnection(stream.host, stream.port, timeout=30)
    try:
        for _ in range(5):  # one connection, five answers
            conn.request("POST", "/predict", body=b'{"X": [[1, 2]]}')
            response = conn.getresponse()
            assert response.status == 200 and json.loads(response.read())["predictions"]
    finally:
        conn.close()
    with stream.connect() as sock:
        body = b'{"X": [[1, 2]]}'
        sock.sendall(b"POST /predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(25).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        assert read_answer(sock)[0] == 200
    with stream.connect() as sock:  # an answer to HEAD has no body, or the next answer would start inside it
        sock.sendall(b"HEAD /predict HTTP/1.1\r\n\r\nGET /model HTTP/1.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 405 ") and rest.startswith(b"HTTP/1.1 200 OK\r\n"), data


def test_oversized_body_is_refused_before_it_is_read(stream):
    since = stream.versions[-1]
    with stream.connect() as sock:  # 100 MB announced, nothing sent: the answer comes without the body
        sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        status, answer, closed = read_answer(sock)
    assert status == 413 and "exceeds the limit of 1048576 bytes" in answer["error"] and closed
    with stream.connect() as sock:  # a client that sends its body anyway still reads the answer
        sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n" + b"[" * (1 << 20))
        assert read_answer(sock)[0] == 413
    with stream.connect() as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2000000\r\n\r\n")
        assert read_answer(sock)[0] == 413
    assert stream.predict()[0] == 200
    assert stream.trains(since)


def test_slow_and_truncated_clients_are_cut_off_while_others_are_answered(stream):
    since = stream.versions[-1]
    slow_head = stream.connect()
    slow_head.sendall(b"POST /predict HTTP/1.1\r\nContent-Le")  # then nothing
    slow_line = stream.connect()
    slow_line.sendall(b"POST /pre")  # not even the request line, then nothing: still not an idle connection
    slow_body = stream.connect()
    slow_body.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"{\"X\": [[1")  # then nothing
    half_closed = stream.connect()
    half_closed.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"{\"X\": [[1")
    half_closed.shutdown(socket.SHUT_WR)
    answers = [stream.predict()[0] for _ in range(5)]  # meanwhile
    assert answers == [200] * 5
    for sock, status in ((slow_head, 408), (slow_line, 408), (slow_body, 408), (half_closed, 400)):
        with sock:
            got, answer, closed = read_answer(sock)
            assert (got, closed) == (status, True), answer
    assert stream.trains(since)


def test_deep_json_is_refused_without_a_traceback(stream):
    body = b'{"X": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert stream.request("POST", "/predict", body) == (400, {"error": "the JSON nests deeper than 32 levels"})
    assert stream.request("POST", "/predict", b'{"X": [[1, 2]], "a": "' + b"[" * 1000 + b'"}')[0] == 200
    assert not any("Traceback" in line for line in stream.err), "".join(stream.err)
    # An unterminated string of escaped quotes (1 MB): refused at once, not after hours with the GIL held.
    body = b'{"X": [[1, 2]], "a": "' + b'\\"' * 500_000
    assert stream.request("POST", "/predict", body) == (400, {"error": "the body is not JSON: Unterminated string "
                                                                       "starting at: line 1 column 22 (char 21)"})
    assert stream.predict()[0] == 200


def test_idle_connections_cost_no_threads_and_new_clients_are_served(stream):
    server = stream.server_pid()
    driver_threads = {pid: thread_count(pid) for pid in (stream.proc.pid,)}
    before = thread_count(server)
    idle = [stream.connect() for _ in range(300)]
    try:
        for sock in idle[::2]:  # half of them start a request and stall
            sock.sendall(b"GET /model HTTP/1.1\r\n")
        since = stream.versions[-1]
        assert stream.predict()[0] == 200
        assert thread_count(server) <= before + 2  # (the prediction pool is 2)
        assert {pid: thread_count(pid) for pid in driver_threads} == driver_threads
        assert stream.trains(since)
    finally:
        for sock in idle:
            sock.close()


def test_concurrent_clients_are_all_answered(stream):
    since = stream.versions[-1]
    results: list = []
    retry: list = []
    start = threading.Barrier(200)

    def client() -> None:
        conn = http.client.HTTPConnection(stream.host, stream.port, timeout=30)
        try:
            start.wait()
            conn.request("POST", "/predict", body=b'{"X": [[1, 2]]}')
            response = conn.getresponse()
            response.read()
            results.append(response.status)
            if response.status == 503:
                retry.append(response.getheader("Retry-After"))
        except Exception as exc:  # a timeout or a reset is the failure this test looks for
            results.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200 and set(results) <= {200, 503}, sorted(set(map(str, results)))
    assert results.count(200) >= 1 and retry == ["1"] * results.count(503)
    assert stream.trains(since)


def test_training_goes_on_under_a_flood(stream):
    stop = threading.Event()
    bad = b'{"X": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    big = json.dumps({"X": [[0.5, 0.25]] * 30_000}).encode()  # about 0.5 MB of rows
    answered = [0] * 5

    def flood(i: int, body: bytes) -> None:
        while not stop.is_set():
            try:
                stream.request("POST", "/predict", body)
                answered[i] += 1
            except (OSError, http.client.HTTPException):
                pass

    def slow(i: int) -> None:  # connections that send half a request and wait for the timeout
        while not stop.is_set():
            try:
                with stream.connect() as sock:
                    sock.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 500000\r\n\r\n[[")
                    read_answer(sock)
                    answered[i] += 1
            except OSError:
                pass

    threads = [threading.Thread(target=flood, args=(i, body), daemon=True)
               for i, body in enumerate((bad, big, big, b'{"X": [[1, 2]]}'))]
    threads.append(threading.Thread(target=slow, args=(4,), daemon=True))
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 60
        while min(answered) < 1 and time.time() < deadline:  # every kind of client is at it
            time.sleep(0.05)
        assert min(answered) >= 1, answered
        for _ in range(5):  # meanwhile the driver keeps making versions
            assert stream.trains(stream.versions[-1])
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert stream.predict()[0] == 200
    assert not any("Traceback" in line for line in stream.err), "".join(stream.err)


def test_serving_beyond_loopback_is_warned_about(tmp_path):
    path = tmp_path / "s.csv"
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{a},{b},{a - b}\n" for a, b in rng.standard_normal((200, 2))))
    wide = subprocess.run([sys.executable, "-m", "drizzle_ml", "stream", "--algorithm", "linear", "--source",
                           f"file:{path}", "--no-follow", "--workers", "1", "--serve", "0.0.0.0:0"],
                          capture_output=True, text=True, timeout=120)
    assert wide.returncode == 0, wide.stderr
    port = re.search(r"http://0\.0\.0\.0:(\d+)", wide.stdout).group(1)
    assert (f"drizzle-ml: warning: the prediction server on 0.0.0.0:{port} is reachable from other hosts and has "
            "no authentication") in wide.stderr.splitlines()
    # (--serve PORT binding 127.0.0.1 is checked by every other test's stream)


def test_serve_options_are_checked():
    from .conftest import run_cli

    for extra, message in [(["--serve-threads", "2"], "--serve-threads needs --serve"),
                           (["--serve", "0", "--serve-threads", "0"], "--serve-threads must be between 1 and"),
                           (["--serve", "0", "--serve-max-body", "lots"], "must be bytes like"),
                           (["--serve", "0", "--serve-timeout", "0"], "must be positive seconds"),
                           (["--serve", "0", "--serve-timeout", "nan"], "must be positive seconds, got 'nan'"),
                           (["--serve", "0", "--serve-timeout", "inf"], "must be positive seconds, got 'inf'"),
                           (["--serve", "host:port"], "--serve must look like HOST:PORT or PORT")]:
        proc = run_cli("stream", "--source", "file:/nonexistent.csv", "--algorithm", "pca", *extra)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_the_server_process_dies_with_the_driver():
    # A driver stand-in holding a PredictionServer, killed with SIGKILL: no cleanup code of its own runs.
    code = ("import sys, time, drizzle_ml as dm\n"
            "from drizzle_ml.launch.serve import PredictionServer\n"
            "est = dm.LinearRegression(); est.model_store_ = dm.ModelStore()\n"
            "server = PredictionServer(est, '127.0.0.1', 0)\n"
            "print(server.process.pid, server.port, flush=True); time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        child, port = map(int, driver.stdout.readline().split())
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:  # it serves
            sock.sendall(b"GET /model HTTP/1.1\r\n\r\n")
            assert read_answer(sock)[:2] == (200, {"version": None, "durable_version": None})
        ours = _listening_sockets(port)
        assert ours
        driver.kill()
        driver.wait()
        deadline = time.time() + 30
        while os.path.exists(f"/proc/{child}") and _state(child) != "Z" and time.time() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{child}") or _state(child) == "Z"
        # Its socket is closed. Another process may have been given the freed port meanwhile (MPI ranks,
        # for one, listen on ports the OS picks: a full CI run once connected to one), so the client's
        # view, a refused connection, is checked only where nothing listens there now. A zombie leader
        # may still have threads on their way out, which hold its files a moment longer.
        while _listening_sockets(port) & ours and time.time() < deadline:
            time.sleep(0.05)
        assert not _listening_sockets(port) & ours
        if not _listening_sockets(port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        if driver.poll() is None:
            driver.kill()


def _listening_sockets(port: int) -> set[str]:
    """Inodes of the sockets listening on TCP ``port`` (Linux's /proc/net/tcp and tcp6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.read().splitlines()[1:]]
        except OSError:
            continue
        for row in rows:  # sl, local address:port (hex), remote, state (0A: listening), ..., inode
            if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(row[9])
    return inodes


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def test_each_version_is_finished_once_and_answers_like_at_version():
    X, y = make_regression(60, 3, random_state=0)
    est = dm.LinearRegression(n_workers=1).partial_fit(X[:30], y[:30])
    models = Models()
    template = est.at_version()
    template.model_store_ = None
    models.set_template(template)
    models.add(est.model_store_.latest())
    first = models.model(durable=False)
    assert models.model(durable=False) is first  # same version: reused, not finished again
    est.partial_fit(X[30:], y[30:])
    models.add(est.model_store_.latest())
    second = models.model(durable=False)
    assert second is not first and second.model_version_ == est.model_version_
    status, data = answer_predict(json.dumps({"X": X[:2].tolist()}).encode(), models)
    assert status == 200
    np.testing.assert_allclose(json.loads(data)["predictions"], est.at_version().predict(X[:2]))
    assert answer_predict(b'{"X": [[1, 2, 3]], "durable": "false"}', models) == (
        400, b'{"error": "TypeError: \'durable\' must be true or false, got \'false\'"}')
    assert answer_predict(b'{"X": [[1, 2, 3]]}', Models())[0] == 503  # no version yet: retry later
    # Sparse rows (a wide, hashed-feature model): only the nonzero columns.
    sparse = {"X": [{"indices": [0, 2], "values": [1.5, -2.0]}, {"indices": [], "values": []}]}
    status, data = answer_predict(json.dumps(sparse).encode(), models)
    assert status == 200
    np.testing.assert_allclose(json.loads(data)["predictions"],
                               est.at_version().predict(np.array([[1.5, 0.0, -2.0], [0.0, 0.0, 0.0]])))
    for rows, error in [
        ([{"indices": [3], "values": [1.0]}], '"X" row 0: "indices" must be integers in 0..2 (the model\'s columns)'),
        ([{"indices": [0, 1], "values": [1.0]}], '"X" row 0: "indices" and "values" must be lists of one length'),
        ([{"indices": [0], "values": [1.0]}, [1, 2, 3]],
         '"X" row 1 must be {"indices": [...], "values": [...]} like the rows before it'),
    ]:
        assert answer_predict(json.dumps({"X": rows}).encode(), models) == (400, json.dumps({"error": error}).encode())


def test_a_defect_in_answering_is_a_500_with_one_line(capsys):
    class Broken(Models):
        def model(self, durable):
            raise RuntimeError("the template lost its coefficients")

    status, data = answer_predict(b'{"X": [[1, 2, 3]]}', Broken())
    assert (status, json.loads(data)) == (
        500, {"error": "internal error: RuntimeError: the template lost its coefficients"})
    assert capsys.readouterr().err == ("drizzle-ml: prediction server: internal error: RuntimeError: the template "
                                       "lost its coefficients\n")


def test_json_depth_check():
    assert not json_depth_exceeds(b'{"X": [[1, 2], [3, 4]]}', 3)
    assert json_depth_exceeds(b'{"X": [[1, 2], [3, 4]]}', 2)
    assert not json_depth_exceeds(b'{"X": "[[[[[[", "y": "\\"[[[["}', 1)  # brackets in strings do not count
    assert json_depth_exceeds(b"[" * 100_000 + b"]" * 100_000, 32)
    assert json_depth_exceeds(b"{[{[{[]}]}]}", 5) and not json_depth_exceeds(b"{[{[{[]}]}]}", 6)
    assert json_depth_exceeds(b'{"a": "\\\\", "b": [[[]]]}', 3)  # an escaped backslash ends no string early
    assert not json_depth_exceeds(b'{"a": "[[[[' + b'\\"' * 10, 1)  # an unterminated string: left to the parser


def test_connections_beyond_the_limit_are_answered_503():
    # The server loop alone (in a thread of the test), with room for 4 connections.
    import asyncio

    from drizzle_ml.launch.serve import ServeLimits, _Server

    sock = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = sock.getsockname()[1]
    feed_read, feed_write = os.pipe()
    feed = os.fdopen(feed_read, "rb")
    limits = ServeLimits(max_body=1 << 16, threads=1, timeout=5.0, max_connections=4)
    loop = threading.Thread(target=lambda: asyncio.run(_Server(sock, Models(), limits).run(feed)), daemon=True)
    loop.start()
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
        for sock_ in idle:  # each is accepted and held (a request begun)
            sock_.sendall(b"GET /model HTTP/1.1\r\n")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as extra:
            extra.sendall(b"GET /model HTTP/1.1\r\n\r\n")
            status, answer, closed = read_answer(extra)
        assert (status, closed) == (503, True) and answer == {"error": "too many connections; retry later"}
        for sock_ in idle:
            sock_.close()
        deadline = time.time() + 30
        while True:  # once the server has seen them go, a new client is served
            with socket.create_connection(("127.0.0.1", port), timeout=30) as again:
                again.sendall(b"GET /model HTTP/1.1\r\n\r\n")
                if read_answer(again)[:2] == (200, {"version": None, "durable_version": None}):
                    break
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.close(feed_write)  # the pipe's end stops the server
        loop.join(timeout=30)
        feed.close()
    assert not loop.is_alive()
