"""Coefficient files: round trip, checkable with numpy alone, validated with errors that name the field."""

import json

import numpy as np
import pytest
from numpy.polynomial import chebyshev as C

from approx.coefficients import REQUIRED, load_plan, save_plan
from approx.errors import ApproxError
from approx.plans import Plan, plan_poly, plan_reciprocal


@pytest.fixture(scope="module")
def poly_plan():
    return plan_poly("exp", (-8, 0), 11)


@pytest.fixture(scope="module")
def newton_plan():
    return plan_reciprocal((1, 64), 1e-4, newton=1)


def test_round_trip_is_exact(tmp_path, poly_plan, newton_plan):
    for plan in (poly_plan, newton_plan):
        path = save_plan(plan, tmp_path / "plan.json")
        back = load_plan(path)
        assert back.steps == plan.steps
        assert (back.depth, back.nonscalar_mults, back.max_error) == (
            plan.depth,
            plan.nonscalar_mults,
            plan.max_error,
        )
        x = np.linspace(*plan.domain, 101)
        np.testing.assert_array_equal(back.evaluate(x), plan.evaluate(x))


def test_single_poly_file_checks_with_numpy_alone(tmp_path, poly_plan):
    data = json.loads(save_plan(poly_plan, tmp_path / "p.json").read_text())
    assert set(REQUIRED) <= set(data) and data["basis"] == "chebyshev" and data["error_kind"] == "abs"
    a, b = data["domain"]
    x = np.linspace(a, b, 20_001)
    err = np.max(np.abs(np.exp(x) - C.chebval((2 * x - a - b) / (b - a), data["coefficients"])))
    assert err <= data["max_error"] * (1 + 1e-9)
    assert data["degree"] == len(data["coefficients"]) - 1 == 11


def test_chained_plan_file_lists_its_steps(newton_plan):
    data = newton_plan.to_dict()
    assert [s["op"] for s in data["steps"]] == ["poly", "newton_recip"]
    assert data["steps"][0]["coefficients"] == data["coefficients"]
    assert Plan.from_dict(data).steps == newton_plan.steps


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda d: d.pop("domain"), "domain"),
        (lambda d: d.pop("producer"), "producer"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(basis="monomial"), "basis"),
        (lambda d: d.update(function="sin"), "function"),
        (lambda d: d.update(error_kind="max"), "error_kind"),
        (lambda d: d.update(max_error="small"), "max_error"),
        (lambda d: d.update(depth=1), "depth"),
        (lambda d: d.update(nonscalar_mults=0), "nonscalar_mults"),
        (lambda d: d.update(degree=3), "degree"),
        (lambda d: d.update(coefficients=[1.0, 2.0]), "coefficients"),
        (lambda d: d.update(steps=[]), "steps"),
        (lambda d: d["steps"].append({"op": "cube"}), r"steps\[1\]\.op"),
        (lambda d: d["steps"][0].update(coefficients=[1.0, None]), r"steps\.coefficients"),
        (lambda d: d["steps"].append({"op": "square"}), r"steps\[1\]\.times"),
    ],
)
def test_bad_fields_are_named(tmp_path, poly_plan, mutate, field):
    data = poly_plan.to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ApproxError, match=field):
        load_plan(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ApproxError, match="^file: cannot read"):
        load_plan(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ApproxError, match="not valid JSON"):
        load_plan(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("[1, 2]")
    with pytest.raises(ApproxError, match="expected a JSON object"):
        load_plan(tmp_path / "y.json")
