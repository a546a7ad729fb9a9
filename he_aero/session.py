"""The in-process harness: a client and a server in one process, joined by a byte-counting channel.

Encrypted generation: prefill the prompt, then decode one token at a time against the encrypted K/V cache.
A `Session` wires a `Client` (he_aero/client/) and a `Server` (he_aero/server/) through a `Channel` that
carries only protocol bytes and counts them; the default `he-aero encrypt-infer` run and the tests use it.
Per generated token the client decrypts one row of logits, checks it (he_aero/client/client.py), picks the
token (greedy, or sampled with a temperature and top-k from a seeded generator) and sends it back encrypted.
`verify` runs the plaintext reference (`models.linear_view.view_forward`) on the same tokens and compares
every generated position's logits: top-1 agreement and max |delta logit|. The context rule is in
he_aero/generation.py.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from he_aero.ckks.pipeline import StageRecord
from he_aero.client.client import Client
from he_aero.client.policy import ClientPolicy
from he_aero.generation import GenerationConfig, GenerationResult, TokenRecord, fit_prompt, pick_token
from he_aero.protocol import Channel
from he_aero.server.server import Server


class Session:
    """A client and a server joined by a byte-counting channel; one prompt at a time.

    Parameters
    ----------
    view, header : the model's linear view and checkpoint header (server side).
    plan : the `he_aero.plan.ExecutionPlan` the server runs (compiled for these weights).
    channel : the byte link (tests pass one that tampers with frames).
    policy : the client's security policy (default: 128-bit rings, the default hiding minimum).
    allow_insecure_for_tests : let the server run a test-only insecure ring (the client's policy must allow
        it too).
    pool : the server's worker processes (`Server`'s `pool`, e.g. he_aero/server/ray_pool.py `RayPool`).
    cache_limit : the server's plaintext cache limit in bytes (`Server`'s `cache_limit`).
    """

    def __init__(
        self,
        view,
        header,
        plan,
        channel: Channel | None = None,
        policy: ClientPolicy | None = None,
        allow_insecure_for_tests: bool = False,
        pool=None,
        cache_limit: int | None = None,
    ):
        self.view = view
        self.channel = channel or Channel()
        self.seconds: Counter = Counter()
        self._phase = "setup"
        t0 = time.perf_counter()
        self.server = Server(
            view,
            header,
            plan,
            allow_insecure_for_tests=allow_insecure_for_tests,
            pool=pool,
            cache_limit=cache_limit,
        )
        self.seconds["server_setup"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.client = Client(self.channel.send_to_client(self.server.offer(), "setup"), policy)
        setup = self.client.keygen()
        self.seconds["keygen"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.server.receive_setup(self.channel.send_to_server(setup, "setup"))
        self.channel.round("setup")
        self.seconds["server_load_keys"] += time.perf_counter() - t0

    @property
    def context(self) -> int:
        return self.server.context

    def _refresh_link(self, req: bytes) -> bytes:
        """One refresh round, accounted to the phase that needed it ("refresh:prefill" / "refresh:decode")."""
        purpose = f"refresh:{self._phase}"
        reply = self.client.handle_refresh(self.channel.send_to_client(req, purpose))
        self.channel.round(purpose)
        return self.channel.send_to_server(reply, purpose)

    def _exchange(self, purpose: str, tokens, position: int, progress):
        """Encrypt -> server (prefill or decode) -> decrypt; returns (DecryptedLogits, seconds) and times
        each side."""
        t0 = time.perf_counter()
        self._phase = purpose
        msg = self.client.encrypt_tokens(tokens, position)
        t1 = time.perf_counter()
        run = self.server.prefill if purpose == "prefill" else self.server.decode
        reply = run(self.channel.send_to_server(msg, purpose), self._refresh_link, progress)
        t2 = time.perf_counter()
        out = self.client.decrypt_logits(self.channel.send_to_client(reply, purpose))
        self.channel.round(purpose)
        t3 = time.perf_counter()
        self.seconds["encrypt"] += t1 - t0
        self.seconds[purpose] += t2 - t1
        self.seconds["decrypt"] += t3 - t2
        return out, t3 - t0

    def forward(self, tokens, position: int = 0, progress: Callable[[str], None] | None = None):
        """One encrypted pass without sampling: a prefill of `tokens` at position 0, or (position > 0, after a
        prefill) a decode step of one token against the K/V cache. Returns (the client's `DecryptedLogits`,
        wall seconds); `self.server.records` holds the pass's stages (benchmarks, teacher-forced checks)."""
        return self._exchange("prefill" if position == 0 else "decode", list(tokens), position, progress)

    def generate(
        self, prompt: bytes, config: GenerationConfig, progress: Callable[[str], None] | None = None
    ) -> GenerationResult:
        """Continue `prompt` under encryption (see the module docstring for the context rule); stops at the
        first token whose logits the client flags."""
        prompt, dropped = fit_prompt(prompt, self.context, config.max_new_tokens)
        rng = np.random.default_rng(config.seed)
        tokens = list(prompt)
        flag = self._out_of_domain(tokens, config)
        if flag is None:
            out, dt = self._exchange("prefill", tokens, 0, progress)
            step = (out.logits[-1], out.flag, dt, len(tokens) - 1)  # (logits row, flag, seconds, position)
        else:
            step = (None, flag, 0.0, len(tokens) - 1)
        prefill_stages = list(self.server.records)
        decode_stages: list[list[StageRecord]] = []
        records, generated, logits_rows = [], [], []
        while True:
            logits, flag, dt, pos = step
            if flag is not None:
                records.append(TokenRecord(-1, pos, dt, flag=flag))
                break
            token = pick_token(logits, config, rng)
            records.append(TokenRecord(token, pos, dt))
            logits_rows.append(logits)
            generated.append(token)
            tokens.append(token)
            if len(generated) == config.max_new_tokens:
                break
            flag = self._out_of_domain(tokens, config)
            if flag is not None:
                step = (None, flag, 0.0, len(tokens) - 1)
                continue
            out, dt = self._exchange("decode", [token], len(tokens) - 1, progress)
            decode_stages.append(list(self.server.records))
            step = (out.logits[0], out.flag, dt, len(tokens) - 1)
        result = GenerationResult(
            prompt=prompt,
            dropped_prompt_bytes=dropped,
            tokens=generated,
            records=records,
            seconds={},
            traffic={},
            client_decryptions={},
            prefill_stages=prefill_stages,
            decode_stages=decode_stages,
            ring_degree=self.server.params.poly_modulus_degree,
            levels=self.server.params.levels,
            rotation_keys=len(self.server.rotation_steps),
            hiding=self.client.hiding,
            flag=records[-1].flag,
        )
        if config.verify:
            t0 = time.perf_counter()
            self._verify(result, list(prompt), logits_rows, config)
            self.seconds["verify"] += time.perf_counter() - t0
        result.seconds = {k: round(v, 3) for k, v in self.seconds.items()}
        result.traffic = self.channel.traffic.summary()
        result.client_decryptions = dict(self.client.decryptions)
        return result

    def _out_of_domain(self, tokens: list[int], config: GenerationConfig) -> str | None:
        """The client's pre-check (it holds the model here): why the next step would leave the plan's
        approximation domains, or None."""
        if not config.check_domains:
            return None
        found = self.server.plan.domain_violations(self.view, tokens)
        if not found:
            return None
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        return (
            f"the input leaves the plan's approximation domains, so the encrypted result would be wrong; "
            f"nothing was encrypted for this step: {'; '.join(found[:3])}{more}"
        )

    def _verify(self, result: GenerationResult, prompt: list[int], logits_rows, config: GenerationConfig):
        """Plaintext logits at every generated position (same tokens); the plaintext greedy continuation."""
        from models.linear_view import view_forward

        seq = prompt + result.tokens
        ref = view_forward(self.view, seq[: len(prompt) + len(logits_rows) - 1])
        for rec, enc in zip(result.records, logits_rows, strict=False):
            plain = ref[rec.position]
            rec.plaintext_token = int(np.argmax(plain))
            rec.top1_agree = bool(int(np.argmax(enc)) == rec.plaintext_token)
            rec.max_abs_logit_error = float(np.max(np.abs(enc - plain)))
        plain_seq = list(prompt)
        for _ in range(config.max_new_tokens):
            plain_seq.append(int(np.argmax(view_forward(self.view, plain_seq)[-1])))
        result.plaintext_continuation = bytes(plain_seq[len(prompt) :])

    def bits_per_byte(self, data: bytes, max_windows: int, progress=None) -> dict:
        """Bits per byte of encrypted prefills over up to `max_windows` context windows of `data`, with the
        plaintext figure on the same windows (each window: one prefill, all positions' logits decrypted)."""
        import torch

        from models.data import eval_windows
        from models.linear_view import view_forward

        x, y = eval_windows(data, self.context, max_windows * self.context)
        enc_bits = plain_bits = 0.0
        n_bytes, max_err, flags = 0, 0.0, []
        for row_x, row_y in zip(x.numpy(), y.numpy(), strict=True):
            n = int((row_y >= 0).sum())
            out, _ = self._exchange("prefill", row_x[:n].tolist(), 0, progress)
            if out.flag is not None:
                flags.append(out.flag)
            plain = view_forward(self.view, row_x[:n])
            target = torch.from_numpy(row_y[:n])
            for logits, acc in ((out.logits, "enc"), (plain, "plain")):
                nll = torch.nn.functional.cross_entropy(
                    torch.from_numpy(logits), target, reduction="sum"
                ).item()
                if acc == "enc":
                    enc_bits += nll / math.log(2)
                else:
                    plain_bits += nll / math.log(2)
            max_err = max(max_err, float(np.abs(out.logits - plain).max()))
            n_bytes += n
        return {
            "bytes": n_bytes,
            "windows": int(x.shape[0]),
            "encrypted_bits_per_byte": enc_bits / n_bytes,
            "plaintext_bits_per_byte": plain_bits / n_bytes,
            "relative_gap": (enc_bits - plain_bits) / plain_bits,
            "max_abs_logit_error": max_err,
            "flags": flags,
        }
