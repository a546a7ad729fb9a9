"""The client <-> server protocol: framed, versioned messages of bytes, their validation and byte accounting.

Client and server exchange nothing but the bytes `to_frame` produces, so the same objects can later run in two
processes. Frame (all integers big-endian)::

    magic      6 bytes  b"HEAERO"
    version    u16      FORMAT_VERSION
    kind       u8       Kind (OFFER, SETUP, TOKENS, LOGITS, REFRESH_REQUEST, REFRESH_RESPONSE, ERROR,
                        PROGRESS)
    reserved   u8       0
    session    16 bytes the session id the client drew at key generation (zeros in an OFFER)
    meta_len   u32      length of the JSON metadata
    n_parts    u32      number of binary parts (serialised SEAL objects)
    meta       meta_len bytes of UTF-8 JSON (an object)
    parts      n_parts x (u64 length, bytes)
    digest     32 bytes SHA-256 of everything above

Why each field: the magic and version reject foreign or stale data with a message saying so; the length
prefixes make truncation detectable before SEAL parses anything; the digest catches corruption that SEAL's own
checks miss (a flipped bit in a polynomial coefficient loads fine and decrypts to garbage). The digest is an
integrity check, not authentication: the threat model is semi-honest (docs/security.md). The session id binds
every ciphertext to the key set it was made under: ciphertexts or keys from another run are refused by id
instead of decrypting to noise.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from he_aero.errors import HeAeroError

MAGIC = b"HEAERO"
FORMAT_VERSION = 1
_HEAD = struct.Struct(">6sHBB16sII")
_LEN = struct.Struct(">Q")
DIGEST_BYTES = 32
NO_SESSION = bytes(16)


class Kind(enum.IntEnum):
    OFFER = 1  # server -> client: public runtime description (parameters, rotation steps, shapes)
    SETUP = 2  # client -> server: public, relinearisation and rotation keys (once per session)
    TOKENS = 3  # client -> server: encrypted one-hot tokens (prompt or one new token)
    LOGITS = 4  # server -> client: encrypted logits
    REFRESH_REQUEST = 5  # server -> client: masked ciphertexts
    REFRESH_RESPONSE = 6  # client -> server: the same values re-encrypted at the top level
    # Added for the network service (he_aero/server/service.py); the frame layout is unchanged, so
    # FORMAT_VERSION stays 1: a peer that predates them refuses them as "unknown message kind".
    ERROR = 7  # either way: why the session ends (meta: "code" in ERROR_CODES, "message"); no parts
    PROGRESS = 8  # server -> client: a stage of the running request finished (meta: "stage"); no reply


ERROR_CODES = ("busy", "protocol", "timeout", "shutdown", "internal")
"""Why an ERROR frame ends a session: the server is at capacity (retry later); a frame was refused; a peer
did not answer in time; the server is stopping; the server failed (details in its log, not in the frame)."""


@dataclass(frozen=True)
class Message:
    """A decoded message: its kind, session id, JSON metadata and binary parts."""

    kind: Kind
    session: bytes
    meta: dict
    parts: tuple[bytes, ...] = ()


def to_frame(msg: Message) -> bytes:
    """Frame a message (see the module docstring)."""
    if len(msg.session) != 16:
        raise HeAeroError(f"protocol: session id must be 16 bytes, got {len(msg.session)}")
    meta = json.dumps(msg.meta, sort_keys=True, separators=(",", ":")).encode()
    chunks = [
        _HEAD.pack(MAGIC, FORMAT_VERSION, int(msg.kind), 0, msg.session, len(meta), len(msg.parts)),
        meta,
    ]
    for part in msg.parts:
        chunks += [_LEN.pack(len(part)), bytes(part)]
    body = b"".join(chunks)
    return body + hashlib.sha256(body).digest()


def parse_frame(data: bytes, expect: Kind, session: bytes | None = None) -> Message:
    """Parse and validate a frame; HeAeroError says what is wrong (truncated, corrupted, foreign, stale).

    Parameters
    ----------
    expect : the kind the receiver is waiting for.
    session : the receiver's session id; a message from another session is refused (None: not checked).
    """
    what = f"{expect.name} message"
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise HeAeroError(f"protocol: {what} must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEAD.size + DIGEST_BYTES:
        raise HeAeroError(f"protocol: {what} truncated ({len(data)} bytes, shorter than a header)")
    magic, version, kind, _, sess, meta_len, n_parts = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise HeAeroError(f"protocol: {what} is not an he-aero message (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise HeAeroError(
            f"protocol: {what} has format version {version}, this he-aero speaks {FORMAT_VERSION} "
            "(client and server must run the same he-aero version)"
        )
    pos = _HEAD.size + meta_len
    if pos + DIGEST_BYTES > len(data):
        raise HeAeroError(f"protocol: {what} truncated (metadata runs past the end)")
    lengths = []
    p = pos
    for i in range(n_parts):
        if p + _LEN.size + DIGEST_BYTES > len(data):
            raise HeAeroError(f"protocol: {what} truncated (part {i} of {n_parts} missing)")
        (n,) = _LEN.unpack_from(data, p)
        p += _LEN.size + n
        lengths.append(n)
    if p + DIGEST_BYTES != len(data):
        # A cut frame and a flipped bit in a length field look the same from here: name both.
        extra = len(data) - p - DIGEST_BYTES
        problem = "too short" if extra < 0 else f"{extra} extra bytes"
        raise HeAeroError(
            f"protocol: {what} is truncated or corrupted ({problem}: the frame's lengths do not add up)"
        )
    if hashlib.sha256(data[:p]).digest() != data[p:]:
        raise HeAeroError(f"protocol: {what} is corrupted (SHA-256 digest mismatch)")
    try:
        got = Kind(kind)
    except ValueError as exc:
        raise HeAeroError(f"protocol: {what}: unknown message kind {kind}") from exc
    if got != expect:
        raise HeAeroError(f"protocol: expected a {what}, got a {got.name} message")
    if session is not None and sess != session:
        raise HeAeroError(
            f"protocol: {what} belongs to session {sess.hex()[:12]}..., this side runs "
            f"{session.hex()[:12]}... "
            "(keys or ciphertexts from another run)"
        )
    try:
        meta = json.loads(data[_HEAD.size : pos].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeAeroError(f"protocol: {what}: metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise HeAeroError(f"protocol: {what}: metadata must be a JSON object")
    parts, p = [], pos
    for n in lengths:
        parts.append(data[p + _LEN.size : p + _LEN.size + n])
        p += _LEN.size + n
    return Message(got, sess, meta, tuple(parts))


def peek_kind(data: bytes) -> Kind | None:
    """The kind a frame says it is, read from its header without validating anything (None: not a frame of
    this version, or an unknown kind); `parse_frame` still checks the frame."""
    if len(data) < _HEAD.size or data[:6] != MAGIC or _HEAD.unpack_from(data)[1] != FORMAT_VERSION:
        return None
    try:
        return Kind(data[8])
    except ValueError:
        return None


def error_frame(code: str, message: str, session: bytes = NO_SESSION) -> bytes:
    """An ERROR frame: `code` one of ERROR_CODES, `message` one line for the peer's user."""
    if code not in ERROR_CODES:
        raise HeAeroError(f"protocol: unknown error code {code!r} (one of {', '.join(ERROR_CODES)})")
    return to_frame(Message(Kind.ERROR, session, {"code": code, "message": message}))


