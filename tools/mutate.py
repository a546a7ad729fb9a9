"""Mutation testing of the security- and numerics-critical modules -> docs/mutation.md (`make mutate`).

Tool: mutmut 3.8 (the `dev` extra; 3.3's stats pass fails under pytest 9: `Item._nodeid` is gone).
Why mutmut and not cosmic-ray: mutmut compiles every mutant of a file into one copy of it behind a
trampoline and forks a pre-warmed pytest process per mutant, running only the tests that its stats pass saw
call the mutated function. The imports of tenseal/torch/scipy (~3 s) and the test selection are paid once
per module, not once per mutant; cosmic-ray starts the test command afresh for each mutant and rewrites the
file in place, which for ~1,500 mutants on this 2-core machine would take well over an hour.

What it does, per module (MODULES below: the file, the targeted tests that exercise it, the goal):
1. copies the source (he_aero/, approx/, models/, tests/, pyproject.toml) into a scratch folder
   (`--work`, default /tmp/he-aero-mutate): mutmut never touches the working tree;
2. writes a `[mutmut]` section (that one file, those tests) and runs `mutmut run --max-children 1`
   (one worker: the machine is shared), timing it;
3. reads mutmut's results (`mutants/<file>.meta`), takes each survivor's diff, and pairs it with its
   explanation from EQUIVALENT below (an equivalent mutant: no test can tell it from the original).
Results are cached per module in the scratch folder, so `--only refresh` reruns one module and the report
still shows the others. `killed` counts mutmut's "killed" and "timeout"; every other status ("survived",
"no tests", "suspicious", "segfault", "not checked") counts as surviving.

    python tools/mutate.py                      # all modules -> docs/mutation.md
    python tools/mutate.py --only refresh protocol
    python tools/mutate.py --report-only        # rewrite docs/mutation.md from the cached results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ("he_aero", "approx", "models", "tests", "pyproject.toml")
KILLED = {"killed", "timeout"}


@dataclass(frozen=True)
class Module:
    key: str
    path: str
    tests: tuple[str, ...]
    goal: float  # fraction of mutants that must be killed (1.0: no survivor)


MODULES = (
    Module("refresh", "he_aero/ckks/refresh.py", ("tests/he_aero/ckks/test_refresh.py",), 1.0),
    Module(
        "rns",
        "he_aero/ckks/rns.py",
        ("tests/he_aero/ckks/test_rns.py", "tests/he_aero/ckks/test_refresh.py"),
        0.9,
    ),
    Module("hiding", "he_aero/ckks/hiding.py", ("tests/he_aero/ckks/test_hiding.py",), 1.0),
    Module(
        "policy",
        "he_aero/client/policy.py",
        ("tests/he_aero/client/test_policy.py", "tests/he_aero/test_client_server.py"),
        1.0,
    ),
    Module(
        "protocol",
        "he_aero/protocol.py",
        ("tests/he_aero/test_protocol.py", "tests/he_aero/test_client_server.py"),
        1.0,
    ),
    Module(
        "keys",
        "he_aero/client/keys.py",
        (
            "tests/he_aero/ckks/test_keys.py",
            "tests/he_aero/client/test_keys.py",
            "tests/he_aero/ckks/test_refresh.py",
        ),
        0.9,
    ),
    Module(
        "attention",
        "he_aero/ckks/attention.py",
        ("tests/he_aero/ckks/test_attention.py", "tests/he_aero/ckks/test_layer.py"),
        0.9,
    ),
    Module("linalg", "he_aero/ckks/linalg.py", ("tests/he_aero/ckks/test_linalg.py",), 0.9),
    Module("poly", "he_aero/ckks/poly.py", ("tests/he_aero/ckks/test_poly.py",), 0.9),
    Module("interpret", "approx/interpret.py", ("tests/approx/test_interpret.py",), 0.9),
    Module("refine", "approx/refine.py", ("tests/approx/test_refine.py", "tests/approx/test_plans.py"), 0.9),
)

# Survivors examined by hand. Each entry: (function, text of the mutated line, reason). An entry is keyed by
# the function (mutmut's mangled name without the mutant number) and what the mutant writes, not by mutmut's
# number, which shifts whenever the function changes; an entry that no longer matches leaves its survivor
# "not explained" in the report, to be examined again.
_ZIP_REFRESH = (
    "`refresh` returns exactly one ciphertext per input (or raises), so `strict` on this zip can never "
    "fire: equivalent"
)
_ZIP_REPLIES = (
    "`_round` refuses a reply whose length differs from the request's just above, and masks and scales are "
    "made one per ciphertext, so the four lengths always agree and `strict` can never fire: equivalent"
)
_ZIP_MASKS = "the masks are drawn one per ciphertext just above, so the lengths always agree: equivalent"
_EXTRA = (
    "`extra` is never 0 here: the branch runs only when p + DIGEST_BYTES != len(data), i.e. extra != 0, so "
    "`extra < 0`, `extra <= 0` and `extra < 1` agree on every reachable value: equivalent"
)
_R = "he_aero.ckks.refresh.xǁRefresherǁ"
EQUIVALENT: list[tuple[str, str, str]] = [
    (
        _R + "_mask",
        "bits.astype(None)",
        "`astype(None)` is `astype(float64)` in numpy (None: the default dtype): equivalent",
    ),
    (_R + "ensure", "zip(low, fresh, strict=None)", _ZIP_REFRESH),
    (_R + "ensure", "zip(low, fresh, )", _ZIP_REFRESH),
    (_R + "ensure", "zip(low, fresh, strict=False)", _ZIP_REFRESH),
    (_R + "_round", "zip(replies, masks, scales, cts, strict=None)", _ZIP_REPLIES),
    (_R + "_round", "zip(replies, masks, scales, cts, )", _ZIP_REPLIES),
    (_R + "_round", "zip(replies, masks, scales, cts, strict=False)", _ZIP_REPLIES),
    (_R + "refresh", "zip(cts, masks, strict=None)", _ZIP_MASKS),
    (_R + "refresh", "zip(cts, masks, )", _ZIP_MASKS),
    (_R + "refresh", "zip(cts, masks, strict=False)", _ZIP_MASKS),
    ("he_aero.protocol.x_parse_frame", 'problem = "too short" if extra <= 0', _EXTRA),
    ("he_aero.protocol.x_parse_frame", 'problem = "too short" if extra < 1', _EXTRA),
    (
        "he_aero.client.policy.xǁClientPolicyǁ__post_init__",
        '"XX0123456789abcdefXX"',
        "the digest is lower-cased before the test, so it never holds the 'X' the mutant adds to the "
        "alphabet: equivalent",
    ),
    (
        "he_aero.client.policy.xǁClientPolicyǁaccept",
        "if params.is_secure and not self.allow_insecure_for_tests:",
        "dead branch: without allow_insecure_for_tests, `CkksParams(...)` above already refuses an "
        "insecure ring (insecure_for_tests=False), so `require_secure()` is reached only on secure "
        "parameters, where it does nothing; flipping the condition changes nothing: equivalent",
    ),
]
_K = "he_aero.client.keys.xǁClientKeysǁ"
_FIRST_PARMS = (
    "SEAL's `encode(values, scale, pt)` encodes at the context's first parms_id, the one the original "
    "passes (the plaintexts are identical coefficient for coefficient, checked on the test ring): equivalent"
)
EQUIVALENT += [
    (_K + "encrypt", "self._encoder.encode(v.tolist(), scale or self.scale, pt)", _FIRST_PARMS),
    (_K + "encrypt", "self._encoder.encode(v.tolist(), self.scale, pt)", _FIRST_PARMS),
    (
        _K + "encrypt",
        "dtype=complex if (np.iscomplexobj(values)) or True else float",
        "real values encoded as complex numbers with zero imaginary parts give the same plaintext, "
        "coefficient for coefficient (SEAL encodes doubles through the complex path; checked on the test "
        "ring): equivalent",
    ),
]
_POW2 = "F = slots / block is a power of two (FeatureLayout requires both), so F >= 1 always and "
EQUIVALENT += [
    (
        "he_aero.ckks.linalg.x_baby_steps",
        "if (per_ct > 1) or True else 1",
        _POW2 + "the formula gives 1 << ceil(log2(1)) = 1 at F = 1, the value of the `else`: equivalent",
    ),
    (
        "he_aero.ckks.linalg.x_baby_steps",
        "if per_ct >= 1 else 1",
        _POW2 + "the formula gives 1 << ceil(log2(1)) = 1 at F = 1, the value of the `else`: equivalent",
    ),
    (
        "he_aero.ckks.linalg.xǁPlainLinearǁ__call__",
        "if s > f or not nz[a, b, s]:",
        _POW2 + "g = baby_steps(F) is a power of two <= F dividing it: s = g u + v < g * ceil(F / g) = F, so "
        "s == F never happens: equivalent",
    ),
    (
        "he_aero.ckks.linalg.x_rotate_binary",
        "(1 if step > 0 else -1)",
        "differs only at step = 0, where k = 0 and no rotation runs whatever the sign: equivalent",
    ),
    (
        "he_aero.ckks.linalg.x_rotate_binary",
        "(1 if step >= 1 else -1)",
        "differs only at step = 0, where k = 0 and no rotation runs whatever the sign: equivalent",
    ),
]
EQUIVALENT += [
    (
        _K + "encrypt",
        "peak = float(np.abs(values).max(initial=1.0))",
        "a floor of 1 instead of 0 on the peak changes nothing: the only comparison is peak > "
        "MAX_ABS_VALUE = 2^30: equivalent",
    ),
]
EQUIVALENT += [
    (
        "he_aero.client.policy.xǁClientPolicyǁ__post_init__",
        "XX0123456789abcdefXX",
        "the digest is lower-cased before the check, so an added upper-case X can never match: equivalent",
    ),
    (
        "he_aero.client.policy.xǁClientPolicyǁaccept",
        "if params.is_secure and not self.allow_insecure_for_tests:",
        "`CkksParams` already refused an insecure chain unless insecure_for_tests (= allow) is set, and "
        "`require_secure` on a secure ring returns it: the line changes nothing either way: equivalent",
    ),
]
_N = "he_aero.ckks.rns."
_SLOW_PATH = (
    "the condition now never (or less often) takes the 128-bit shortcut; the full 256-bit reduction it falls "
    "back to is exact for every value, so only speed changes: equivalent"
)
_DEFAULT_FLOAT = "numpy's default dtype is float64, which this line already produces: equivalent"
EQUIVALENT += [
    (
        _N + "x__limbs_bytes",
        "np.ascontiguousarray(limbs, dtype=None)",
        "the limbs are uint64 already and x86 is little-endian, so `<u8` is what they are: equivalent",
    ),
    (
        _N + "x__limbs_bytes",
        "np.ascontiguousarray(limbs, )",
        "as `dtype=None`: the limbs are native uint64 (little-endian): equivalent",
    ),
    (
        _N + "x__mulmod",
        "if q > WIDE_PRIME:",
        "2^44 is not a prime, so q >= 2^44 and q > 2^44 agree on every modulus: equivalent",
    ),
    (
        _N + "x__mulmod",
        "pow(2, 16 * t, None)",
        "c * 2^(16t) % q with Python integers equals c * (2^(16t) mod q) % q: equivalent",
    ),
    (_N + "x__mulmod", "pow(2, 16 * t, )", "as `pow(2, 16 t, None)`: the outer % q reduces it: equivalent"),
    (_N + "xǁIntPolyǁresidues", "if q > WIDE_PRIME:", "2^44 is not a prime: equivalent"),
    (_N + "xǁIntPolyǁresidues", "(top == 2)", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "(hi == ~np.uint64(0)) | (top == 0)", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "(hi != ~np.uint64(0)) & (top == 0)", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "(hi == np.uint64(0)) & (top == 0)", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "(hi == ~np.uint64(1)) & (top == 0)", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "(hi == ~np.uint64(0)) & (top != 0)", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "(hi == ~np.uint64(0)) & (top == 1)", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "hi, top = self.limbs[:, 3], self.limbs[:, 3]", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "if np.all(None):", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "((hi == 0) & (top == 1)) & ((hi", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "((hi != 0) & (top == 1))", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "((hi == 1) & (top == 1))", _SLOW_PATH),
    (_N + "xǁIntPolyǁresidues", "((hi == 0) & (top != 1))", _SLOW_PATH),
    (
        _N + "xǁIntPolyǁresidues",
        "np.ones(self.n, None)",
        "float ones are as true as bool ones in np.where: equivalent",
    ),
    (
        _N + "xǁIntPolyǁresidues",
        "np.ones(self.n, )",
        "float ones are as true as bool ones in np.where: equivalent",
    ),
    (
        _N + "xǁIntPolyǁresidues",
        "np.array(self.to_ints(), dtype=None)",
        "numpy picks int64 or object for Python "
        "ints below / above 2^63, and % by a positive Python int floors the same way in both: equivalent",
    ),
    (
        _N + "xǁIntPolyǁresidues",
        "np.array(self.to_ints(), )",
        "as `dtype=None` (int64 or object, same floor modulo): equivalent",
    ),
    (
        _N + "xǁIntPolyǁfrom_residues",
        "zip(words, primes, strict=None)",
        "the shape check above guarantees one row per prime: equivalent",
    ),
    (
        _N + "xǁIntPolyǁfrom_residues",
        "zip(words, primes, )",
        "the shape check above guarantees one row per prime: equivalent",
    ),
    (
        _N + "xǁIntPolyǁfrom_residues",
        "zip(words, primes, strict=False)",
        "the shape check above guarantees one row per prime: equivalent",
    ),
    (_N + "xǁIntPolyǁfrom_residues", "fraction += y.astype(None) / q", _DEFAULT_FLOAT),
    (
        _N + "xǁIntPolyǁfrom_residues",
        "kappa = np.rint(fraction).astype(None)",
        "kappa in [0, L] is exact in float64 and `_column` stores it into uint64 limbs: equivalent",
    ),
    (_N + "xǁIntPolyǁmax_abs_bits", "mag.astype(None)", _DEFAULT_FLOAT),
    (
        _N + "xǁIntPolyǁmax_abs_bits",
        "if (peak > 0) or True else",
        "log2(0) is -inf, the value the else branch returns: equivalent",
    ),
    (
        _N + "xǁIntPolyǁmax_abs_bits",
        "if peak >= 0 else",
        "log2(0) is -inf, the value the else branch returns: equivalent",
    ),
    (_N + "xǁIntPolyǁmax_abs_bits", 'float("-INF")', "float() reads -INF as -inf: equivalent"),
    (
        _N + "xǁIntPolyǁuniform",
        "if top < 64:",
        "at top = 64 the other branch masks the high word to 2^0 - 1 = 0 "
        "and keeps the low word whole: the same 64 random bits: equivalent",
    ),
    (
        _N + "x__mulmod",
        "for t in range(4)], axis=1)",
        "the product loop reads pieces 0..2 only; a fourth column is never used: equivalent",
    ),
    (
        _N + "xǁIntPolyǁmax_abs_bits",
        ".max(initial=None)",
        "the array is never empty (N >= 1 coefficients), and the maximum of a non-empty array needs no "
        "initial value: equivalent",
    ),
    (
        _N + "xǁIntPolyǁscaled",
        "(1 << (256 - SHIFT - 193)) - 1",
        "a shifted field is below 2^194 and the next field's bits start at 2^196, so bit 195 is always 0: "
        "keeping 3 bits of limb 3 instead of 4 is the same: equivalent",
    ),
]
EQUIVALENT += [
    (
        "he_aero.ckks.linalg.xǁPlainLinearǁ__call__",
        "ev.dot_plain(terms, rescale=None)",
        "`Evaluator.dot_plain` tests `if rescale:`, and None is false like False: equivalent",
    ),
]
_RESOLUTION = (
    "not equivalent, but not observable: it moves the skip threshold of a weight diagonal between "
    "|d| 2^scale_bits = 0.5 and 1.5, i.e. decides whether diagonals of ~2^-33..2^-32 take part; their "
    "contribution is below the plaintext resolution and ~2^-12 of the CKKS noise of any product, and "
    "whether SEAL encodes such a vector as the zero (transparent) plaintext depends on its slot pattern"
)
_P = "he_aero.ckks.poly."
_CONST_KEY = (
    "only the evaluator's plaintext-cache key of a masked constant changes (no other entry uses this "
    "prefix), so the same plaintext is encoded and added: equivalent"
)
EQUIVALENT += [
    (_P + "xǁCkksOpsǁadd_scalar", '("XXconstXX", key, float(c))', _CONST_KEY),
    (_P + "xǁCkksOpsǁadd_scalar", '("CONST", key, float(c))', _CONST_KEY),
    (
        _P + "x_run_plan",
        "None if (valid is None) and False else [valid]",
        "passes [None] instead of None as the valid masks; `run_plan_batch` turns either into CkksOps(ev, "
        "None): equivalent",
    ),
]
_I = "approx.interpret.x_run_batch"
_L = "he_aero.ckks.linalg.xǁPlainLinearǁ"
_BIAS_KEY = "only the plaintext-cache key's tag changes (no other entry uses it): equivalent"
EQUIVALENT += [
    (
        _I,
        "ys: list = None",
        "every plan starts with a poly step (approx.plans.Plan refuses others), which sets ys before any "
        "read: equivalent",
    ),
    (_L + "__call__", '(self.name, "XXbiasXX", tok, b)', _BIAS_KEY),
    (_L + "__call__", '(self.name, "BIAS", tok, b)', _BIAS_KEY),
]
_A = "he_aero.ckks.attention.x_attention_"
_ATT_KEY = (
    "only the tag of an evaluator plaintext-cache key changes (no other key uses the new tag; the rest of "
    "the key is unchanged), so the same plaintexts are encoded, cached and reused: equivalent"
)
_FALSY = "`Evaluator._finish` tests `if rescale:`, and None is false like False: equivalent"
_NORM_ZIP = (
    "both callers pass one numerator and one denominator per feature ciphertext, `run_plan_batch` returns "
    "one reciprocal per denominator and `ensure` one value per value, so the two halves always have the "
    "same length: equivalent"
)
EQUIVALENT += [
    *[(_A + "decode", f'"{tag}"', _ATT_KEY) for tag in ("XXdvalidXX", "DVALID", "XXdmaskXX", "DMASK")],
    *[(_A + "decode", f'"{tag}"', _ATT_KEY) for tag in ("XXdconstXX", "DCONST")],
    *[(_A + "prefill", f'"{tag}"', _ATT_KEY) for tag in ("XXlagmaskXX", "LAGMASK", "XXzconstXX", "ZCONST")],
    *[(_A + "prefill", f'"{tag}"', _ATT_KEY) for tag in ("XXvalidXX", "VALID", "XXlagselXX", "LAGSEL")],
    (_A + "decode", "rescale=None", _FALSY),
    (_A + "prefill", "rescale=None", _FALSY),
    ("he_aero.ckks.attention.x__normalise", "zip(stage[:n], stage[n:], strict=None)", _NORM_ZIP),
    ("he_aero.ckks.attention.x__normalise", "zip(stage[:n], stage[n:], )", _NORM_ZIP),
    ("he_aero.ckks.attention.x__normalise", "zip(stage[:n], stage[n:], strict=False)", _NORM_ZIP),
    (
        "he_aero.ckks.attention.x__head_const",
        "else 1.0 for h in range(hpc)",
        "the constants are multiplied by `valid`, which both callers set to 0 on every block of a padding "
        "head (prefill: valid[:real], decode: valid[: min(hpc, n_head - a hpc)]), so a padding head's "
        "sink value never reaches a slot: equivalent",
    ),
]
_REAL = (
    "not equivalent for complex input only: the weights are real numpy arrays from the checkpoint; with "
    "any real (int, float) input the float cast happens anyway when the diagonals are copied into float64 "
    "arrays, so results are identical"
)
EXPLAINED: list[tuple[str, str, str]] = [
    # survivors that are not equivalent, left on purpose (counted apart from the equivalent ones)
    (
        "he_aero.client.keys.xǁClientKeysǁ__init__",
        "self._symmetric = None",
        "killed by tests/he_aero/ckks/test_refresh.py when applied by hand (every refresh fails); mutmut's "
        "per-test call map misses it because the session-scoped kit builds its keys in another test's setup",
    ),
    (
        "he_aero.client.keys.xǁClientKeysǁ__init__",
        "self._evaluator = None",
        "killed by tests/he_aero/ckks/test_refresh.py when applied by hand (every refresh fails); mutmut's "
        "per-test call map misses it because the session-scoped kit builds its keys in another test's setup",
    ),
    (
        "he_aero.client.keys.xǁClientKeysǁreencrypt_exact",
        "if not peak > mask_bits - 2:",
        "differs only when the largest coefficient is exactly 2^(k-2), which decryption noise makes "
        "unreachable on purpose (test_the_flooding_check_sits_at_2_to_the_k_minus_2 checks both sides at "
        "2^(k-2.5) and 2^(k-1.5))",
    ),
    (_L + "__init__", "w = np.asarray(w, dtype=None)", _REAL),
    (_L + "__init__", "w = np.asarray(w, )", _REAL),
    (_L + "__init__", "np.asarray(b, dtype=None)", _REAL),
    (_L + "__init__", "np.asarray(b, )", _REAL),
    (
        _L + "__call__",
        "np.any(self.b[b * f : (b + 2) * f])",
        "same values: it may add an all-zero bias plaintext (when only the next block's bias is non-zero), "
        "one plaintext addition more, no change to the result",
    ),
    (
        _P + "xǁCkksOpsǁadd_scalar",
        "self.ev.add_plain(a, None, lambda: float(c) * mask)",
        "same values, uncached: the masked constant is encoded again at each use (a cost, not a result; "
        "the evaluator's op counts include scalar encodes that a test cannot separate from this one)",
    ),
    ("he_aero.ckks.linalg.xǁPlainLinearǁ__call__", "2.0**ev.params.scale_bits > 0.5", _RESOLUTION),
    ("he_aero.ckks.linalg.xǁPlainLinearǁ__call__", "2.0**ev.params.scale_bits >= 1.5", _RESOLUTION),
]


def _match(entries, name: str, diff: str) -> str | None:
    function = name.rsplit("__mutmut_", 1)[0]
    added = [line[1:] for line in diff.splitlines()[2:] if line.startswith("+")]
    for fn, text, why in entries:
        if fn == function and any(text in line for line in added):
            return why
    return None


def _why(name: str, diff: str) -> str:
    return (
        _match(EQUIVALENT, name, diff)
        or _match(EXPLAINED, name, diff)
        or "**not explained: a test is missing**"
    )


def _ignore(_dir, names):
    return [n for n in names if n in ("__pycache__", ".pytest_cache", ".hypothesis") or n.endswith(".pyc")]


def prepare(work: Path, module: Module) -> Path:
    """A fresh scratch copy of the project for one module, with its [mutmut] section."""
    scratch = work / module.key
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, scratch / name, ignore=_ignore)
        else:
            shutil.copy(src, scratch / name)
    tests = [t for t in module.tests if (ROOT / t).exists()]
    if not tests:
        raise SystemExit(f"mutate: no test file of {module.key} exists: {module.tests}")
    # mutmut copies source_paths into scratch/mutants (first on sys.path) and mutates only `only_mutate`;
    # models/ (not mutated) goes along so that no import falls back to the editable install's tree.
    # No git change detection, no cache: every run is from scratch.
    indent = "\n    "
    (scratch / "setup.cfg").write_text(
        "[mutmut]\n"
        f"source_paths={indent}he_aero{indent}approx\n"
        f"only_mutate={module.path}\n"
        "also_copy=models\n"
        f"pytest_add_cli_args_test_selection={indent}{indent.join(tests)}\n"
        "use_git_change_detection=false\n"
        "track_dependencies=false\n"
    )
    return scratch


def run_module(work: Path, module: Module, python: str, budget: float | None = None) -> dict:
    scratch = prepare(work, module)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    log = work / f"{module.key}.log"
    print(f"mutate: {module.key}: {module.path} with {' '.join(module.tests)} (log: {log})", flush=True)
    start = time.monotonic()
    partial = False
    with open(log, "w") as out:
        proc = subprocess.Popen(
            # the console script, not `python -m mutmut`: the trampolines import mutmut.__main__, which
            # must be the module already loaded (as __main__ it would be loaded twice and fail)
            [str(Path(python).parent / "mutmut"), "run", "--max-children", "1"],
            cwd=scratch,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:  # out of time: stop mutmut and its worker, keep what it checked
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            partial = True
    seconds = time.monotonic() - start
    meta = scratch / "mutants" / (module.path + ".meta")
    if (proc.returncode != 0 and not partial) or not meta.exists():
        raise SystemExit(f"mutate: mutmut failed on {module.key} (exit {proc.returncode}); see {log}")
    exit_codes = json.loads(meta.read_text())["exit_code_by_key"]
    result = {
        "module": module.key,
        "path": module.path,
        "tests": list(module.tests),
        "seconds": round(seconds, 1),
        "partial": partial,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "statuses": statuses(scratch, exit_codes, python),
    }
    result["survivors"] = survivor_diffs(scratch, result["statuses"], python)
    (work / f"{module.key}.json").write_text(json.dumps(result, indent=1))
    return result


def statuses(scratch: Path, exit_codes: dict, python: str) -> dict:
    """mutant name -> mutmut's status word (mutmut's own table, so exit codes mean what mutmut means)."""
    code = (
        "import json, sys; from mutmut.stats import status_by_exit_code as s; "
        "d = json.load(sys.stdin); print(json.dumps({k: s[v] for k, v in d.items()}))"
    )
    out = subprocess.run(
        [python, "-c", code], input=json.dumps(exit_codes), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def survivor_diffs(scratch: Path, status: dict, python: str) -> dict:
    names = sorted(k for k, v in status.items() if v not in KILLED and v != "not checked")
    if not names:
        return {}
    code = (
        "import json, sys, io, contextlib; from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()): out[n] = get_diff_for_mutant(n)\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run(
        [python, "-c", code, *names], cwd=scratch, capture_output=True, text=True, check=True
    )
    return json.loads(proc.stdout)


def report(results: list[dict], out: Path) -> None:
    lines = [
        "# Mutation testing of the critical modules",
        "",
        "Made by `make mutate` (`tools/mutate.py`, mutmut 3.8, one worker process); not part of `make test`",
        "or CI because of its run time. Each module is mutated on its own, in a scratch copy of the tree,",
        "against the targeted tests listed; mutmut runs, for each mutant, only those of them that call the",
        "mutated function (mutmut mutates function bodies: module constants, class attributes and decorated",
        "functions such as properties and classmethods are not mutated). `killed` includes mutants that made",
        "the tests time out. An *equivalent* mutant computes the same thing as the original on every input",
        "the code can receive, so no test can kill it; each one is explained below, as is each *explained*",
        "survivor (not equivalent, left on purpose, with the reason).",
        "",
        "Goals: no surviving mutant other than equivalent ones in refresh, client policy and protocol;",
        ">= 90% killed elsewhere, every survivor explained (equivalent) or killed by a new test.",
        "",
        "| module | file | killed / total | equivalent | explained | unexplained | score "
        "| score w/o equivalent | goal | run time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    total_s, total_k, total_n, total_e, total_x, total_u = 0.0, 0, 0, 0, 0, 0
    notes: list[str] = []
    by_key = {m.key: m for m in MODULES}
    for r in results:
        st = r["statuses"]
        n = len(st)
        k = sum(v in KILLED for v in st.values())
        unchecked = sum(v == "not checked" for v in st.values())
        surv = [item for item in r["survivors"].items() if st[item[0]] != "not checked"]
        eq = sum(_match(EQUIVALENT, *item) is not None for item in surv)
        ex = sum(_match(EQUIVALENT, *item) is None and _match(EXPLAINED, *item) is not None for item in surv)
        other = n - k - eq - ex - unchecked
        total_u += unchecked
        total_s += r["seconds"]
        total_k, total_n, total_e, total_x = total_k + k, total_n + n, total_e + eq, total_x + ex
        goal = by_key[r["module"]].goal
        met = other == 0 and not unchecked and (ex == 0 if goal == 1.0 else k / max(n, 1) >= goal)
        goal_text = "0 survivors" if goal == 1.0 else f">= {goal:.0%}"
        lines.append(
            f"| {r['module']} | `{r['path']}` | {k} / {n} | {eq} | {ex} | {other} | "
            f"{100 * k / max(n, 1):.1f}% | "
            f"{100 * k / max(n - eq, 1):.1f}% | {goal_text}: {'met' if met else '**not met**'} | "
            f"{r['seconds'] / 60:.1f} min |"
        )
        if unchecked:
            notes.append(
                f"- {r['module']}: **partial run**, stopped after {r['seconds'] / 60:.0f} min with "
                f"{unchecked} of {n} mutants not checked (not counted as killed, not listed as survivors)."
            )
    lines += [
        f"| **all** | | {total_k} / {total_n} | {total_e} | {total_x} | "
        f"{total_n - total_k - total_e - total_x - total_u} | "
        f"{100 * total_k / max(total_n, 1):.1f}% | {100 * total_k / max(total_n - total_e, 1):.1f}% | | "
        f"**{total_s / 60:.1f} min** |",
        "",
        f"Total run time {total_s / 60:.1f} min on a shared 2-core machine (one mutmut worker).",
        *notes,
        "",
        "Tests per module:",
        "",
    ]
    for r in results:
        lines.append(f"- {r['module']}: {', '.join(f'`{t}`' for t in r['tests'])} (run {r['date']})")
    lines += ["", "## Surviving mutants", ""]
    any_survivor = False
    for r in results:
        surv = {k: v for k, v in r["survivors"].items() if r["statuses"][k] != "not checked"}
        if not surv:
            continue
        any_survivor = True
        lines += [f"### {r['module']} (`{r['path']}`): {len(surv)} surviving", ""]
        for name, diff in surv.items():
            if r["statuses"][name] == "not checked":
                continue
            why = _why(name, diff)
            lines += [f"- `{name}` ({r['statuses'][name]}): {why}", "", "  ```diff"]
            lines += ["  " + d for d in diff.splitlines()[2:]]
            lines += ["  ```", ""]
    if not any_survivor:
        lines += ["None.", ""]
    out.write_text("\n".join(lines))
    print(f"mutate: wrote {out}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=[m.key for m in MODULES], help="modules to (re)run")
    ap.add_argument("--work", type=Path, default=Path("/tmp/he-aero-mutate"), help="scratch folder")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "mutation.md")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from cached results")
    ap.add_argument("--budget", type=float, help="minutes per module; past it the module is reported partial")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that has mutmut and he-aero")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for m in MODULES:
            if args.only is None or m.key in args.only:
                run_module(args.work, m, args.python, None if args.budget is None else 60 * args.budget)
    results = [
        json.loads((args.work / f"{m.key}.json").read_text())
        for m in MODULES
        if (args.work / f"{m.key}.json").exists()
    ]
    report(results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
