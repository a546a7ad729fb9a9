"""The server role: the model's weights and a PUBLIC CKKS context only (it cannot decrypt; a test proves it).

Per session: `offer()` -> (client keygen) -> `receive_setup(SETUP)` -> `prefill(TOKENS)` -> `decode(TOKENS)`*.
Every input and output is a protocol frame (he_aero/protocol.py); a refresh is a REFRESH_REQUEST sent through
the `refresh_link` the caller provides (in process: the client's `handle_refresh`; later: a socket).

Token embedding (why this way): the client sends each token as an encrypted one-hot row over the 256-byte
vocabulary, in the same "features" slot layout as the activations (he_aero/ckks/packing.py). The embedding
is then one plaintext product `onehot @ tok_emb` (the same BSGS kernel as every other matrix: O(sqrt(F))
rotations, one level) plus the position rows `pos_emb[position : position + n]` added as a plaintext, so the
client needs no weights and the lookup is exact up to CKKS noise. Cheaper alternatives fail a requirement:
the client looking up rows itself needs the embedding matrix (the model owner's weights); an encrypted token
id needs a degree-255 interpolation per feature. The cost is the upload: vocab / F ciphertexts per message
(2 at N=16384 with 64-slot blocks), once per prompt and once per generated token.

The K/V cache stays encrypted on the server (one `KVCache` per layer, grown by `EncryptedLayer.decode`), so a
new token costs one query against it, not a re-run of the prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import tenseal.sealapi as seal

from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.keys import PublicBundle, ServerContext, _from_bytes, _to_bytes
from he_aero.ckks.layer import EncryptedLayer
from he_aero.ckks.linalg import PlainLinear, block_spread, block_sum
from he_aero.ckks.packing import FeatureLayout, pack
from he_aero.ckks.params import CkksParams
from he_aero.ckks.refresh import Refresher
from he_aero.errors import HeAeroError
from he_aero.protocol import Kind, Message, RuntimeOffer, decode, encode, meta_field

HIDING_BITS = 20


def block_for(context: int) -> int:
    """Slots per feature column: the smallest power of two holding the whole context (prefill and cache)."""
    return 1 << max(0, (int(context) - 1).bit_length())


@dataclass
class StageRecord:
    """Wall time, operation counts and levels of one server stage (embedding, a layer, the LM head)."""

    name: str
    seconds: float = 0.0
    ops: dict = field(default_factory=dict)
    level_in: int | None = None
    level_out: int | None = None


def _counts(ev: Evaluator) -> dict:
    s = ev.stats
    return {
        "rotations": s.n_rotations,
        "ctct_mults": s.n_ctct,
        "pt_mults": s.n_pt,
        "key_switches": s.key_switches,
        "refresh_rounds": s.refresh_rounds,
        "seal_seconds": s.seal_seconds,
    }


def _delta(after: dict, before: dict) -> dict:
    return {
        k: round(after[k] - before[k], 4) if isinstance(after[k], float) else after[k] - before[k]
        for k in after
    }


class Server:
    """The model owner's side: weights as plaintexts, the public context, the encrypted K/V cache.

    Parameters
    ----------
    view : the model's `models.linear_view.LinearView` (sink attention, softmax-only).
    calibration : a `he_aero.calibrate.Calibration` for these weights.
    header : the checkpoint header (its weights_sha256 must match the calibration's).
    params : CKKS parameters; None lets the planner (he_aero/plan.py) choose the ring from the calibrated
        plans (tests pass small insecure rings).
    hiding_bits : statistical hiding of refresh masks (docs/security.md).
    decode_rows : decode steps in the "rows" layout (protocol.rows_pack); None decides by shape: when the
        model's features fit one ciphertext and the token upload is at most twice the "features" one's
        (N=16384, T=64: 4 ciphertexts instead of 2, 6 rotations and 5 products instead of 37 and 256 for
        the embedding, 34 rotations and 8 products instead of 29 and 256 for the LM head).
    """

    def __init__(
        self,
        view,
        calibration,
        header: dict,
        params: CkksParams | None = None,
        hiding_bits=HIDING_BITS,
        decode_rows: bool | None = None,
    ):
        calibration.check_checkpoint(header)
        if len(view.layers) != len(calibration.layers):
            raise HeAeroError(
                f"calibration has {len(calibration.layers)} layers, the model {len(view.layers)}: "
                "wrong calibration"
            )
        self.view, self.calibration, self.header = view, calibration, header
        self.hiding_bits = int(hiding_bits)
        self.vocab, self.d = view.tok_emb.shape
        self.context = view.pos_emb.shape[0]
        self.plan = None
        if params is None:
            from he_aero.plan import make_plan

            # The planner fits the exp and 1/x plans to each candidate ring's refresh budget on the
            # calibrated windows (the calibration's own plans assume a deep chain and would rule out
            # N=8192, the fastest ring), so the layers below run the chosen ring's plans.
            shape, ranges = calibration.model_shape(), calibration.planner_ranges()
            self.plan = make_plan(shape, ranges, hiding_bits=self.hiding_bits)
            params = self.plan.chosen.params
        self.params = params
        if not self.params.insecure_for_tests:
            self.params.require_secure()
        self.block = block_for(self.context)
        if self.block > self.params.slots:
            raise HeAeroError(f"context {self.context} does not fit {self.params.slots} slots")
        per_ct = self.params.slots // self.block
        if decode_rows is None:
            decode_rows = self.d <= per_ct and -(-self.vocab // self.block) <= 2 * -(-self.vocab // per_ct)
        if decode_rows and self.d > per_ct:
            raise HeAeroError(
                f"decode_rows: d={self.d} features do not fit one ciphertext of {per_ct} blocks"
            )
        self.rows = bool(decode_rows)
        plans = (
            self.plan.chosen.plans
            if self.plan is not None
            else [(c.exp_plan, c.recip_plan) for c in calibration.layers]
        )
        self.layers = [
            EncryptedLayer(i, lay, exp_plan, recip_plan)
            for i, (lay, (exp_plan, recip_plan)) in enumerate(zip(view.layers, plans, strict=True))
        ]
        self._linears: dict = {}
        self.rotation_steps = self._rotation_steps()
        self.ev: Evaluator | None = None
        self.session: bytes | None = None
        self.caches: list | None = None
        self.records: list[StageRecord] = []

    # --- layouts and plaintext maps -----------------------------------------------------------------------
    def layout(self, n_tokens: int, n_features: int | None = None) -> FeatureLayout:
        return FeatureLayout(self.params.slots, self.block, n_features or self.d, n_tokens)

    def _linear(self, which: str, n_tokens: int) -> PlainLinear:
        key = (which, n_tokens)
        if key not in self._linears:
            if which == "embed":  # onehot (n, vocab) @ tok_emb (vocab, d)
                self._linears[key] = PlainLinear(
                    "embed", self.view.tok_emb, None, self.layout(n_tokens, self.vocab)
                )
            else:  # x (n, d) @ lm_head (d, vocab) + lm_bias
                self._linears[key] = PlainLinear(
                    "lm", self.view.lm_head, self.view.lm_bias, self.layout(n_tokens)
                )
        return self._linears[key]

    def _embed(self, ev: Evaluator, onehot: list[Ct], position: int, n: int, rows: bool = False) -> list[Ct]:
        """x = onehot @ tok_emb + pos_emb[position : position + n] in the features layout."""
        if rows:
            return self._embed_rows(ev, onehot, position)
        xs = self._linear("embed", n)(ev, onehot)
        pos = pack(self.view.pos_emb[position : position + n], self.layout(n))
        return [
            ev.add_plain(x, ("pos", position, n, i), lambda v=v: v)
            for i, (x, v) in enumerate(zip(xs, pos, strict=True))
        ]

    def _embed_rows(self, ev: Evaluator, onehot: list[Ct], position: int) -> list[Ct]:
        """One token whose one-hot is in the "rows" layout: chunk c times P_c, P_c[j B + t] =
        tok_emb[c B + t, j], summed over chunks (one rescale) and over rows (log2 B rotations: row 0 of
        block j = x_j); a row-0 mask (one level) clears the partial sums left in rows >= 1; + pos_emb."""
        B, F, layout = self.block, self.params.slots // self.block, self.layout(1)

        def chunk(c):
            p = np.zeros((F, B))  # (block j, row t)
            part = self.view.tok_emb[c * B : (c + 1) * B]  # (<= B, d)
            p[: self.d, : part.shape[0]] = part.T
            return p.ravel()

        terms = [(ct, ("embed-rows", c), lambda c=c: chunk(c)) for c, ct in enumerate(onehot)]
        y = block_sum(ev, ev.dot_plain(terms, layout), B, 1)
        x = ev.mul_plain(
            y, ("row0", "features"), lambda: layout.row_mask() * (np.arange(self.params.slots) < self.d * B)
        )
        pos = pack(self.view.pos_emb[position : position + 1], layout)[0]
        return [ev.add_plain(x, ("pos", position, 1, 0), lambda: pos, layout)]

    def _lm_rows(self, ev: Evaluator, ref: Refresher, xs: list[Ct]) -> list[Ct]:
        """Decode LM head: x (row 0 of each block, other rows 0) spread over the rows (log2 B rotations),
        times Q_c[j B + t] = lm_head[j, c B + t], summed over blocks (log2 F rotations): logit c B + t lands
        in row t of block 0 of chunk c; a mask (one level) clears the partial sums elsewhere; + the bias."""
        B, F = self.block, self.params.slots // self.block
        (x,) = ref.ensure(xs, 2, "lm head")
        spread = block_spread(ev, x, B, 1)
        out = []
        for c in range(-(-self.vocab // B)):

            def chunk(c=c):
                q = np.zeros((F, B))
                part = self.view.lm_head[:, c * B : (c + 1) * B]  # (d, <= B)
                q[: self.d, : part.shape[1]] = part
                return q.ravel()

            z = block_sum(ev, ev.mul_plain(spread, ("lm-rows", c), chunk), F, B)
            width = min(B, self.vocab - c * B)
            z = ev.mul_plain(
                z, ("block0", width), lambda w=width: (np.arange(self.params.slots) < w).astype(float)
            )
            bias = np.zeros(self.params.slots)
            bias[:width] = self.view.lm_bias[c * B : c * B + width]
            out.append(ev.add_plain(z, ("lm-rows-bias", c), lambda b=bias: b))
        return out

    # --- the pipeline, shared by the real and the symbolic runs -------------------------------------------
    def _run(self, ev: Evaluator, ref: Refresher, onehot: list[Ct], position: int, n: int, caches, progress):
        """Embedding, layers (prefill when caches is None, else one decode step), LM head; returns
        (logit ciphertexts, caches) and appends a StageRecord per stage."""
        records = []

        def stage(name, fn, level_in):
            t0, c0 = time.perf_counter(), _counts(ev)
            out = fn()
            cts = out[0] if isinstance(out, tuple) else out
            records.append(
                StageRecord(name, time.perf_counter() - t0, _delta(_counts(ev), c0), level_in, ev.lowest(cts))
            )
            if progress is not None:
                progress(name)
            return out

        layout = self.layout(n)
        rows = self.rows and caches is not None  # decode steps: "rows" layout in and out
        xs = stage("embed", lambda: self._embed(ev, onehot, position, n, rows), ev.lowest(onehot))
        new_caches = []
        for i, layer in enumerate(self.layers):
            lvl = ev.lowest(xs)
            if caches is None:
                xs, cache = stage(
                    f"layer {i}", lambda layer=layer, xs=xs: layer.prefill(ev, ref, xs, layout), lvl
                )
                new_caches.append(cache)
            else:
                xs = stage(
                    f"layer {i}",
                    lambda layer=layer, xs=xs, c=caches[i]: layer.decode(ev, ref, xs, c, layout),
                    lvl,
                )
        lvl = ev.lowest(xs)
        if rows:
            logits = stage("lm_head", lambda: self._lm_rows(ev, ref, xs), lvl)
        else:
            logits = stage("lm_head", lambda: self._linear("lm", n)(ev, ref.ensure(xs, 1, "lm head")), lvl)
        self.records = records
        return logits, (new_caches if caches is None else caches)

    def _rotation_steps(self) -> tuple[int, ...]:
        """Every rotation the kernels use, collected by running the pipeline symbolically (no SEAL objects):
        a prefill of the full context (all attention lags) and decode steps at every cache length."""
        ev = Evaluator(self.params, None)
        ref = Refresher(ev, None, bound=self.calibration.activation_bound, hiding_bits=self.hiding_bits)
        vocab_layout = self.layout(self.context, self.vocab)
        onehot = [Ct(None, ev.top, vocab_layout) for _ in range(vocab_layout.n_ct)]
        _, caches = self._run(ev, ref, onehot, 0, self.context, None, None)
        # decode steps: shorten the symbolic cache to each length (their rotations differ by length only)
        one_layout = None if self.rows else self.layout(1, self.vocab)
        one = [Ct(None, ev.top, one_layout) for _ in range(self._token_cts(self.rows))]
        for length in range(1, self.context):
            for c in caches:
                c.length = length
            self._run(ev, ref, one, length, 1, caches, None)
        self._linears.clear()
        for layer in self.layers:
            layer._linears.clear()
        return tuple(sorted(ev.stats.steps_used))

    def symbolic_records(self, n_tokens: int) -> list[StageRecord]:
        """Per-stage operation counts and levels of a prefill of n_tokens, without encrypting anything
        (for --explain and the benchmark's op counts)."""
        ev = Evaluator(self.params, None)
        ref = Refresher(ev, None, bound=self.calibration.activation_bound, hiding_bits=self.hiding_bits)
        lay = self.layout(n_tokens, self.vocab)
        self._run(ev, ref, [Ct(None, ev.top, lay) for _ in range(lay.n_ct)], 0, n_tokens, None, None)
        return self.records

    # --- protocol -----------------------------------------------------------------------------------------
    def offer(self) -> bytes:
        """The OFFER message: the public description the client needs to make keys and tokens."""
        p = self.params
        return encode(
            RuntimeOffer(
                poly_modulus_degree=p.poly_modulus_degree,
                coeff_mod_bit_sizes=p.coeff_mod_bit_sizes,
                scale_bits=p.scale_bits,
                insecure_for_tests=p.insecure_for_tests,
                rotation_steps=self.rotation_steps,
                block=self.block,
                context=self.context,
                vocab=self.vocab,
                d_model=self.d,
                logit_domain=tuple(self.calibration.logit_domain),
                refresh_bound=self.calibration.activation_bound,
                hiding_bits=self.hiding_bits,
                model_sha256=str(self.header["weights_sha256"]),
                decode_rows=self.rows,
            ).to_message()
        )

    def receive_setup(self, data: bytes) -> None:
        """Build the public context from the client's SETUP message (public, relin and rotation keys)."""
        msg = decode(data, Kind.SETUP)
        if len(msg.parts) != 3:
            raise HeAeroError(
                f"server: SETUP message has {len(msg.parts)} parts, expected 3 (pk, relin, galois)"
            )
        steps = tuple(int(s) for s in msg.meta.get("rotation_steps", ()))
        missing = sorted(set(self.rotation_steps) - set(steps))
        if missing:
            raise HeAeroError(f"server: the client's keys lack rotation steps {missing[:8]}...")
        bundle = PublicBundle(self.params, *msg.parts, rotation_steps=steps)
        try:
            ctx = ServerContext.from_bundle(bundle)
        except (RuntimeError, ValueError, TypeError, OSError) as exc:
            raise HeAeroError(
                f"server: the SETUP keys do not load under the offered parameters ({exc})"
            ) from exc
        self.session = msg.session
        self.ev = Evaluator(self.params, ctx)
        self.caches = None

    def _require_setup(self, stage: str) -> Evaluator:
        if self.ev is None:
            raise HeAeroError(f"server: {stage} needs the client's keys; receive_setup() has not run")
        return self.ev

    def _load_tokens(self, ev: Evaluator, data: bytes) -> tuple[list[Ct], int, int]:
        msg = decode(data, Kind.TOKENS, self.session)
        position, n = meta_field(msg, "position"), meta_field(msg, "n_tokens")
        if not (0 <= position and 1 <= n and position + n <= self.context):
            raise HeAeroError(f"server: tokens at positions {position}..{position + n - 1} leave the context")
        rows = self.rows and n == 1 and position > 0  # the client's rule (Client._rows)
        if msg.meta.get("layout") != ("rows" if rows else "features"):
            raise HeAeroError(
                f"server: TOKENS message has layout {msg.meta.get('layout')!r}, not the offered one"
            )
        layout = None if rows else self.layout(n, self.vocab)
        expected = self._token_cts(rows, n)
        if len(msg.parts) != expected:
            raise HeAeroError(f"server: TOKENS message has {len(msg.parts)} ciphertexts, expected {expected}")
        cts = []
        for i, blob in enumerate(msg.parts):
            try:
                ct = _from_bytes(seal.Ciphertext, ev.server.seal_context, blob)
            except (RuntimeError, ValueError, TypeError, OSError) as exc:
                raise HeAeroError(f"server: token ciphertext {i} does not load ({exc})") from exc
            if ct.size() != 2 or ct.parms_id() != ev.parms_ids[ev.top] or ct.scale != ev.scales[ev.top]:
                raise HeAeroError(f"server: token ciphertext {i} is not a fresh top-level encryption")
            cts.append(Ct(ct, ev.top, layout))
        return cts, position, n

    def _token_cts(self, rows: bool, n: int = 1) -> int:
        """Ciphertexts in a TOKENS message: vocab / block in "rows", vocab / F in "features"."""
        return -(-self.vocab // self.block) if rows else self.layout(n, self.vocab).n_ct

    def _refresher(self, ev: Evaluator, link: Callable[[bytes], bytes] | None) -> Refresher:
        def callback(blobs: list[bytes]) -> list[bytes]:
            reply = decode(
                link(encode(Message(Kind.REFRESH_REQUEST, self.session, {"n": len(blobs)}, tuple(blobs)))),
                Kind.REFRESH_RESPONSE,
                self.session,
            )
            if len(reply.parts) != len(blobs):
                raise HeAeroError(
                    f"server: refresh reply has {len(reply.parts)} ciphertexts, sent {len(blobs)}"
                )
            return list(reply.parts)

        return Refresher(
            ev,
            None if link is None else callback,
            bound=self.calibration.activation_bound,
            hiding_bits=self.hiding_bits,
        )

    def _logits_message(self, cts: list[Ct], position: int, n: int, rows: bool = False) -> bytes:
        layout = "rows" if rows else "features"
        meta = {"position": position, "n_tokens": n, "levels": [c.level for c in cts], "layout": layout}
        return encode(Message(Kind.LOGITS, self.session, meta, tuple(_to_bytes(c.data) for c in cts)))

    def prefill(self, data: bytes, refresh_link=None, progress=None) -> bytes:
        """Run the prompt (TOKENS at position 0); keep the K/V caches; return LOGITS for every position."""
        ev = self._require_setup("prefill")
        onehot, position, n = self._load_tokens(ev, data)
        if position != 0:
            raise HeAeroError(f"server: a prompt starts at position 0, not {position}")
        logits, self.caches = self._run(ev, self._refresher(ev, refresh_link), onehot, 0, n, None, progress)
        return self._logits_message(logits, 0, n)

    def decode(self, data: bytes, refresh_link=None, progress=None) -> bytes:
        """One new token (TOKENS with n_tokens 1 at the next position) against the caches; LOGITS of it."""
        ev = self._require_setup("decode")
        if self.caches is None:
            raise HeAeroError("server: decode needs a prompt first; prefill() has not run")
        onehot, position, n = self._load_tokens(ev, data)
        if n != 1 or position != self.caches[0].length:
            raise HeAeroError(
                f"server: decode takes the token at position {self.caches[0].length}, got {n} at {position}"
            )
        logits, _ = self._run(
            ev, self._refresher(ev, refresh_link), onehot, position, 1, self.caches, progress
        )
        return self._logits_message(logits, position, 1, self.rows)

    def secret_material(self) -> list[str]:
        """Names of any attribute (one level deep, and the public context) that is a SEAL secret key or a
        decryptor: always empty, which tests assert."""
        found = []
        objs = dict(vars(self))
        if self.ev is not None and self.ev.server is not None:
            objs.update({f"ctx.{k}": v for k, v in vars(self.ev.server).items()})
            objs.update({f"ev.{k}": v for k, v in vars(self.ev).items()})
        for name, obj in objs.items():
            if isinstance(obj, (seal.SecretKey, seal.Decryptor, seal.KeyGenerator)):
                found.append(name)
        return found
