"""The planner: ring comparison, levels from symbolic runs, the early depth-budget error, the CLI."""

import json

import pytest
from click.testing import CliRunner

from approx.plans import plan_exp, plan_reciprocal
from he_aero.ckks.params import default_params
from he_aero.cli import cli
from he_aero.errors import HeAeroError
from he_aero.plan import ModelShape, Ranges, check_depth_budget, evaluate_ring, layer_depths, make_plan

SHAPE = ModelShape(d_model=32, n_head=2, n_layer=2, t_max=16)
RANGES = Ranges(((-6.0, 3.0),) * 2, activation_bound=16.0)


@pytest.fixture(scope="module")
def deep_plans():
    exp = plan_exp((-6.0, 3.0), max_abs_error=1e-4, squarings=0)  # one deep polynomial
    recip = plan_reciprocal((1.0, 17.0), max_rel_error=1e-4, newton=0)
    return [(exp, recip)] * 2


def test_make_plan_compares_rings_and_explains():
    result = make_plan(SHAPE, RANGES, rings=(8192, 16384))
    assert {c.params.poly_modulus_degree for c in result.candidates} == {8192, 16384}
    chosen = result.chosen
    assert chosen.feasible and chosen.rotation_steps and chosen.prefill["latency_s"] > 0
    text = result.explain()
    assert f"choice: N={chosen.params.poly_modulus_degree}" in text and "prefill stages" in text
    data = json.loads(result.to_json())
    assert data["chosen"] == chosen.params.poly_modulus_degree and data["format_version"] == 1
    for stage in chosen.stages:  # every stage starts with enough levels or is refreshed
        assert stage["level_in"] >= stage["need"] or stage["refreshed"]


def test_given_deep_plans_make_the_small_ring_infeasible_with_a_reason(deep_plans):
    small = evaluate_ring(default_params(8192), SHAPE, RANGES, 20, deep_plans)
    assert not small.feasible and "leaves 3" in small.reason
    big = evaluate_ring(default_params(16384), SHAPE, RANGES, 20, deep_plans)
    assert big.feasible


def test_depth_budget_error_names_each_layer_before_encryption(deep_plans):
    depths = layer_depths(SHAPE, deep_plans)
    assert len(depths) == 2 and all(d > 9 for d in depths)
    with pytest.raises(HeAeroError, match=r"layer 0: \d+, layer 1: \d+ \(total \d+\) > 9 levels"):
        check_depth_budget(SHAPE, deep_plans, default_params(16384), refresh=False)
    with pytest.raises(HeAeroError, match="depth budget on N=8192"):
        check_depth_budget(SHAPE, deep_plans, default_params(8192), refresh=True)
    check_depth_budget(SHAPE, deep_plans, default_params(16384), refresh=True)


def test_bad_shapes_and_ranges_are_refused():
    with pytest.raises(HeAeroError, match="multiple of n_head"):
        ModelShape(30, 4, 1, 8)
    with pytest.raises(HeAeroError, match="empty"):
        Ranges(((1.0, 0.0),))
    with pytest.raises(HeAeroError, match="z windows"):
        make_plan(SHAPE, Ranges(((-1.0, 1.0),)))


def test_cli_plan(tmp_path):
    runner = CliRunner()
    out = tmp_path / "plan.json"
    args = ["plan", "--d-model", "32", "--heads", "2", "--layers", "1", "--context", "16", "--ring", "8192"]
    res = runner.invoke(cli, [*args, "--explain", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "choice: N=8192" in res.output and json.loads(out.read_text())["chosen"] == 8192
    bad = runner.invoke(cli, ["plan", "--ring", "4096"])
    assert bad.exit_code == 2


def test_cli_plan_from_a_calibration_file(tiny, tmp_path):
    _, _, _, _, cal = tiny  # tests/he_aero/conftest.py: a calibrated tiny model
    path = cal.save(tmp_path / "cal.json")
    res = CliRunner().invoke(cli, ["plan", "--calibration", str(path), "--ring", "8192", "--explain"])
    assert res.exit_code == 0, res.output
    assert f"layers={len(cal.layers)}" in res.output and "choice: N=8192" in res.output
