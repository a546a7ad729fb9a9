"""One session's worker process: the model, the plan and ONE client's public keys, for one prompt.

`he-aero serve` (he_aero/server/service.py) starts one of these per session, with `python -m
he_aero.server.worker`, before a client arrives (a warm worker: importing torch and loading the weights takes
~4 s, the session's keys ~0.5 s). SEAL holds Python's GIL, so sessions in threads would take turns; separate
processes run side by side, and a session's end is the process's end: its keys, K/V cache and every byte it
allocated go back to the system, whatever state the session was in.

The worker speaks to the front end over its standard input and output (the front end relays the websocket):

    message = tag (1 byte) + length (u64, big-endian) + payload
    front end -> worker:  b"A" a client is attached (payload: the session's label for the log), once;
                          b"F" a protocol frame from the client (he_aero/protocol.py, unchanged)
    worker -> front end:  b"F" a protocol frame for the client;  b"L" one log line (UTF-8) for the operator

The session, in order: send the OFFER (the model loaded: the front end's readiness signal), wait without a
time limit for a client (b"A"; a warm worker retired unused just sees its input end), receive SETUP,
then one prompt: TOKENS -> prefill -> LOGITS, then TOKENS -> decode -> LOGITS until the context is full or
the client leaves (end of input). During a request, each refresh is a REFRESH_REQUEST out and a
REFRESH_RESPONSE in (the `refresh_link` of `Server.prefill/decode`), and each finished stage a PROGRESS frame
out. The worker waits `--idle-timeout` seconds for a request and `--refresh-timeout` for a refresh reply; any
refused frame or timeout sends one ERROR frame and ends the session (exit code 1 or 3). Nothing here can make
or hold a secret key.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import struct
import sys
import time
from collections.abc import Callable

from he_aero.errors import HeAeroError
from he_aero.protocol import Kind, Message, error_frame, parse_frame, to_frame

_TAG = struct.Struct(">cQ")
FRAME, LOG, ATTACH = b"F", b"L", b"A"

EXIT_DONE, EXIT_REFUSED, EXIT_LOAD, EXIT_TIMEOUT, EXIT_INTERNAL = 0, 1, 2, 3, 4
"""Exit codes: the client left or the context is full; a frame was refused; the model or plan did not load;
the client did not answer in time; a bug (traceback on standard error)."""


class ClientGone(Exception):
    """The front end closed the worker's input: the client disconnected."""


class ClientTimeout(Exception):
    """The client did not send what the worker waits for in time."""


class Pipe:
    """The worker's end of the front-end link: tagged, length-prefixed messages on two file descriptors."""

    def __init__(self, fd_in: int, fd_out: int):
        self.fd_in, self.fd_out = fd_in, fd_out

    def _write(self, tag: bytes, payload: bytes) -> None:
        view = memoryview(_TAG.pack(tag, len(payload)) + payload)
        while view:
            view = view[os.write(self.fd_out, view) :]

    def send(self, frame: bytes) -> None:
        self._write(FRAME, frame)

    def log(self, line: str) -> None:
        self._write(LOG, line.encode())

    def _read_exactly(self, n: int) -> bytes:
        chunks, left = [], n
        while left:
            chunk = os.read(self.fd_in, min(left, 1 << 20))
            if not chunk:
                raise ClientGone
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _message(self) -> tuple[bytes, bytes]:
        tag, n = _TAG.unpack(self._read_exactly(_TAG.size))
        return tag, self._read_exactly(n)

    def wait_attach(self) -> str:
        """Block until the front end attaches a client; returns the session's label."""
        tag, payload = self._message()
        if tag != ATTACH:
            raise HeAeroError(f"worker: expected a client to be attached, got message tag {tag!r}")
        return payload.decode()

    def recv(self, timeout: float, waiting_for: str) -> bytes:
        """The next frame from the client; ClientTimeout after `timeout` seconds without one; ClientGone at
        end of input. (The front end writes whole messages, so only the first byte is waited for.)"""
        ready, _, _ = select.select([self.fd_in], [], [], timeout)
        if not ready:
            raise ClientTimeout(f"no {waiting_for} from the client within {timeout:g} s")
        tag, payload = self._message()
        if tag != FRAME:
            raise HeAeroError(f"worker: unexpected message tag {tag!r} from the front end")
        return payload


