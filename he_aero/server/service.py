"""`he-aero serve`: the server as a network service: websockets front end, one worker process per session.

Process model (docs/deploy.md says why):

    client --websocket (binary messages = protocol frames)--> front end (asyncio, this module)
                                                                  | pipes: tagged messages of bytes
                                                                  v
                                                     worker process per session (he_aero/server/worker.py):
                                                     weights + plan + ONE client's public keys

- The front end relays frames unchanged in both directions and never parses their payload; it only peeks
  at a frame's kind (for the log and the byte counts). Refresh requests travel back to the client on the same
  connection, so a session is one websocket and one worker.
- Workers are separate processes because SEAL holds Python's GIL: threads would take turns. Each serves one
  session and exits, so a session's keys and memory go with it whatever happened. A warm worker (model
  loaded, ~4 s at start) waits for the next client; worker processes never exceed `max_sessions`.
- Past `max_sessions` a new client gets an ERROR frame (code "busy") and close code 1013 (try again later)
  at once. Messages above `max_message_bytes` close the connection with code 1009 (websockets' own check,
  before the message is buffered whole). The worker waits `idle_timeout` for a request and `refresh_timeout`
  for a refresh reply, then sends an ERROR frame (code "timeout") and ends; websockets' keepalive pings notice
  a peer that vanished without closing its connection.
- `stop()` (SIGTERM / SIGINT in the command) stops listening, ends every session with an ERROR frame (code
  "shutdown") and close code 1001, stops and reaps every worker. Serialisation is in memory
  (he_aero/ckks/backend.py), so nothing is left in the temporary folder.
- GET /ready answers 200 when the model loaded and a session can start now, 503 otherwise (starting, at
  capacity, stopping): a load balancer's readiness probe.

The operator's log (standard error) has one line per session event and no prompt content (the server has
none): opened (peer, worker pid), refused as busy, keys loaded, each prefill/decode (position, refresh rounds,
seconds), timeouts and refusals with their reason, closed (reason, duration, bytes each way).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

from he_aero.errors import HeAeroError
from he_aero.protocol import Kind, error_frame, parse_frame, peek_kind
from he_aero.server import worker as _worker

log = logging.getLogger("he_aero.serve")

_TAG = struct.Struct(">cQ")
MB = 1_000_000


@dataclass(frozen=True)
class ServiceConfig:
    """What `he-aero serve` runs and its limits (invalid values raise HeAeroError at construction).

    Attributes
    ----------
    host, port : where to listen (port 0: any free port; `Service.port` says which).
    checkpoint, plan : the model and its plan file (None: the shipped ones).
    max_sessions : sessions (worker processes) at once; more clients are told "busy, retry later".
    idle_timeout : seconds a worker waits for the client's keys or next request.
    refresh_timeout : seconds a worker waits for a refresh reply (the client's share of a request).
    max_message_bytes : largest message a client may send (None: twice the plan's estimated key size, at
        least 64 MB; the keys are the largest message).
    warm_workers : workers kept loaded ahead of clients (within max_sessions).
    startup_timeout : seconds a worker may take to load the model.
    ping_interval, ping_timeout : websockets keepalive (a vanished peer is noticed within their sum).
    ssl : an `ssl.SSLContext` for wss:// (None: plain ws://, e.g. behind a TLS reverse proxy).
    allow_insecure_for_tests : serve a plan on a ring below 128-bit security (tests only).
    ray_workers : Ray actors per session for the prefill's independent parts (0: none, all in the session's
        worker process; he_aero/server/ray_pool.py).
    ray_address : the Ray cluster they run on ("auto", "host:port", "ray://host:port"); None starts a private
        local Ray (ray_workers CPUs) in each session's worker process.
    plaintext_cache_mb : MB of encoded weight plaintexts each session's worker (and each of its Ray actors)
        keeps; past it they are encoded at each use (None: all of them; a model whose plaintexts do not fit
        in memory needs a cap, docs/deploy.md).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    checkpoint: str | None = None
    plan: str | None = None
    max_sessions: int = 2
    idle_timeout: float = 300.0
    refresh_timeout: float = 60.0
    max_message_bytes: int | None = None
    warm_workers: int = 1
    startup_timeout: float = 300.0
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    ssl: object | None = None
    allow_insecure_for_tests: bool = False
    ray_workers: int = 0
    ray_address: str | None = None
    plaintext_cache_mb: float | None = None

    def __post_init__(self):
        if not (0 <= self.port <= 65535):
            raise HeAeroError(f"port: expected 0..65535, got {self.port}")
        if self.max_sessions < 1:
            raise HeAeroError(f"max_sessions: expected >= 1, got {self.max_sessions}")
        if self.warm_workers < 0:
            raise HeAeroError(f"warm_workers: expected >= 0, got {self.warm_workers}")
        for name in ("idle_timeout", "refresh_timeout", "startup_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise HeAeroError(f"{name}: expected a positive number of seconds, got {value!r}")
        workers = self.ray_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise HeAeroError(f"ray_workers: expected an integer >= 0, got {self.ray_workers!r}")
        if self.ray_address is not None and not self.ray_workers:
            raise HeAeroError("ray_address: give ray_workers >= 1 too (the actors to start there)")
        cache = self.plaintext_cache_mb
        if cache is not None and not (
            isinstance(cache, (int, float)) and not isinstance(cache, bool) and 0 <= cache <= MAX_CACHE_MB
        ):
            raise HeAeroError(
                f"plaintext_cache_mb: expected a number of MB in [0, {MAX_CACHE_MB:g}], got {cache!r}"
            )
        if self.max_message_bytes is not None and self.max_message_bytes < 1024:
            raise HeAeroError(f"max_message_bytes: expected >= 1024, got {self.max_message_bytes}")

    def worker_command(self) -> list[str]:
        cmd = [sys.executable, "-m", _worker.__name__, "--idle-timeout", str(self.idle_timeout)]
        cmd += ["--refresh-timeout", str(self.refresh_timeout)]
        if self.checkpoint is not None:
            cmd += ["--checkpoint", str(self.checkpoint)]
        if self.plan is not None:
            cmd += ["--plan", str(self.plan)]
        if self.allow_insecure_for_tests:
            cmd.append("--allow-insecure-for-tests")
        if self.ray_workers:
            cmd += ["--ray-workers", str(self.ray_workers)]
        if self.ray_address is not None:
            cmd += ["--ray-address", self.ray_address]
        if self.plaintext_cache_mb is not None:
            cmd += ["--plaintext-cache-mb", repr(float(self.plaintext_cache_mb))]
        return cmd


MAX_CACHE_MB = 1e9
"""The largest plaintext cache cap accepted, in MB (a petabyte: beyond any machine, short of overflow)."""


def default_max_message_bytes(plan) -> int:
    """Twice the plan's estimated key bytes (the SETUP message, the largest a client sends), >= 64 MB."""
    return max(64 * MB, 2 * int(plan.key_bytes))


class Worker:
    """One worker process (he_aero/server/worker.py) and the front end's end of its pipes."""

    def __init__(
        self, proc: asyncio.subprocess.Process, on_exit: Callable[[Worker], None], exit_grace: float = 0.5
    ):
        self.proc = proc
        self.exit_grace = exit_grace  # seconds a worker told to stop may take to exit on its own
        self.label = f"worker {proc.pid}"
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()  # -> the OFFER frame
        self.frames: asyncio.Queue = asyncio.Queue()  # frames for the client; None at the worker's exit
        self.attached = False
        self.last_log = ""
        self._reader = asyncio.create_task(self._read())
        self._on_exit = on_exit

    @classmethod
    async def start(cls, config: ServiceConfig, on_exit: Callable[[Worker], None]) -> Worker:
        proc = await asyncio.create_subprocess_exec(
            *config.worker_command(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # tracebacks go to the service's own standard error
        )
        # a worker with Ray actors stops them and its private Ray on the way out (~1.5 s measured)
        return cls(proc, on_exit, exit_grace=10.0 if config.ray_workers else 0.5)

    async def _read(self) -> None:
        out = self.proc.stdout
        try:
            while True:
                tag, n = _TAG.unpack(await out.readexactly(_TAG.size))
                payload = await out.readexactly(n)
                if tag == _worker.LOG:
                    self.last_log = payload.decode(errors="replace")
                    log.info("%s: %s", self.label, self.last_log)
                elif not self.ready.done():
                    self.ready.set_result(payload)
                else:
                    self.frames.put_nowait(payload)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            code = await self.proc.wait()
            if not self.ready.done():
                why = self.last_log or f"the worker exited with code {code} before loading the model"
                self.ready.set_exception(HeAeroError(why))
                self.ready.exception()  # retrieved: a warm worker nobody waits for must not warn
            self.frames.put_nowait(None)
            self._on_exit(self)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def _write(self, tag: bytes, payload: bytes) -> None:
        self.proc.stdin.write(_TAG.pack(tag, len(payload)) + payload)

    async def attach(self, label: str) -> None:
        self.label, self.attached = label, True
        self._write(_worker.ATTACH, label.encode())
        await self.proc.stdin.drain()

    async def send(self, frame: bytes) -> None:
        self._write(_worker.FRAME, frame)
        await self.proc.stdin.drain()

    async def stop(self, grace: float = 5.0) -> int:
        """End the process and reap it: end of input first (a worker waiting for its client exits 0 at
        once), then SIGTERM (a worker inside SEAL cannot stop cleanly, nor need it), then SIGKILL."""
        if self.proc.returncode is None:
            try:
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), self.exit_grace)
            except (TimeoutError, ConnectionError):
                pass
        if self.proc.returncode is None:
            try:
                self.proc.terminate()
            except ProcessLookupError:
                pass
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        return self.proc.returncode