def meta_field(msg: Message, key: str, kind: type | tuple = int):
    """A required metadata field of the expected type; HeAeroError names it otherwise."""
    value = msg.meta.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, kind):
        raise HeAeroError(f"protocol: {msg.kind.name} message: field {key!r} missing or of the wrong type")
    return value


# --- accounting -------------------------------------------------------------------------------------------
@dataclass
class Traffic:
    """Bytes and messages in each direction, by purpose, and round trips."""

    to_server: Counter = field(default_factory=Counter)  # purpose -> bytes
    to_client: Counter = field(default_factory=Counter)
    messages: Counter = field(default_factory=Counter)  # Kind name -> count
    rounds: Counter = field(default_factory=Counter)  # purpose -> round trips

    @property
    def bytes_client_to_server(self) -> int:
        return sum(self.to_server.values())

    @property
    def bytes_server_to_client(self) -> int:
        return sum(self.to_client.values())

    @property
    def total_rounds(self) -> int:
        return sum(self.rounds.values())

    def summary(self) -> dict:
        return {
            "bytes_client_to_server": self.bytes_client_to_server,
            "bytes_server_to_client": self.bytes_server_to_client,
            "bytes_by_purpose": {
                k: {"to_server": self.to_server[k], "to_client": self.to_client[k]}
                for k in sorted(set(self.to_server) | set(self.to_client))
            },
            "rounds": self.total_rounds,
            "rounds_by_purpose": dict(self.rounds),
            "messages": dict(self.messages),
        }


