"""`make bench-kernels` (bench/kernels.py, bench/oplatency.py): a smoke run writes both files."""

import json

from bench import kernels
from tests.he_aero.conftest import small_ring_params


def test_smoke_run_writes_json_and_markdown(tmp_path):
    """The smallest case of each kind (the attention layer on the tests' small ring, for time)."""
    kernels.run(tmp_path, (8192,), smoke=True, layer_params=small_ring_params())
    result = json.loads((tmp_path / "kernels.json").read_text())
    lat = result["op_latency_ms"]["8192"]
    assert all(lat[op] > 0 for op in ("rotate", "ctct_mult", "pt_mult", "encode", "encrypt", "decrypt"))
    assert lat["rotation_key_bytes"] > lat["ciphertext_bytes"] > 0
    assert result["matmul"][0]["precision_bits"] > 8 and result["layer"]["prefill"]["precision_bits"] > 6
    md = (tmp_path / "kernels.md").read_text()
    assert md.startswith("# Encrypted kernels: design and measurements") and "python -m bench.kernels" in md
    for part in ("**Smoke run**", "### Operation latency", "### X W", "### Polynomials", "### One attention"):
        assert part in md
