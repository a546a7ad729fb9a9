"""Generation settings and results: how to continue a prompt, and what came back (tokens, timings, bytes).

Context window: the model has T_max learned positions and the K/V cache cannot slide (positions are absolute),
so a prompt of n bytes with m new tokens needs n + m - 1 <= T_max. A longer prompt keeps its LAST
T_max - m + 1 bytes (the bytes nearest the continuation); the result says how many were dropped.
Results print themselves: `GenerationResult.report()` (what the CLI prints: `.verify_report()`, `.summary()`,
`.flag_message()`) and `.to_dict()` (the `--json` schema).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import numpy as np

from he_aero.ckks.hiding import RefreshHiding
from he_aero.ckks.pipeline import StageRecord
from he_aero.errors import HeAeroError


def _text(data: bytes) -> str:
    """Bytes as text for people (invalid UTF-8 shown as U+FFFD)."""
    return data.decode("utf-8", errors="replace")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


@dataclass(frozen=True)
class GenerationConfig:
    """How to continue a prompt.

    Attributes
    ----------
    max_new_tokens : tokens to generate (>= 1, at most the context length).
    temperature : 0 = greedy; > 0 samples from softmax(logits / temperature).
    top_k : sample among the k most likely tokens only (0 = all); ignored when greedy.
    seed : seeds the sampler (the encryption randomness is never seeded).
    verify : also run the plaintext model and compare logits per generated token.
    check_domains : before each encrypted step, run the plaintext model (the client holds it in-process) and
        stop with the cause if any value leaves the plan's approximation domains (`ExecutionPlan.
        domain_violations`); a remote client without the weights cannot.
    """

    max_new_tokens: int = 8
    temperature: float = 0.0
    top_k: int = 0
    seed: int = 0
    verify: bool = False
    check_domains: bool = True

    def __post_init__(self):
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or self.max_new_tokens < 1
        ):
            raise HeAeroError(f"max_new_tokens: expected an integer >= 1, got {self.max_new_tokens!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100):
            raise HeAeroError(f"temperature: expected a number in [0, 100], got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise HeAeroError(f"top_k: expected an integer >= 0, got {self.top_k!r}")


@dataclass
class TokenRecord:
    """One generated token: where, how long it took, and (with verify) how close it was to plaintext."""

    token: int
    position: int  # the position whose logits chose it
    seconds: float
    flag: str | None = None
    plaintext_token: int | None = None
    top1_agree: bool | None = None
    max_abs_logit_error: float | None = None


@dataclass
class GenerationResult:
    prompt: bytes  # the prompt actually encrypted (after any truncation)
    dropped_prompt_bytes: int
    tokens: list[int]
    records: list[TokenRecord]
    seconds: dict
    traffic: dict
    client_decryptions: dict
    prefill_stages: list[StageRecord]
    decode_stages: list[list[StageRecord]]
    ring_degree: int
    levels: int
    rotation_keys: int
    hiding: RefreshHiding | None = None  # what the refresh hides (the offer's ring, mask and bound)
    flag: str | None = None
    plaintext_continuation: bytes | None = None

    @property
    def continuation(self) -> bytes:
        return bytes(self.tokens)

    @property
    def top1_agreement(self) -> float | None:
        vals = [r.top1_agree for r in self.records if r.top1_agree is not None]
        return sum(vals) / len(vals) if vals else None

    @property
    def refreshed_polynomials(self) -> int:
        """Masked polynomials the client decrypted in refreshes (one per refreshed ciphertext)."""
        return int(self.client_decryptions.get("refresh", 0))

    @property
    def refresh_hiding_bits_session(self) -> float | None:
        """-log2 of the bound on the statistical distance over every polynomial the client decrypted at
        refreshes: n N T / 2^(k+1) (he_aero/ckks/hiding.py); None without refreshes."""
        n = self.refreshed_polynomials
        if not n or self.hiding is None:
            return None
        return round(self.hiding.session_bits(n), 2)

    @property
    def max_abs_logit_error(self) -> float | None:
        vals = [r.max_abs_logit_error for r in self.records if r.max_abs_logit_error is not None]
        return max(vals) if vals else None

    @property
    def verified(self) -> bool:
        """Whether `verify` ran (the plaintext model's continuation is known)."""
        return self.plaintext_continuation is not None

    def flag_message(self) -> str | None:
        """One line when the client flagged a token (generation stopped there), else None."""
        if self.flag is None:
            return None
        return f"token {len(self.tokens) + 1} flagged by the client, generation stopped: {self.flag}"

    def verify_report(self) -> str:
        """Per token: top-1 agreement with the plaintext model and max |delta logit| (after `verify`)."""
        lines = [f"plaintext:    {_text(self.plaintext_continuation or b'')!r}"]
        for i, r in enumerate(self.records):
            if r.flag is not None:
                lines.append(f"  token {i + 1}: flagged by the client ({r.flag})")
            elif r.top1_agree is not None:
                plain = "?" if r.plaintext_token is None else repr(_text(bytes([r.plaintext_token])))
                err = "?" if r.max_abs_logit_error is None else f"{r.max_abs_logit_error:.2e}"
                lines.append(
                    f"  token {i + 1}: {_text(bytes([r.token]))!r} top-1 "
                    f"{'agrees' if r.top1_agree else 'DIFFERS'} (plaintext {plain}), max |delta logit| {err}"
                )
        agreement, error = self.top1_agreement, self.max_abs_logit_error
        if agreement is None or error is None:
            lines.append("no generated token to compare (the first was flagged)")
        else:
            lines.append(f"top-1 agreement {agreement:.0%}, max |delta logit| {error:.3e}")
        return "\n".join(lines)

    def report(self) -> str:
        """What `he-aero encrypt-infer` prints: prompt, continuation, the verification (if run), the summary,
        and the flag (if any)."""
        lines = [
            f"prompt ({len(self.prompt)} bytes): {_text(self.prompt)!r}",
            f"continuation: {_text(self.continuation)!r}",
        ]
        if self.verified:
            lines.append(self.verify_report())
        lines.append(self.summary())
        if self.flag is not None:
            lines.append(self.flag_message())
        return "\n".join(lines)

    def summary(self) -> str:
        """Ring, time per stage and layer, bytes each way, rounds, client decryptions."""
        t, tr = self.seconds, self.traffic
        n_dec = len(self.decode_stages)
        per_tok = t.get("decode", 0.0) / n_dec if n_dec else 0.0
        by = tr["bytes_by_purpose"]
        setup = by.get("setup", {"to_server": 0, "to_client": 0})
        lines = [
            f"ring N={self.ring_degree}, {self.levels} levels, {self.rotation_keys} rotation keys",
            "time: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in t.items())
            + (f"; decode {per_tok:.2f} s per token ({n_dec} tokens)" if n_dec else ""),
            "prefill per stage:" + _stage_lines(self.prefill_stages),
        ]
        if n_dec:
            means = [
                f"{first.name} {statistics.mean(d[i].seconds for d in self.decode_stages):.2f} s"
                for i, first in enumerate(self.decode_stages[0])
            ]
            lines.append("decode per stage (mean per token): " + ", ".join(means))
        lines.append(
            "levels (in->out): "
            + ", ".join(f"{r.name} {r.level_in}->{r.level_out}" for r in self.prefill_stages)
        )

        def both(*purposes):
            up = sum(by.get(k, {}).get("to_server", 0) for k in purposes)
            return up, sum(by.get(k, {}).get("to_client", 0) for k in purposes)

        pre_up, pre_down = both("prefill", "refresh:prefill")
        dec_up, dec_down = both("decode", "refresh:decode")
        lines.append(
            f"bytes client->server {_mb(tr['bytes_client_to_server'])}, server->client "
            f"{_mb(tr['bytes_server_to_client'])}: keys once {_mb(setup['to_server'])}; prefill (refreshes "
            f"included) up {_mb(pre_up)} down {_mb(pre_down)}"
            + (f"; per decoded token up {_mb(dec_up / n_dec)} down {_mb(dec_down / n_dec)}" if n_dec else "")
        )
        lines.append(
            f"rounds {tr['rounds']} ({', '.join(f'{k} {v}' for k, v in tr['rounds_by_purpose'].items())})"
        )
        lines.append(
            "client decryptions: " + ", ".join(f"{k} {v}" for k, v in self.client_decryptions.items())
        )
        if self.refresh_hiding_bits_session is not None:
            lines.append(
                f"refresh hiding: {self.hiding.per_polynomial_bits:.1f} bits per polynomial, "
                f"{self.refresh_hiding_bits_session:g} bits over the session's "
                f"{self.refreshed_polynomials:,} masked polynomials (docs/security.md)"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The `--json` schema of `he-aero encrypt-infer`."""
        return {
            "continuation": _text(self.continuation),
            "continuation_bytes": list(self.continuation),
            "tokens": self.tokens,
            "prompt_bytes": len(self.prompt),
            "dropped_prompt_bytes": self.dropped_prompt_bytes,
            "top1_agreement": self.top1_agreement,
            "max_abs_logit_error": self.max_abs_logit_error,
            "per_token": [vars(r) | {"seconds": round(r.seconds, 3)} for r in self.records],
            "plaintext_continuation": None
            if self.plaintext_continuation is None
            else _text(self.plaintext_continuation),
            "seconds": self.seconds,
            "prefill_stages": [r.to_dict() for r in self.prefill_stages],
            "bytes_client_to_server": self.traffic["bytes_client_to_server"],
            "bytes_server_to_client": self.traffic["bytes_server_to_client"],
            "bytes_by_purpose": self.traffic["bytes_by_purpose"],
            "rounds": self.traffic["rounds"],
            "rounds_by_purpose": self.traffic["rounds_by_purpose"],
            "ring_degree": self.ring_degree,
            "levels": self.levels,
            "rotation_keys": self.rotation_keys,
            "refreshed_polynomials": self.refreshed_polynomials,
            "refresh_mask_bits": self.hiding.mask_bits if self.hiding else None,
            "refresh_hiding_bits_per_polynomial": (
                round(self.hiding.per_polynomial_bits, 2) if self.hiding else None
            ),
            "refresh_hiding_bits_session": self.refresh_hiding_bits_session,
            "client_decryptions": {
                "logits": self.client_decryptions.get("logits", 0),
                "refresh": self.client_decryptions.get("refresh", 0),
            },
            "flag": self.flag,
        }


def _stage_lines(records) -> str:
    return "".join(
        f"\n  {r.name:8s} {r.seconds:7.2f} s  (rotations {r.ops['rotations']}, ct*ct {r.ops['ctct_mults']}, "
        f"refresh rounds {r.ops['refresh_rounds']}, inside SEAL {r.ops['seal_seconds']:.2f} s)"
        for r in records
    )


def describe_prefill(records: list[StageRecord], n_tokens: int) -> str:
    """A prefill counted without encrypting (`Pipeline.symbolic_prefill`): per stage the operations and
    levels (`he-aero encrypt-infer --explain`)."""
    lines = [f"this prompt: prefill of {n_tokens} tokens, counted without encrypting:"]
    for r in records:
        o = r.ops
        lines.append(
            f"  {r.name:8s} rotations {o['rotations']:5d}  ct*ct {o['ctct_mults']:4d}  "
            f"ct*pt {o['pt_mults']:5d}  refresh rounds {o['refresh_rounds']}  "
            f"levels {r.level_in}->{r.level_out}"
        )
    return "\n".join(lines)


def fit_prompt(prompt: bytes, context: int, max_new_tokens: int) -> tuple[bytes, int]:
    """(the prompt fitting the context with room for max_new_tokens, bytes dropped from its start)."""
    if not prompt:
        raise HeAeroError("the prompt is empty: there is nothing to continue")
    if max_new_tokens > context:
        raise HeAeroError(f"max_new_tokens {max_new_tokens} exceeds the model's context window of {context}")
    room = context - max_new_tokens + 1
    if len(prompt) <= room:
        return prompt, 0
    return prompt[-room:], len(prompt) - room


def pick_token(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """Greedy argmax, or a sample from softmax(logits / temperature) restricted to the top k."""
    if config.temperature == 0:
        return int(np.argmax(logits))
    z = logits / config.temperature
    if config.top_k:
        cut = np.sort(z)[-min(config.top_k, z.size)]
        z = np.where(z >= cut, z, -np.inf)
    p = np.exp(z - z.max())
    return int(rng.choice(z.size, p=p / p.sum()))
