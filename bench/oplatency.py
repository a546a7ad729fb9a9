"""Per-operation latency at the top level of a ring's default chain: the planner's cost model.

`measure_op_latency(N)` times each primitive a few times on random data with one rotation key (never the
default Galois set: at N=32768 that is ~5 GB). The planner scales these by the number of primes left at a
ciphertext's level (key switching and NTT work are linear in it).
"""

from __future__ import annotations

import time

import numpy as np

from he_aero.ckks.backend import public_context, to_bytes
from he_aero.ckks.ciphertext import Ct, Evaluator
from he_aero.ckks.params import default_params
from he_aero.client.keys import ClientKeys

OPS = ("rotate", "ctct_mult", "pt_mult", "add", "encode", "encrypt", "decrypt")


def measure_op_latency(poly_modulus_degree: int, repeats: int = 3) -> dict:
    """Median milliseconds per operation at the top level, plus fresh-ciphertext and rotation-key bytes."""
    params = default_params(poly_modulus_degree)
    keys = ClientKeys(params, rotation_steps=(1,))
    public = keys.public_keys()
    ev = Evaluator(params, public_context(public))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, params.slots)
    a = Ct(keys.encrypt(x), params.levels)
    b = Ct(keys.encrypt(x), params.levels)
    vec = rng.uniform(-1, 1, params.slots)
    timings = {
        "rotate": lambda: ev.rotate(a, 1),
        "ctct_mult": lambda: ev.mul(a, b),
        "pt_mult": lambda: ev.mul_plain(a, "bench", lambda: vec),
        "add": lambda: ev.add(a, b),
        "encode": lambda: ev.plaintext(None, lambda: vec, params.levels, for_mul=False),  # key None: uncached
        "encrypt": lambda: keys.encrypt(x),
        "decrypt": lambda: keys.decrypt(a.data),
    }
    out = {}
    for name, fn in timings.items():
        fn()  # warm-up (and plaintext caching for pt_mult: weights are pre-encoded in the runtime)
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        out[name] = round(1000 * float(np.median(samples)), 3)
    out["ciphertext_bytes"] = len(to_bytes(a.data))
    out["rotation_key_bytes"] = len(public.galois_keys)
    out["relin_and_public_key_bytes"] = len(public.relin_keys) + len(public.public_key)
    out["levels"] = params.levels
    out["chain"] = list(params.coeff_mod_bit_sizes)
    return out
