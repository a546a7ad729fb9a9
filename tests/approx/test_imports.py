"""approx/ stays numpy/scipy-only: importing every module pulls in no torch, tenseal or he_aero."""

import subprocess
import sys

FORBIDDEN = ("torch", "tenseal", "he_aero", "models")


def test_approx_imports_only_numpy_and_scipy():
    code = (
        "import sys, approx.coefficients, approx.plans, approx.sign\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