class WorkerPool:
    """At most `max_sessions` worker processes: the sessions' plus up to `warm_workers` loaded spares."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.active: set[Worker] = set()
        self.warm: list[Worker] = []
        self.closing = False
        self._starting = 0
        self._reserved = 0
        self._tasks: set[asyncio.Task] = set()

    @property
    def at_capacity(self) -> bool:
        return len(self.active) + self._reserved >= self.config.max_sessions

    def _on_exit(self, w: Worker) -> None:
        if w in self.warm:  # a spare died (failed to load, or was killed): not counted any more
            self.warm.remove(w)
            log.warning("%s exited (code %s) before a client came: %s", w.label, w.returncode, w.last_log)

    async def spawn(self) -> Worker:
        w = await Worker.start(self.config, self._on_exit)
        log.info("worker %d started (loading the model)", w.proc.pid)
        return w

    def _refill(self) -> None:
        """Start spares up to `warm_workers`, never past `max_sessions` processes in all."""
        want = min(self.config.warm_workers, self.config.max_sessions - len(self.active)) - len(self.warm)
        for _ in range(want - self._starting):
            self._starting += 1
            task = asyncio.create_task(self._add_spare())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _add_spare(self) -> None:
        try:
            w = await self.spawn()
        finally:
            self._starting -= 1
        if self.closing:
            await w.stop()
        else:
            self.warm.append(w)

    async def prime(self) -> Worker:
        """Start the first worker (the model's load check at start-up) and the other spares; all kept warm."""
        w = await self.spawn()
        self.warm.append(w)
        self._refill()
        return w

    async def take(self) -> Worker | None:
        """A worker for a new session (a warm one if any), or None at capacity."""
        if self.closing or len(self.active) + self._reserved >= self.config.max_sessions:
            return None
        if self.warm:
            w = self.warm.pop(0)
        else:
            self._reserved += 1  # counted while it starts, so concurrent clients cannot overshoot
            try:
                w = await self.spawn()
            finally:
                self._reserved -= 1
        self.active.add(w)
        self._refill()
        return w

    async def release(self, w: Worker) -> int:
        """End a session's worker (its keys and memory go with it); returns its exit code."""
        self.active.discard(w)
        code = await w.stop()
        if not self.closing:
            self._refill()
        return code

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            await task
        workers = list(self.warm) + list(self.active)
        self.warm.clear()
        await asyncio.gather(*(w.stop() for w in workers))


@dataclass
class _Session:
    label: str
    peer: str
    worker: Worker
    started: float = field(default_factory=time.monotonic)
    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    error: str | None = None  # the message of the ERROR frame sent, if any


class Service:
    """The `he-aero serve` front end; `await run()` serves until `stop()`."""

    def __init__(self, config: ServiceConfig, announce: Callable[[str], None] | None = None):
        self.config = config
        self.announce = announce or (lambda line: print(line, flush=True))
        self.pool = WorkerPool(config)
        self.sessions: dict[str, _Session] = {}
        self.port: int | None = None
        self.ready = False
        self.stopping = False
        self.max_message_bytes = config.max_message_bytes
        self._stop = asyncio.Event()
        self._ids = itertools.count(1)

    def stop(self) -> None:
        """Begin a graceful shutdown (safe to call from a signal handler, twice)."""
        self._stop.set()

    # --- HTTP: readiness -------------------------------------------------------------------------------
    def _process_request(self, connection, request):
        if request.path.split("?")[0] != "/ready":
            return None  # go on with the websocket handshake
        if self.stopping:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "stopping\n")
        if not self.ready:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "starting: loading the model\n")
        n, cap = len(self.sessions), self.config.max_sessions
        if self.pool.at_capacity:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"busy: {n}/{cap} sessions\n")
        return connection.respond(HTTPStatus.OK, f"ready: {n}/{cap} sessions\n")

    # --- one connection --------------------------------------------------------------------------------
    async def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        label = f"session {next(self._ids)}"
        peer = ":".join(str(x) for x in ws.remote_address[:2]) if ws.remote_address else "?"
        worker = None if self.stopping else await self.pool.take()
        if worker is None:
            why = "stopping" if self.stopping or self.pool.closing else "busy"
            if why == "busy":
                message = (
                    f"server busy: {self.config.max_sessions} sessions running (its --max-sessions); "
                    "retry later"
                )
                code, close = "busy", (1013, "busy, retry later")
            else:
                message, code, close = (
                    "server shutting down; retry later",
                    "shutdown",
                    (1001, "shutting down"),
                )
            log.info("%s from %s refused: %s", label, peer, why)
            try:
                await ws.send(error_frame(code, message))
                await ws.close(*close)
            except ConnectionClosed:
                pass
            return
        s = _Session(label, peer, worker)
        self.sessions[label] = s
        log.info(
            "%s opened from %s (worker %d; %d/%d sessions)",
            label,
            peer,
            worker.proc.pid,
            len(self.sessions),
            self.config.max_sessions,
        )
        reason = "?"
        try:
            reason = await self._relay(ws, s)
        finally:
            self.sessions.pop(label, None)
            code = await self.pool.release(worker)
            log.info(
                "%s closed: %s; %.1f s, %.1f MB in, %.1f MB out, worker exit %s",
                label,
                reason,
                time.monotonic() - s.started,
                s.bytes_in / 1e6,
                s.bytes_out / 1e6,
                code,
            )

    async def _send_error(self, ws, s: _Session, code: str, message: str, close: tuple[int, str]) -> None:
        from websockets.exceptions import ConnectionClosed

        s.error = message
        try:
            await ws.send(error_frame(code, message))
            await ws.close(*close)
        except ConnectionClosed:
            pass

    async def _relay(self, ws, s: _Session) -> str:
        """Carry frames both ways until one side ends; returns why the session ended (for the log)."""
        from websockets.exceptions import ConnectionClosed

        w = s.worker
        try:
            offer = await asyncio.wait_for(asyncio.shield(w.ready), self.config.startup_timeout)
        except (HeAeroError, TimeoutError) as exc:
            await self._send_error(
                ws, s, "internal", "the server could not load its model", (1011, "model not loaded")
            )
            return f"worker failed to load: {exc}"
        await w.attach(s.label)
        try:
            await ws.send(offer)
        except ConnectionClosed:
            return "client left before the offer"
        s.bytes_out += len(offer)

        async def from_client() -> str:
            try:
                async for message in ws:
                    if isinstance(message, str):
                        await self._send_error(
                            ws,
                            s,
                            "protocol",
                            "session closed: text message; he-aero speaks binary frames",
                            (1003, "binary frames only"),
                        )
                        return "refused a text message"
                    s.bytes_in += len(message)
                    s.messages_in += 1
                    try:
                        await w.send(message)
                    except (BrokenPipeError, ConnectionResetError):
                        return "worker gone"
            except ConnectionClosed as exc:
                if exc.sent is not None and exc.sent.code == 1009:
                    return f"refused a message over {self.max_message_bytes / 1e6:.1f} MB (close 1009)"
                return f"client closed the connection ({_close_text(exc)})"
            return "client closed the connection"

        async def to_client() -> str:
            while True:
                frame = await w.frames.get()
                if frame is None:
                    return "worker ended"
                if peek_kind(frame) == Kind.ERROR:
                    s.error = parse_frame(frame, Kind.ERROR).meta.get("message", "")
                try:
                    await ws.send(frame)
                except ConnectionClosed:
                    return "client left"
                s.bytes_out += len(frame)

        tasks = {asyncio.create_task(from_client()), asyncio.create_task(to_client())}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        reason = first.result()
        if self.stopping:
            await self._send_error(
                ws, s, "shutdown", "server shutting down; session cancelled", (1001, "shutting down")
            )
            reason = "cancelled by shutdown"
        elif reason == "worker ended":  # the worker finished, refused something, timed out, or was stopped
            code = await w.proc.wait()
            if s.error is not None:
                close = (1008, "session closed") if code in (1, 3) else (1011, "server error")
                await ws.close(*close)
                reason = s.error
            elif code == _worker.EXIT_DONE:
                await ws.close(1000, "session complete")
                reason = "session complete"
            else:
                await self._send_error(
                    ws,
                    s,
                    "internal",
                    "session closed: the server's worker stopped unexpectedly",
                    (1011, "server error"),
                )
                reason = f"worker stopped unexpectedly (exit {code})"
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return reason

    # --- the service -----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Listen, load the model in a first worker, serve until `stop()`, then shut down gracefully."""
        from websockets.asyncio.server import serve

        if self.max_message_bytes is None:
            from he_aero.plan import load_plan

            self.max_message_bytes = default_max_message_bytes(load_plan(self.config.plan))
        first = await self.pool.prime()
        try:
            async with serve(
                self._handle,
                self.config.host,
                self.config.port,
                process_request=self._process_request,
                max_size=self.max_message_bytes,
                compression=None,  # ciphertexts are random: deflate would cost CPU and save nothing
                ping_interval=self.config.ping_interval,
                ping_timeout=self.config.ping_timeout,
                ssl=self.config.ssl,
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                scheme = "wss" if self.config.ssl is not None else "ws"
                self.announce(
                    f"listening on {scheme}://{self.config.host}:{self.port} (max {self.config.max_sessions} "
                    f"sessions, messages up to {self.max_message_bytes / 1e6:.1f} MB, idle timeout "
                    f"{self.config.idle_timeout:g} s, refresh timeout {self.config.refresh_timeout:g} s)"
                )
                await self._await_first(first)
                self.ready = True
                self.announce(
                    f"ready: GET {scheme.replace('ws', 'http')}://{self.config.host}:{self.port}/ready"
                )
                await self._stop.wait()
                self.stopping = self.pool.closing = True  # no new sessions, no new spares
                log.info("shutting down: %d sessions to cancel", len(self.sessions))
                await asyncio.gather(*(s.worker.stop() for s in list(self.sessions.values())))
                for _ in range(100):  # let each session send its ERROR frame and close (at most ~5 s)
                    if not self.sessions:
                        break
                    await asyncio.sleep(0.05)
                server.close(close_connections=True, code=1001, reason="server shutting down")
                await server.wait_closed()
        finally:
            self.stopping = True
            await self.pool.close()
        log.info("stopped")

    async def _await_first(self, first: Worker) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {first.ready, stop}, timeout=self.config.startup_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
        if first.ready in done:
            first.ready.result()  # raises the worker's load error
            return
        if not self._stop.is_set():
            raise HeAeroError(f"the model did not load within {self.config.startup_timeout:g} s")


def _close_text(exc) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "no close frame"
    return f"code {frame.code}" + (f": {frame.reason}" if frame.reason else "")


def run_service(config: ServiceConfig, announce: Callable[[str], None] | None = None) -> None:
    """Run the service in this thread until SIGTERM or SIGINT; returns after a graceful shutdown."""
    import signal

    async def main() -> None:
        service = Service(config, announce)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    asyncio.run(main())
