"""The client of `he-aero serve`: private inference against a server in another process or on another machine.

`run_remote(address, prompt, config, policy)` connects (websocket, binary messages: the frames of
he_aero/protocol.py unchanged), receives the OFFER, lets the client's own policy accept or refuse it BEFORE
any key exists (he_aero/client/policy.py: 128-bit rings, minimum hiding, an optional pinned model), uploads
the public keys once, then runs the generation loop of the in-process harness (`he_aero.session.Session`):
`RemoteServer` stands where the in-process `Server` stands, with the same methods, and carries each request
over the connection; the server's refresh requests arrive on the same connection and are answered there.

Bytes (each message's length) and rounds are counted at the socket (`protocol.Traffic`); `he_aero.wan` turns
them and the measured loopback time into a WAN estimate. Each token is passed to `on_token` as soon as it is
decrypted and chosen. Failures are HeAeroError with one line naming the server: cannot connect, busy (retry
later), the server refused a frame or timed out, the connection was lost mid-request.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

from he_aero.client.client import Client
from he_aero.client.policy import ClientPolicy
from he_aero.errors import HeAeroError
from he_aero.generation import GenerationConfig, GenerationResult
from he_aero.protocol import Channel, Kind, RuntimeOffer, Traffic, parse_frame, peek_kind
from he_aero.session import Session
from he_aero.wan import AERO_WAN, Link, describe, estimate

DEFAULT_PORT = 8765
MAX_REPLY_BYTES = 1 << 30
"""The largest message the client accepts from a server (logits and refresh requests are a few MB)."""


def server_url(address: str) -> str:
    """`HOST:PORT`, `HOST` (port 8765), `ws://HOST:PORT` or `wss://HOST:PORT` -> a websocket URL."""
    address = address.strip()
    if not address:
        raise HeAeroError("server address is empty (expected HOST:PORT)")
    if "://" in address:
        scheme = address.split("://", 1)[0].lower()
        if scheme not in ("ws", "wss"):
            raise HeAeroError(f"server address {address!r}: the scheme must be ws:// or wss://")
        return address
    host, sep, port = address.rpartition(":")
    if not sep or "]" in port:  # no port (an IPv6 literal in brackets ends with "]")
        host, port = address, str(DEFAULT_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise HeAeroError(f"server address {address!r}: the port must be a number in 1..65535")
    return f"ws://{host}:{port}"


class _SocketChannel(Channel):
    """The harness's channel when the bytes are counted at the socket (`RemoteServer`): frames pass
    through uncounted here, rounds are counted as in process."""

    def _carry(self, data: bytes, counter: Counter, purpose: str) -> bytes:
        return data


class RemoteServer:
    """The server's methods (`receive_setup`, `prefill`, `decode`, `records`, ...) over a websocket.

    Parameters
    ----------
    address : HOST:PORT or a ws:// / wss:// URL.
    traffic : where bytes and messages are counted (at the socket).
    ssl : an `ssl.SSLContext` for wss:// (None: the system's defaults for wss://).
    open_timeout : seconds for the connection and the OFFER (the server may be loading a worker).
    reply_timeout : seconds to wait for any message during a request (None: no limit; the server's own
        keepalive and the connection's end still bound it).
    """

    def __init__(
        self,
        address: str,
        traffic: Traffic,
        ssl=None,
        open_timeout: float = 120.0,
        reply_timeout: float | None = 900.0,
    ):
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        self.url = server_url(address)
        self.traffic = traffic
        self.reply_timeout = reply_timeout
        self.records: list = []
        self._stack = contextlib.ExitStack()  # `with connect(...)`: the form every websockets version keeps
        try:
            self.ws = self._stack.enter_context(
                connect(
                    self.url,
                    ssl=ssl,
                    compression=None,  # ciphertexts do not compress
                    max_size=MAX_REPLY_BYTES,
                    open_timeout=min(open_timeout, 30.0),
                    proxy=None,
                    close_timeout=5,
                )
            )
        except (OSError, InvalidURI, InvalidHandshake, TimeoutError) as exc:
            raise HeAeroError(f"server {self.url}: cannot connect ({_reason(exc)})") from exc
        try:
            self.offer_bytes = self._recv("setup", open_timeout)
            if peek_kind(self.offer_bytes) != Kind.OFFER:
                raise HeAeroError(f"server {self.url}: expected an OFFER, got {_kind_name(self.offer_bytes)}")
            msg = parse_frame(self.offer_bytes, Kind.OFFER)
            self.offer = RuntimeOffer.from_message(msg)
        except BaseException:
            self.close()
            raise
        self.stages = [str(s) for s in msg.meta.get("stages", [])]
        self.params = None  # what the client accepted (set by RemoteSession after its policy decides)
        self.session: bytes | None = None

    # --- the Server's surface (he_aero/server/server.py) --------------------------------------------------
    @property
    def context(self) -> int:
        return self.offer.context

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        return self.offer.rotation_steps

    def receive_setup(self, data: bytes) -> None:
        """Upload the keys (SETUP); the server answers nothing until the first request."""
        self._send(data, "setup")

    def prefill(self, data: bytes, refresh_link=None, progress=None) -> bytes:
        return self._request(data, "prefill", refresh_link, progress)

    def decode(self, data: bytes, refresh_link=None, progress=None) -> bytes:
        return self._request(data, "decode", refresh_link, progress)

    # --- the connection -----------------------------------------------------------------------------------
    def _send(self, data: bytes, purpose: str) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self.ws.send(data)
        except ConnectionClosed as exc:
            raise self._lost(exc, purpose) from exc
        self.traffic.to_server[purpose] += len(data)
        self.traffic.messages[_kind_name(data)] += 1

    def _recv(self, purpose: str, timeout: float | None) -> bytes:
        """The next message; an ERROR frame from the server becomes HeAeroError with its message."""
        from websockets.exceptions import ConnectionClosed

        try:
            data = self.ws.recv(timeout=timeout)
        except TimeoutError as exc:
            raise HeAeroError(f"server {self.url}: no reply within {timeout:g} s during {purpose}") from exc
        except ConnectionClosed as exc:
            raise self._lost(exc, purpose) from exc
        if isinstance(data, str):
            raise HeAeroError(f"server {self.url}: sent a text message; he-aero speaks binary frames")
        kind = peek_kind(data)
        refresh = kind == Kind.REFRESH_REQUEST and not purpose.startswith("refresh:")
        self.traffic.to_client[f"refresh:{purpose}" if refresh else purpose] += len(data)  # as in process
        self.traffic.messages[_kind_name(data)] += 1
        if kind == Kind.ERROR:
            msg = parse_frame(data, Kind.ERROR)
            raise HeAeroError(f"server {self.url}: {msg.meta.get('message', 'error')}")
        return data

    def _lost(self, exc, purpose: str) -> HeAeroError:
        frame = exc.rcvd
        if frame is None:
            how = "connection lost (the server stopped or the network failed)"
        elif frame.code == 1009:
            how = f"the server refused a message over its size limit (close 1009: {frame.reason})"
        else:
            why = f": {frame.reason}" if frame.reason else ""
            how = f"the server closed the connection (code {frame.code}{why})"
        return HeAeroError(f"server {self.url}: {how} during {purpose}")

    def _request(self, data: bytes, purpose: str, refresh_link, progress) -> bytes:
        """Send a TOKENS request; answer refresh requests and pass progress on until the LOGITS arrive."""
        self._send(data, purpose)
        while True:
            reply = self._recv(purpose, self.reply_timeout)
            kind = peek_kind(reply)
            if kind == Kind.LOGITS:
                self.records = _stage_records(parse_frame(reply, Kind.LOGITS).meta.get("stages", []))
                return reply
            if kind == Kind.REFRESH_REQUEST:
                if refresh_link is None:
                    raise HeAeroError(f"server {self.url}: asked for a refresh, this run has no refresh link")
                self._send(refresh_link(reply), f"refresh:{purpose}")
            elif kind == Kind.PROGRESS:
                if progress is not None:
                    stage = parse_frame(reply, Kind.PROGRESS, self.session).meta.get("stage")
                    progress(str(stage))
            else:
                raise HeAeroError(f"server {self.url}: unexpected {_kind_name(reply)} during {purpose}")

    def close(self) -> None:
        self._stack.close()


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _kind_name(data: bytes) -> str:
    kind = peek_kind(data)
    return kind.name if kind is not None else "unknown"


def _stage_records(stages: list) -> list:
    from he_aero.ckks.pipeline import StageRecord

    try:
        return [StageRecord(**s) for s in stages]
    except TypeError as exc:
        raise HeAeroError(f"LOGITS message: malformed stage records ({exc})") from exc


@dataclass
class RemoteResult(GenerationResult):
    """A `GenerationResult` of a remote run, with the server's address and wire figures (he_aero/wan.py)."""

    server: str = ""
    wire: dict = field(default_factory=dict)

    def summary(self) -> str:
        return super().summary() + "\n" + describe(self.wire, len(self.decode_stages))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "server": self.server, "wire": self.wire}