class Channel:
    """An in-process link that carries bytes between the two roles and counts them.

    `send_to_server` / `send_to_client` pass a frame through unchanged (a network transport would replace
    them); `round` marks the end of one request/response exchange. The optional `tamper` hook lets tests
    corrupt frames in flight.
    """

    def __init__(self, tamper: Callable[[bytes], bytes] | None = None):
        self.traffic = Traffic()
        self.tamper = tamper

    def _carry(self, data: bytes, counter: Counter, purpose: str) -> bytes:
        if not isinstance(data, bytes):
            raise HeAeroError("protocol: only bytes cross the channel")
        counter[purpose] += len(data)
        if len(data) >= _HEAD.size:
            try:
                self.traffic.messages[Kind(data[8]).name] += 1
            except ValueError:
                self.traffic.messages["unknown"] += 1
        return self.tamper(data) if self.tamper is not None else data

    def send_to_server(self, data: bytes, purpose: str) -> bytes:
        return self._carry(data, self.traffic.to_server, purpose)

    def send_to_client(self, data: bytes, purpose: str) -> bytes:
        return self._carry(data, self.traffic.to_client, purpose)

    def round(self, purpose: str) -> None:
        self.traffic.rounds[purpose] += 1


def _whole(value, name: str) -> int:
    """A JSON integer as it is (int() would cut 107.5 to 107 or read true as 1): the hiding settings."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return value


# --- the offer: what the server tells the client before keys exist ----------------------------------------
@dataclass(frozen=True)
class RuntimeOffer:
    """The public description of the encrypted runtime, sent by the server in an OFFER message.

    Everything here is public: CKKS parameters, the rotation steps the kernels use (the client makes exactly
    those keys), the slot layout (block = slots per feature column, a power of two >= the context length),
    model shape, the calibrated logit range (the client's plausibility check), the refresh settings (value
    bound, mask bits and the session's cap on refreshed polynomials, from which the client computes the
    hiding it is promised) and the SHA-256 of the weights
    and of the plan. The offer states; the client decides (he_aero/client/policy.py): nothing in it can
    lower the client's security requirements.
    """

    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int
    rotation_steps: tuple[int, ...]
    block: int
    context: int
    vocab: int
    d_model: int
    logit_domain: tuple[float, float]
    refresh_bound: float
    mask_bits: int
    max_refresh_polynomials: int
    model_sha256: str
    plan_sha256: str
    decode_rows: bool  # decode tokens and logits use the "rows" layout (packing.rows_pack)

    def to_message(self) -> Message:
        meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}
        return Message(Kind.OFFER, NO_SESSION, meta)

    @classmethod
    def from_message(cls, msg: Message) -> RuntimeOffer:
        m = msg.meta
        try:
            return cls(
                poly_modulus_degree=int(m["poly_modulus_degree"]),
                coeff_mod_bit_sizes=tuple(int(b) for b in m["coeff_mod_bit_sizes"]),
                scale_bits=int(m["scale_bits"]),
                rotation_steps=tuple(int(s) for s in m["rotation_steps"]),
                block=int(m["block"]),
                context=int(m["context"]),
                vocab=int(m["vocab"]),
                d_model=int(m["d_model"]),
                logit_domain=(float(m["logit_domain"][0]), float(m["logit_domain"][1])),
                refresh_bound=float(m["refresh_bound"]),
                mask_bits=_whole(m["mask_bits"], "mask_bits"),
                max_refresh_polynomials=_whole(m["max_refresh_polynomials"], "max_refresh_polynomials"),
                model_sha256=str(m["model_sha256"]),
                plan_sha256=str(m["plan_sha256"]),
                decode_rows=bool(m["decode_rows"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise HeAeroError(f"protocol: OFFER message: missing or malformed field ({exc})") from exc
