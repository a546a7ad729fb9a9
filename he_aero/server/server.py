"""The server role: the model's weights, a loaded execution plan and a PUBLIC CKKS context only.

Per session: `offer()` -> (client keygen) -> `receive_setup(SETUP)` -> `prefill(TOKENS)` -> `decode(TOKENS)`*.
Every input and output is a protocol frame (he_aero/protocol.py); a refresh is a REFRESH_REQUEST sent through
the `refresh_link` the caller provides (in process: the client's `handle_refresh`; later: a socket).

Nothing is fitted or planned here: the constructor checks that the plan (he_aero/plan.py) was compiled for
these weights and prepares the pipeline (he_aero/ckks/pipeline.py). This package imports nothing that can
make or hold a secret key (tests/he_aero/test_imports.py).
"""

from __future__ import annotations

from collections.abc import Callable

from he_aero.ckks.backend import PublicKeys, public_context
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.pipeline import Pipeline, StageRecord
from he_aero.ckks.refresh import Refresher
from he_aero.ckks.rns import IntPoly
from he_aero.errors import HeAeroError
from he_aero.protocol import Kind, Message, RuntimeOffer, meta_field, parse_frame, to_frame


class Server:
    """The model owner's side: weights as plaintexts, the public context, the encrypted K/V cache.

    Parameters
    ----------
    view : the model's `models.linear_view.LinearView` (sink attention, softmax-only).
    header : its checkpoint header; the plan must have been compiled for these weights.
    plan : the `he_aero.plan.ExecutionPlan` to run.
    allow_insecure_for_tests : accept a plan on a ring below 128-bit security (tests only; no command-line
        flag or peer message sets it).
    pool : worker processes for the prefill's independent parts (an Executor with `attach(PublicKeys)`,
        he_aero/server/ray_pool.py `RayPool`); None runs everything in this process.
    cache_limit : bytes of encoded weight plaintexts this process keeps (`Evaluator`'s `cache_limit`; None:
        all of them).

    Raises HeAeroError when the plan does not fit the weights or its ring is insecure.
    """

    def __init__(
        self,
        view,
        header: dict,
        plan,
        allow_insecure_for_tests: bool = False,
        pool=None,
        cache_limit: int | None = None,
    ):
        plan.check_checkpoint(header)
        vocab, d = view.tok_emb.shape
        got = (d, len(view.layers), view.pos_emb.shape[0], vocab)
        want = (plan.shape.d_model, plan.shape.n_layer, plan.shape.t_max, plan.shape.vocab)
        if got != want:
            raise HeAeroError(f"the plan is for (d, layers, T, vocab) = {want}, the model has {got}")
        variant = header.get("config", {}).get("variant", "softmax-only")
        if variant != plan.shape.variant:
            raise HeAeroError(f"the plan is for a {plan.shape.variant} model, the checkpoint is {variant}")
        if not plan.params.is_secure and not allow_insecure_for_tests:
            plan.params.require_secure()
        self.view, self.header, self.plan, self.params = view, header, plan, plan.params
        self.pipeline = Pipeline.for_plan(view, plan)
        self.context = self.pipeline.context
        self.pool, self.cache_limit = pool, cache_limit
        self.ev: Evaluator | None = None
        self.session: bytes | None = None
        self.caches: list | None = None
        self.records: list[StageRecord] = []
        self.refreshed = 0  # polynomials refreshed in this session: capped by the plan (hiding budget)
        self._decode_plaintexts: dict | None = None  # (key, level, use) -> make, from a symbolic decode

    @property
    def rotation_steps(self) -> tuple[int, ...]:
        return self.plan.rotation_steps

    # --- protocol -----------------------------------------------------------------------------------------
    def offer(self) -> bytes:
        """The OFFER message: the public description the client needs to make keys and tokens."""
        p, plan = self.params, self.plan
        return to_frame(
            RuntimeOffer(
                poly_modulus_degree=p.poly_modulus_degree,
                coeff_mod_bit_sizes=p.coeff_mod_bit_sizes,
                scale_bits=p.scale_bits,
                rotation_steps=plan.rotation_steps,
                block=plan.block,
                context=self.context,
                vocab=self.pipeline.vocab,
                d_model=self.pipeline.d,
                logit_domain=tuple(plan.logit_domain),
                refresh_bound=plan.activation_bound,
                mask_bits=plan.mask_bits,
                max_refresh_polynomials=plan.max_refresh_polynomials,
                model_sha256=str(self.header["weights_sha256"]),
                plan_sha256=plan.sha256,
                decode_rows=plan.decode_rows,
            ).to_message()
        )

    def receive_setup(self, data: bytes) -> None:
        """Build the public context from the client's SETUP message (public, relin and rotation keys)."""
        msg = parse_frame(data, Kind.SETUP)
        if len(msg.parts) != 3:
            raise HeAeroError(
                f"server: SETUP message has {len(msg.parts)} parts, expected 3 (pk, relin, galois)"
            )
        steps = tuple(int(s) for s in msg.meta.get("rotation_steps", ()))
        missing = sorted(set(self.rotation_steps) - set(steps))
        if missing:
            raise HeAeroError(f"server: the client's keys lack rotation steps {missing[:8]}...")
        keys = PublicKeys(self.params, *msg.parts, rotation_steps=steps)
        try:
            ctx = public_context(keys)
        except HeAeroError as exc:
            raise HeAeroError(f"server: SETUP: {exc}") from exc
        if not ctx.has_conjugation():
            raise HeAeroError("server: the client's keys lack the conjugation key (real projection)")
        self.session = msg.session
        self.ev = Evaluator(self.params, ctx, cache_limit=self.cache_limit)
        if self.pool is not None:
            self.pool.attach(keys)
            self.ev.executor = self.pool
        self.prepare_decode()
        self.caches = None
        self.refreshed = 0

    def prepare_decode(self) -> int:
        """Encode the decode step's weight plaintexts now (at SETUP) rather than in the first decoded token;
        they depend on the weights and the ring only. Returns the bytes the session's plaintext cache holds
        afterwards."""
        ev = self._require_setup("prepare_decode")
        if self._decode_plaintexts is None:  # one symbolic decode per server, reused by every session
            plan = self.plan
            self._decode_plaintexts = self.pipeline.decode_plaintexts(plan.activation_bound, plan.mask_bits)
        ev.prepare(self._decode_plaintexts)
        return ev.cache_bytes()

    def _require_setup(self, stage: str) -> Evaluator:
        if self.ev is None:
            raise HeAeroError(f"server: {stage} needs the client's keys; receive_setup() has not run")
        return self.ev

    def _load_tokens(self, ev: Evaluator, data: bytes) -> tuple[list[Ct], int, int]:
        msg = parse_frame(data, Kind.TOKENS, self.session)
        position, n = meta_field(msg, "position"), meta_field(msg, "n_tokens")
        if not (0 <= position and 1 <= n and position + n <= self.context):
            raise HeAeroError(f"server: tokens at positions {position}..{position + n - 1} leave the context")
        rows = self.pipeline.rows_step(n, position)
        if msg.meta.get("layout") != ("rows" if rows else "features"):
            raise HeAeroError(
                f"server: TOKENS message has layout {msg.meta.get('layout')!r}, not the offered one"
            )
        layout = None if rows else self.pipeline.layout(n, self.pipeline.vocab)
        expected = self.pipeline.token_cts(rows, n)
        if len(msg.parts) != expected:
            raise HeAeroError(f"server: TOKENS message has {len(msg.parts)} ciphertexts, expected {expected}")
        cts = [
            ev.load_client(blob, f"server: token ciphertext {i}", layout) for i, blob in enumerate(msg.parts)
        ]
        return cts, position, n

    def _refresher(self, ev: Evaluator, link: Callable[[bytes], bytes] | None) -> Refresher:
        def callback(blobs: list[bytes]) -> list[bytes]:
            reply = parse_frame(
                link(to_frame(Message(Kind.REFRESH_REQUEST, self.session, {"n": len(blobs)}, tuple(blobs)))),
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
            bound=self.plan.activation_bound,
            mask_bits=self.plan.mask_bits,
            max_polynomials=self.plan.max_refresh_polynomials - self.refreshed,
        )

    def _logits_message(self, ev: Evaluator, cts: list[Ct], position: int, n: int, rows: bool) -> bytes:
        """LOGITS: each ciphertext re-randomised (so its c1 is no function of the weights: the client could
        otherwise test candidate LM-head weights against it, as at a refresh) and, with the plan's
        `logit_flood_bits` f > 0, flooded: a uniform integer in [-2^f, 2^f) added to every coefficient,
        drowning the weight-dependent CKKS noise below it (docs/security.md, "Logits")."""
        layout = "rows" if rows else "features"
        meta = {"position": position, "n_tokens": n, "levels": [c.level for c in cts], "layout": layout}
        flood = self.plan.logit_flood_bits
        out = []
        for c in cts:
            c = ev.rerandomize(c)
            if flood:
                c = ev.add_integer_poly(c, IntPoly.uniform(flood, self.params.poly_modulus_degree))
            out.append(ev.to_bytes(c))
        return to_frame(Message(Kind.LOGITS, self.session, meta, tuple(out)))

    def prefill(self, data: bytes, refresh_link=None, progress=None) -> bytes:
        """Run the prompt (TOKENS at position 0); keep the K/V caches; return LOGITS for every position."""
        ev = self._require_setup("prefill")
        onehot, position, n = self._load_tokens(ev, data)
        if position != 0:
            raise HeAeroError(f"server: a prompt starts at position 0, not {position}")
        ref = self._refresher(ev, refresh_link)
        try:
            logits, self.caches, self.records = self.pipeline.run(ev, ref, onehot, 0, n, None, progress)
        finally:
            self.refreshed += ref.log.ciphertexts
        return self._logits_message(ev, logits, 0, n, False)

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
        ref = self._refresher(ev, refresh_link)
        try:
            logits, _, self.records = self.pipeline.run(ev, ref, onehot, position, 1, self.caches, progress)
        finally:
            self.refreshed += ref.log.ciphertexts
        return self._logits_message(ev, logits, position, 1, self.pipeline.rows)
