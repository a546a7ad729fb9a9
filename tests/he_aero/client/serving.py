"""Helpers of the service tests: a `he-aero serve` subprocess on loopback, and a client that speaks frames by
hand (to send what a well-behaved client never would)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from he_aero.protocol import Kind, parse_frame, peek_kind

READY_TIMEOUT = 180.0


class Served:
    """A `he-aero serve` process started with `--port 0`; its standard output and error go to files."""

    def __init__(self, folder: Path, ckpt, plan_file, *options: str):
        self.folder = folder
        self.tmpdir = folder / "tmp"  # the server's TMPDIR: must be empty after it stops
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.out, self.err = folder / "serve.out", folder / "serve.err"
        cmd = [sys.executable, "-m", "he_aero.cli.serve", "serve", "--port", "0", "--checkpoint", str(ckpt)]
        cmd += ["--plan", str(plan_file), "--allow-insecure-for-tests", "--max-message-mb", "64", *options]
        env = {**os.environ, "TMPDIR": str(self.tmpdir)}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        line = self.wait_for(self.out, r"listening on (ws://127\.0\.0\.1:\d+)", READY_TIMEOUT)
        self.url = re.search(r"ws://127\.0\.0\.1:\d+", line).group(0)
        self.wait_for(self.out, r"^ready", READY_TIMEOUT)

    def log(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_for(self, path: Path, pattern: str, timeout: float = 60.0) -> str:
        """The first line of `path` matching `pattern`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            text = path.read_text(errors="replace") if path.exists() else ""
            for line in text.splitlines():
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and path == self.out:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def wait_log(self, pattern: str, timeout: float = 60.0) -> str:
        return self.wait_for(self.err, pattern, timeout)

    def session_worker(self, session: int) -> int:
        """The worker pid of session `session` (from the log)."""
        line = self.wait_log(rf"session {session} opened from .* \(worker (\d+)", 30)
        return int(re.search(r"\(worker (\d+)", line).group(1))

    def sessions_opened(self) -> int:
        return len(re.findall(r"session \d+ opened", self.log()))

    def worker_pids(self) -> set[int]:
        return {int(p) for p in re.findall(r"worker (\d+) started", self.log())}

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def gone(pid: int, timeout: float = 15.0) -> bool:
    """Whether process `pid` has ended (and been reaped, or is a zombie) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except (FileNotFoundError, IndexError, ProcessLookupError):
            return True
        if state in "ZX":
            return True
        time.sleep(0.1)
    return False


class RawClient:
    """A websocket client that sends frames by hand."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(
            connect(url, compression=None, max_size=None, proxy=None, open_timeout=30)
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._stack.close()

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def recv(self, timeout: float = 120.0) -> bytes:
        return self.ws.recv(timeout=timeout)

    def recv_kind(self, kind: Kind, timeout: float = 120.0) -> bytes:
        """Skip PROGRESS frames; the next frame, which must be of `kind`."""
        while True:
            data = self.recv(timeout)
            if peek_kind(data) != Kind.PROGRESS:
                assert peek_kind(data) == kind, f"expected {kind.name}, got {_describe(data)}"
                return data

    def expect_error(self, timeout: float = 60.0) -> tuple[str, str, int | None]:
        """(code, message) of the ERROR frame the server sends next (PROGRESS and REFRESH_REQUEST frames
        skipped), and the close code that follows it."""
        from websockets.exceptions import ConnectionClosed

        while True:
            data = self.recv(timeout)
            if peek_kind(data) == Kind.ERROR:
                meta = parse_frame(data, Kind.ERROR).meta
                break
        try:
            self.ws.recv(timeout=10)
            raise AssertionError("the server sent a message after its ERROR frame")
        except ConnectionClosed as exc:
            close = exc.rcvd.code if exc.rcvd is not None else None
        return meta["code"], meta["message"], close

    def closed_with(self, timeout: float = 60.0):
        """The close frame the server sends (after any messages)."""
        from websockets.exceptions import ConnectionClosed

        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        except ConnectionClosed as exc:
            return exc.rcvd
        raise AssertionError("the connection stayed open")


def _describe(data) -> str:
    if isinstance(data, str):
        return f"text {data[:60]!r}"
    kind = peek_kind(data)
    if kind == Kind.ERROR:
        return f"ERROR {parse_frame(data, Kind.ERROR).meta}"
    return kind.name if kind else "unknown"


def prefill(url: str, client, setup: bytes, tokens: list[int]):
    """A well-behaved session by hand: keys, one prefill with its refreshes; the decrypted logits."""
    with RawClient(url) as raw:
        raw.recv_kind(Kind.OFFER)
        raw.send(setup)
        raw.send(client.encrypt_tokens(tokens, 0))
        while True:
            data = raw.recv()
            kind = peek_kind(data)
            if kind == Kind.REFRESH_REQUEST:
                raw.send(client.handle_refresh(data))
            elif kind == Kind.LOGITS:
                return client.decrypt_logits(data)
            else:
                assert kind == Kind.PROGRESS, _describe(data)
