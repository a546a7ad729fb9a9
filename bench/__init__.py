"""Benchmarks and their data: figures for docs/, never shipped in the wheel (`make bench-*`, `make ablation`).

Each module is a script run as `python -m bench.<module>` and uses the library's public API only:

    infer.py       `make bench-he`: encrypted prefill / decode speed, op counts, accuracy -> docs/he-bench.md
    kernels.py     `make bench-kernels`: matmul, polynomials, one attention layer vs TenSEAL -> docs/kernels.*
    kernels.md.in  the design half of docs/kernels.md (kernels.py appends the measured tables)
    oplatency.py   per-operation latency at the top level of a ring (the planner's `OP_LATENCY_MS`)
    approx.py      `make bench-approx`: max error vs depth of our plans and the baselines -> docs/approx.md
    ablation.py    `make ablation`: plaintext training of the AERO variants -> docs/ablation.{md,json}
    data/          prompts.json: the 20 test-split acceptance prompts (`python -m bench.infer prompts`)
"""

from pathlib import Path

DATA = Path(__file__).parent / "data"
