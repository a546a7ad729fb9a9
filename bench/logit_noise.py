"""What the decrypted logits carry beyond the logits, and what flooding them costs (`make bench-logit-noise`).

The client decrypts logits whose CKKS noise is a function of the LM head's weights (rescale rounding and
key-switching noise of the server's last stage) and of the approximation errors of every layer. This bench
measures that noise where the client sees it, in the coefficients of the decrypted polynomial: e = V - M,
with M the exact encoding of the plaintext model's logits at the ciphertext's scale (so e holds the CKKS
noise and the approximation error together, all of it a function of the weights). Then, for each flooding
width f (the plan's `logit_flood_bits`), the server adds a uniform integer in [-2^f, 2^f) to every
coefficient: the table gives the ratio of flood to noise in bits (how far the weight-dependent part is
drowned) and the precision the client keeps (max |delta logit|, top-1 agreement).

    make bench-logit-noise    # = python -m bench.logit_noise --flood 0 16 20 24 --out docs/logit-noise.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np


def _noise_bits(client, reply: bytes, want: np.ndarray) -> dict:
    """log2 of max and rms |e| over the logits polynomials, e = decrypted - exact encoding of `want`."""
    import tenseal.sealapi as seal

    from he_aero.ckks.backend import load_ciphertext, plaintext_poly
    from he_aero.ckks.packing import pack
    from he_aero.protocol import Kind, parse_frame

    keys = client._keys
    msg = parse_frame(reply, Kind.LOGITS, client.session)
    layout = client.token_layout(want.shape[0])
    encoder, evaluator = seal.CKKSEncoder(keys.seal_context), seal.Evaluator(keys.seal_context)
    errors = []
    for blob, vec in zip(msg.parts, pack(want, layout), strict=True):
        ct = load_ciphertext(keys.seal_context, blob, "logits")
        got = np.array(keys.decrypt_poly(ct).to_ints(), dtype=object)
        pt = seal.Plaintext()
        encoder.encode(np.asarray(vec, float).tolist(), ct.parms_id(), ct.scale, pt)
        exact = np.array(plaintext_poly(keys.seal_context, evaluator, pt, ct).to_ints(), dtype=object)
        errors.append((got - exact).astype(np.float64))
    e = np.concatenate(errors)
    return {
        "noise_max_bits": round(math.log2(float(np.abs(e).max())), 2),
        "noise_rms_bits": round(math.log2(float(np.sqrt(np.mean(e**2)))), 2),
    }


def run(flood_bits, prompt_bytes: int) -> dict:
    from he_aero.client.client import Client
    from he_aero.plan import load_plan
    from he_aero.server.server import Server
    from models.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from models.data import load_split
    from models.linear_view import LinearView, view_forward

    model, header = load_checkpoint(DEFAULT_CHECKPOINT)
    view = LinearView.from_model(model)
    plan = load_plan()
    tokens = list(load_split("test")[4096 : 4096 + prompt_bytes])
    want = view_forward(view, np.asarray(tokens))
    rows = []
    baseline = None
    for f in flood_bits:
        t0 = time.perf_counter()
        srv = Server(view, header, dataclasses.replace(plan, logit_flood_bits=f))
        client = Client(srv.offer())
        srv.receive_setup(client.keygen())
        reply = srv.prefill(client.encrypt_tokens(tokens, 0), client.handle_refresh)
        got = client.decrypt_logits(reply).logits
        noise = _noise_bits(client, reply, want)
        if f == 0:
            baseline = noise
        rows.append(
            {
                "logit_flood_bits": f,
                **noise,
                "flood_over_unflooded_noise_bits": None
                if baseline is None or f == 0
                else round(f - baseline["noise_max_bits"], 2),
                "max_abs_logit_error": float(np.abs(got - want).max()),
                "top1_agreement": float(np.mean(got.argmax(1) == want.argmax(1))),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1], flush=True)
    return {"prompt_bytes": prompt_bytes, "ring": plan.params.describe(), "rows": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--flood", type=int, nargs="+", default=[0, 16, 20, 24])
    ap.add_argument("--prompt-bytes", type=int, default=24)
    ap.add_argument("--out", default="docs/logit-noise.json")
    args = ap.parse_args(argv)
    if args.flood[0] != 0:
        ap.error("--flood: the first width must be 0 (the unflooded baseline)")
    result = run(args.flood, args.prompt_bytes)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
