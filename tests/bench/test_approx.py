"""`make bench-approx` (bench/approx.py): a smoke run writes its block; the script stays numpy/scipy-only."""

import subprocess
import sys
from pathlib import Path

from bench import approx as bench_approx


def test_smoke_run_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "approx.md"
    doc.write_text(f"# head\n\n{bench_approx.START}\nSTALE BLOCK\n{bench_approx.END}\n\ntail\n")
    bench_approx.main(["--smoke", "--write", str(doc)])
    text = doc.read_text()
    assert text.startswith("# head\n") and text.endswith("\ntail\n") and "STALE BLOCK" not in text
    for part in ("### exp on [-B, 0]", "### 1/x on [1, R]", "### Calibrated windows", "### relu on [-B, B]"):
        assert part in text


def test_imports_only_numpy_scipy_and_approx():
    forbidden = ("torch", "tenseal", "he_aero", "models")
    code = (
        "import sys, bench.approx\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        "print(','.join(bad))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == ""