class RemoteSession(Session):
    """The in-process harness's generation loop (`Session.generate`, `verify`) against a `RemoteServer`.

    Parameters
    ----------
    address : HOST:PORT or a ws:// / wss:// URL.
    policy : the client's security policy (default: 128-bit rings, the default hiding minimum).
    view : the plaintext model's linear view, needed by `GenerationConfig(verify=True)` only.
    on_token : called with each generated token (a byte value) as soon as it is decrypted and chosen.
    ssl, open_timeout, reply_timeout : see `RemoteServer`.
    """

    link: Link = AERO_WAN  # the link `generate` estimates for (he_aero/wan.py)

    def __init__(
        self,
        address: str,
        policy: ClientPolicy | None = None,
        view=None,
        on_token: Callable[[int], None] | None = None,
        ssl=None,
        open_timeout: float = 120.0,
        reply_timeout: float | None = 900.0,
    ):
        # Session.__init__ builds an in-process Server; this sets the same attributes around a remote one.
        self.view = view
        self.channel = _SocketChannel()
        self.seconds: Counter = Counter()
        self._phase = "setup"
        self._on_token, self._streamed = on_token, 0
        t0 = time.perf_counter()
        self.server = RemoteServer(address, self.channel.traffic, ssl, open_timeout, reply_timeout)
        self.seconds["connect"] += time.perf_counter() - t0
        try:
            t0 = time.perf_counter()
            self.client = Client(self.server.offer_bytes, policy)  # refuses before any key exists
            self.server.params = self.client.params
            setup = self.client.keygen()
            self.server.session = self.client.session
            self.seconds["keygen"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            self.server.receive_setup(setup)
            self.channel.round("setup")
            self.seconds["send_keys"] += time.perf_counter() - t0
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.server.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- streaming: each token leaves as soon as the loop has chosen it -----------------------------------
    def _stream(self, tokens) -> None:
        for token in tokens:
            self._streamed += 1
            if self._on_token is not None:
                self._on_token(int(token))

    def _exchange(self, purpose, tokens, position, progress):
        if purpose == "decode":  # the token just chosen, about to be sent
            self._stream(tokens)
        return super()._exchange(purpose, tokens, position, progress)

    def _out_of_domain(self, tokens, config):
        """No pre-check: it needs the plan's domains and the plaintext model, which a remote client does not
        have (`GenerationConfig.check_domains`); decrypted logits are still checked (`Client`)."""
        return None

    def _verify(self, result, prompt, logits_rows, config):
        self._stream(result.tokens[self._streamed :])  # the last token, before the plaintext runs
        super()._verify(result, prompt, logits_rows, config)

    def generate(self, prompt: bytes, config: GenerationConfig, progress=None) -> RemoteResult:
        """`Session.generate` over the connection; the result also carries the WAN estimate."""
        t0 = time.perf_counter()
        res = super().generate(prompt, config, progress)
        self._stream(res.tokens[self._streamed :])
        setup = sum(self.seconds[k] for k in ("connect", "keygen", "send_keys"))
        measured = {"setup": setup}
        if res.records:
            measured["prefill"] = res.records[0].seconds
        if len(res.records) > 1:
            measured["decode"] = sum(r.seconds for r in res.records[1:])
        wire = estimate(res.traffic, measured, self.link)
        wire["generate_s"] = round(time.perf_counter() - t0, 3)
        return RemoteResult(
            **{f.name: getattr(res, f.name) for f in fields(GenerationResult)},
            server=self.server.url,
            wire=wire,
        )


def run_remote(
    address: str,
    prompt: bytes,
    config: GenerationConfig,
    policy: ClientPolicy | None = None,
    progress: Callable[[str], None] | None = None,
    on_token: Callable[[int], None] | None = None,
    expect_model: str | None = None,
    checkpoint=None,
    ssl=None,
    reply_timeout: float | None = 900.0,
) -> RemoteResult:
    """Continue `prompt` under encryption on the server at `address`; the remote `encrypt-infer --server`.

    Parameters
    ----------
    address : HOST:PORT, or a ws:// / wss:// URL.
    prompt, config : as `Session.generate` (the context rule of he_aero/generation.py).
    policy : the client's security policy (default `ClientPolicy()`).
    progress : called with each finished stage's name (the server reports them as it runs).
    on_token : called with each token as soon as it is decrypted (streaming output).
    expect_model : refuse a server whose weights have another SHA-256 (`--expect-model`).
    checkpoint : the local checkpoint `config.verify` compares with (default: the shipped model). Verifying
        needs the plaintext model on the client, so it works only when the client has the weights the server
        serves: the offer is then pinned to them (a server with other weights is refused before keys).
    ssl : an `ssl.SSLContext` for wss:// with a private CA (None: the system's trust store).

    Raises HeAeroError, one line naming the server, on any failure.
    """
    policy = policy or ClientPolicy()
    if expect_model is not None:
        policy = replace(policy, expect_model_sha256=expect_model)
    view = None
    if config.verify:
        from models.checkpoint import load_checkpoint
        from models.linear_view import LinearView

        model, header = load_checkpoint(checkpoint)
        local = str(header["weights_sha256"])
        pinned = policy.expect_model_sha256
        if pinned is not None and pinned.lower() != local.lower():
            raise HeAeroError(
                f"verify compares with the local checkpoint ({local[:12]}...), but the expected model is "
                f"{pinned[:12]}..."
            )
        policy = replace(policy, expect_model_sha256=local)
        view = LinearView.from_model(model)
    try:
        session = RemoteSession(address, policy, view, on_token, ssl, reply_timeout=reply_timeout)
    except HeAeroError as exc:
        if config.verify and "expects" in str(exc):
            raise HeAeroError(f"{exc} (--verify needs the served weights on this machine)") from exc
        raise
    with session:
        return session.generate(prompt, config, progress)
