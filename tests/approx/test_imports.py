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


def test_plan_modules_import_one_way():
    """interpret <- plan <- {plans, coefficients}: the data module never loads the file or search modules."""
    code = (
        "import sys, approx.interpret\n"
        "a = sorted(m for m in sys.modules if m in ('approx.plan', 'approx.plans', 'approx.coefficients'))\n"
        "import approx.plan\n"
        "b = sorted(m for m in sys.modules if m in ('approx.plans', 'approx.coefficients'))\n"
        "print(a, b)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