class WorkerSession:
    """One client's session on a `Server` (he_aero/server/server.py), driven by frames from a `Pipe`."""

    def __init__(self, server, pipe: Pipe, idle_timeout: float, refresh_timeout: float):
        self.server, self.pipe = server, pipe
        self.idle_timeout, self.refresh_timeout = idle_timeout, refresh_timeout
        self.refreshes = 0

    def offer(self) -> bytes:
        """The server's OFFER with the stage names added (extra metadata: RuntimeOffer ignores it)."""
        msg = parse_frame(self.server.offer(), Kind.OFFER)
        return to_frame(
            Message(Kind.OFFER, msg.session, {**msg.meta, "stages": self.server.pipeline.stage_names})
        )

    def _refresh_link(self, request: bytes) -> bytes:
        self.pipe.send(request)
        self.refreshes += 1
        return self.pipe.recv(self.refresh_timeout, "refresh reply (REFRESH_RESPONSE)")

    def _progress(self, stage: str) -> None:
        self.pipe.send(to_frame(Message(Kind.PROGRESS, self.server.session, {"stage": stage})))

    def _with_stages(self, logits: bytes) -> bytes:
        """LOGITS with the request's stage records added (time, op counts, levels: what the in-process run
        reports; the client learns the server's timing, nothing about the weights)."""
        msg = parse_frame(logits, Kind.LOGITS, self.server.session)
        stages = [r.to_dict() for r in self.server.records]
        return to_frame(Message(Kind.LOGITS, msg.session, {**msg.meta, "stages": stages}, msg.parts))

    def run(self) -> int:
        """Serve the session; returns the exit code (see EXIT_*)."""
        server, pipe = self.server, self.pipe
        try:
            pipe.wait_attach()
            setup = pipe.recv(self.idle_timeout, "keys (SETUP)")
            t0 = time.perf_counter()
            server.receive_setup(setup)
            pipe.log(
                f"keys loaded: {len(setup) / 1e6:.1f} MB, {len(server.rotation_steps)} rotation keys, "
                f"{time.perf_counter() - t0:.2f} s (session id {server.session.hex()[:12]})"
            )
            while server.caches is None or server.caches[0].length < server.context:
                data = pipe.recv(self.idle_timeout, "request (TOKENS)")
                t0, self.refreshes = time.perf_counter(), 0
                first = server.caches is None
                run = server.prefill if first else server.decode
                reply = self._with_stages(run(data, self._refresh_link, self._progress))
                pipe.send(reply)
                position = server.caches[0].length
                pipe.log(
                    f"{'prefill' if first else 'decode'} done: position {position}/{server.context}, "
                    f"{self.refreshes} refresh rounds, {time.perf_counter() - t0:.2f} s"
                )
            pipe.log("context full: session complete")
            return EXIT_DONE
        except ClientGone:
            pipe.log("client left")
            return EXIT_DONE
        except ClientTimeout as exc:
            pipe.log(f"timeout: {exc}")
            self._error("timeout", f"session closed: {exc}")
            return EXIT_TIMEOUT
        except HeAeroError as exc:
            pipe.log(f"refused: {exc}")
            self._error("protocol", f"session closed: {exc}")
            return EXIT_REFUSED

    def _error(self, code: str, message: str) -> None:
        try:
            self.pipe.send(error_frame(code, message, self.server.session or bytes(16)))
        except OSError:  # the front end is gone too
            pass


def _widen_pipes(*fds: int) -> None:
    """Pipes of 1 MB instead of 64 KB (Linux): a refresh request (~0.5 MB at N=8192) then crosses in one
    write instead of eight writer/reader hand-offs, which cost a scheduler wake-up each on a busy machine."""
    import fcntl

    for fd in fds:
        try:
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:  # not a pipe, or above /proc/sys/fs/pipe-max-size: keep the default
            pass


def _die_with_parent() -> None:
    """Ask Linux to kill this worker if the front end dies (even by SIGKILL): no orphan holds keys."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker still ends at its next read (end of input)
        pass


def load_server(
    checkpoint: str | None,
    plan_file: str | None,
    allow_insecure_for_tests: bool,
    ray_workers: int = 0,
    ray_address: str | None = None,
    plaintext_cache_mb: float | None = None,
):
    """The `Server` for a checkpoint (default: the shipped one) and its plan (default: the shipped one),
    with `ray_workers` Ray actors for the prefill's parts (0: none) on `ray_address` (None: a private local
    Ray), each process keeping at most `plaintext_cache_mb` MB of encoded plaintexts (None: all)."""
    from he_aero.plan import load_plan
    from he_aero.server.server import Server
    from models.checkpoint import load_checkpoint
    from models.linear_view import LinearView

    plan = load_plan(plan_file)
    model, header = load_checkpoint(checkpoint)
    view = LinearView.from_model(model)
    limit = None if plaintext_cache_mb is None else int(plaintext_cache_mb * 1e6)
    pool = None
    if ray_workers:
        from he_aero.server.ray_pool import RayPool

        pool = RayPool(view, plan, workers=ray_workers, address=ray_address, cache_limit=limit)
    return Server(
        view, header, plan, allow_insecure_for_tests=allow_insecure_for_tests, pool=pool, cache_limit=limit
    )


def main(argv: list[str] | None = None, make_server: Callable | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m he_aero.server.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--plan", default=None)
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--refresh-timeout", type=float, required=True)
    parser.add_argument("--allow-insecure-for-tests", action="store_true")
    parser.add_argument("--ray-workers", type=int, default=0)
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--plaintext-cache-mb", type=float, default=None)
    args = parser.parse_args(argv)
    # The frames own the original standard output; anything a library prints goes to standard error.
    pipe = Pipe(0, os.dup(1))
    os.dup2(2, 1)
    _widen_pipes(pipe.fd_in, pipe.fd_out)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the front end, which stops the workers
    _die_with_parent()
    from models.errors import ModelError

    try:
        t0 = time.perf_counter()
        if make_server is not None:
            server = make_server(args.checkpoint, args.plan, args.allow_insecure_for_tests)
        else:
            server = load_server(
                args.checkpoint, args.plan, args.allow_insecure_for_tests, args.ray_workers, args.ray_address,
                args.plaintext_cache_mb,
            )  # fmt: skip
    except (HeAeroError, ModelError) as exc:
        pipe.log(f"cannot load the model: {exc}")
        return EXIT_LOAD
    session = WorkerSession(server, pipe, args.idle_timeout, args.refresh_timeout)
    pool = getattr(server, "pool", None)
    if pool is not None:
        pipe.log(f"{pool.workers} Ray workers ready")
    try:
        pipe.send(session.offer())
        pipe.log(f"model and plan loaded in {time.perf_counter() - t0:.1f} s")
        return session.run()
    except (BrokenPipeError, ConnectionResetError):  # the front end went away
        return EXIT_DONE
    except Exception:  # a bug: the client gets a generic error, the operator the traceback
        import traceback

        traceback.print_exc()
        session._error("internal", "session closed: internal server error (see the server's log)")
        return EXIT_INTERNAL
    finally:
        if pool is not None:  # the session's keys leave the actors with the session
            pool.close()


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown: freeing GBs of SEAL objects one by one takes seconds
