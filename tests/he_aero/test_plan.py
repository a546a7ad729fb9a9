"""The plan stage: ring comparison from symbolic runs of the real pipeline, the early depth-budget error, the
plan file (versioned, hashed, bound to the checkpoint and the calibration), the CLI."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner

from approx.plans import plan_exp, plan_reciprocal
from he_aero.ckks.hiding import MASK_BITS
from he_aero.ckks.params import default_params
from he_aero.cli import cli
from he_aero.errors import HeAeroError
from he_aero.plan import (
    DEFAULT_PLAN,
    SYMBOLIC_LEVELS,
    ExecutionPlan,
    ModelShape,
    Ranges,
    check_depth_budget,
    choose_ring,
    evaluate_ring,
    layer_depths,
    load_plan,
)

SHAPE = ModelShape(d_model=32, n_head=2, n_layer=2, t_max=16)
RANGES = Ranges(((-6.0, 3.0),) * 2, activation_bound=16.0)


@pytest.fixture(scope="module")
def deep_plans():
    exp = plan_exp((-6.0, 3.0), max_abs_error=1e-4, squarings=0)  # one deep polynomial
    recip = plan_reciprocal((1.0, 17.0), max_rel_error=1e-4, newton=0)
    return [(exp, recip, 0.0)] * 2


def test_choose_ring_compares_rings():
    result = choose_ring(SHAPE, RANGES, rings=(8192, 16384))
    assert {c.params.poly_modulus_degree for c in result.candidates} == {8192, 16384}
    chosen = result.chosen
    assert chosen.feasible and chosen.prefill["latency_s"] > 0 and chosen.decode["latency_s"] > 0
    assert f"N={chosen.params.poly_modulus_degree}" not in result.why or "would take" in result.why
    for stage in chosen.stages:  # every stage starts with enough levels or is refreshed
        assert stage["level_in"] >= stage["need"] or stage["refreshed"]


def test_given_deep_plans_make_the_small_ring_infeasible_with_a_reason(deep_plans):
    small = evaluate_ring(default_params(8192), SHAPE, RANGES, MASK_BITS, deep_plans)
    assert not small.feasible and "leaves 2" in small.reason
    big = evaluate_ring(default_params(16384), SHAPE, RANGES, MASK_BITS, deep_plans)
    assert big.feasible


def test_a_ring_whose_ciphertexts_cannot_hold_a_head_is_ruled_out_not_fatal():
    """GPT-2's 64-wide heads at T=128 need 64 features per ciphertext: N=8192 holds 32, N=16384 64."""
    wide = ModelShape(d_model=128, n_head=2, n_layer=1, t_max=128)
    result = choose_ring(wide, Ranges(((-6.0, 3.0),), activation_bound=16.0), rings=(8192, 16384))
    small = next(c for c in result.candidates if c.params.poly_modulus_degree == 8192)
    assert not small.feasible and "head size 64" in small.reason
    assert result.chosen.params.poly_modulus_degree == 16384 and "N=8192 is out: " in result.why


def test_depth_budget_error_names_each_layer_before_encryption(deep_plans):
    depths = layer_depths(SHAPE, deep_plans)
    assert len(depths) == 2 and all(d > 8 for d in depths)
    with pytest.raises(HeAeroError, match=r"layer 0: \d+, layer 1: \d+ \(total \d+\) > 8 levels"):
        check_depth_budget(SHAPE, deep_plans, default_params(16384), refresh=False)
    with pytest.raises(HeAeroError, match="depth budget on N=8192"):
        check_depth_budget(SHAPE, deep_plans, default_params(8192), refresh=True)
    check_depth_budget(SHAPE, deep_plans, default_params(16384), refresh=True)


def test_layer_depths_counts_a_baseline_layer_deeper_than_60_levels():
    """A LayerNorm + composite-ReLU layer (a trained SM+LN+R model's plans reach 84-92 levels) used to run off
    the end of layer_depths' 60-level symbolic chain after a whole encrypted benchmark run."""
    from approx.sign import relu_composite
    from he_aero.ckks.layer import BaselinePlans
    from he_aero.plan import fit_inv_sqrt

    act = relu_composite(64.0, 1e-4, max_stage_depth=2)  # 18 sign stages of degree 3
    norm = fit_inv_sqrt((0.1, 10.0), 1e-4, 2)  # refreshable Newton steps
    exp = plan_exp((-6.0, 3.0), max_abs_error=1e-4, squarings=0)
    recip = plan_reciprocal((1.0, 17.0), max_rel_error=1e-4, newton=0)
    shape = ModelShape(32, 2, 1, 8, variant="relu")
    (depth,) = layer_depths(shape, [(exp, recip, 0.0, BaselinePlans(act, norm, norm))])
    assert 60 < depth < SYMBOLIC_LEVELS


def test_bad_shapes_and_ranges_are_refused():
    with pytest.raises(HeAeroError, match="multiple of n_head"):
        ModelShape(30, 4, 1, 8)
    with pytest.raises(HeAeroError, match="empty"):
        Ranges(((1.0, 0.0),))
    with pytest.raises(HeAeroError, match="z windows"):
        choose_ring(SHAPE, Ranges(((-1.0, 1.0),)))


def test_plan_file_round_trips_with_the_same_hash(tiny_plan, tmp_path):
    path = tiny_plan.save(tmp_path / "plan.json")
    again = load_plan(path)
    assert again.to_dict() == tiny_plan.to_dict() and again.sha256 == tiny_plan.sha256
    assert again.rotation_steps and again.plans[0][0].function == "exp"


def test_plan_is_bound_to_the_checkpoint_and_the_calibration(tiny, tiny_plan):
    _, _, header, _, cal = tiny
    assert tiny_plan.weights_sha256 == header["weights_sha256"]
    assert tiny_plan.calibration_sha256 == cal.sha256
    with pytest.raises(HeAeroError, match="compiled for checkpoint weights"):
        tiny_plan.check_checkpoint({"weights_sha256": "0" * 64})


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("rotation_steps"), "rotation_steps"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.update(kind="other"), "kind"),
        (lambda d: d["ckks"].update(scale_bits="x"), "scale_bits"),
        (lambda d: d["layers"].pop(), "layers"),
        (lambda d: d["layout"].update(block=3), "layout.block"),
        (lambda d: d["refresh"].update(activation_bound=-1), "refresh.activation_bound"),
        (lambda d: d["layers"][0]["exp"].update(steps=[]), "layers[0]"),
    ],
)
def test_a_bad_plan_file_is_refused_naming_the_field(tiny_plan, edit, field):
    data = json.loads(json.dumps(tiny_plan.to_dict()))
    edit(data)
    with pytest.raises(HeAeroError, match="plan: .*" + re.escape(field)):
        ExecutionPlan.from_dict(data)


def test_a_plan_on_an_insecure_ring_needs_the_test_flag_in_the_file(tiny_plan):
    data = json.loads(json.dumps(tiny_plan.to_dict()))
    data["ckks"]["insecure_for_tests"] = False
    with pytest.raises(HeAeroError, match="below 128-bit security"):
        ExecutionPlan.from_dict(data)


def test_the_shipped_plan_matches_the_shipped_checkpoint_and_calibration():
    from he_aero.calibrate import load_calibration
    from models.checkpoint import DEFAULT_CHECKPOINT, read_header

    plan = load_plan(DEFAULT_PLAN)
    plan.check_checkpoint(read_header(DEFAULT_CHECKPOINT))
    assert plan.calibration_sha256 == load_calibration().sha256
    assert plan.params.is_secure and plan.params.poly_modulus_degree == 8192


def test_cli_plan_describes_the_shipped_model_and_writes_a_file(tmp_path):
    out = tmp_path / "plan.json"
    res = CliRunner().invoke(cli, ["plan", "--ring", "8192", "--explain", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "choice: N=8192" in res.output and "layers=3" in res.output
    assert load_plan(out).to_dict()["rotation_steps"] == load_plan(DEFAULT_PLAN).to_dict()["rotation_steps"]
    bad = CliRunner().invoke(cli, ["plan", "--ring", "4096"])
    assert bad.exit_code == 2 and "--ring" in bad.output


def _narrower_exp(raw: dict) -> dict:
    """An honest exp plan (it meets its claim) fitted on less than the layer's range."""
    a, b = raw["steps"][0]["domain"]
    return plan_exp((a + 0.5 * (b - a), b), max_abs_error=1e-4, squarings=0).to_dict()


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d["refresh"].update(mask_bits=200), "refresh"),
        (lambda d: d["refresh"].update(mask_bits=60), "refresh.min_level"),  # a narrower mask: level 1
        (lambda d: d["refresh"].update(max_refresh_polynomials=10**9), "refresh.max_refresh_polynomials"),
        (lambda d: d["refresh"].update(session_hiding_bits=0), "refresh"),
        (lambda d: d["refresh"].update(logit_flood_bits=61), "refresh"),
        (lambda d: d["refresh"].update(usable_levels=99), "refresh.usable_levels"),
        (lambda d: d.update(rotation_steps=[]), "rotation_steps"),
        (lambda d: d.update(rotation_steps=[-1, 99999999]), "rotation_steps"),
        (lambda d: d["ckks"].update(insecure_for_tests="false"), "ckks.'insecure_for_tests'"),
        (lambda d: d["layout"].update(decode_rows="false"), "layout.'decode_rows'"),
        (lambda d: d.update(format_version=True), "format_version"),
        (lambda d: d["ckks"]["coeff_mod_bit_sizes"].__setitem__(0, 50.5), "coeff_mod_bit_sizes"),
        (lambda d: d["checkpoint"].update(weights_sha256="z" * 64), "checkpoint.weights_sha256"),
        (lambda d: d["layers"][0]["exp"]["steps"][0].update(domain=[0, 1]), "layers[0] plan: max_error"),
        (lambda d: d["layers"][0].update(exp=_narrower_exp(d["layers"][0]["exp"])), "layers[0].exp"),
        (lambda d: d["layers"][0]["exp"].update(max_error=0.02), "above the 0.01 a plan may claim"),
        (lambda d: d.update(stages=5), "stages"),
        (lambda d: d.update(estimates="x"), "estimates"),
        (lambda d: d["comparison"].update(rings=[{"feasible": True}]), "comparison"),
    ],
)
def test_a_careless_or_hostile_plan_is_refused_at_load(tiny_plan, edit, field):
    """Found by review: values the loader took silently (refresh settings, key steps, wrongly typed flags,
    a polynomial fitted on another domain, malformed descriptive parts) are refused, naming the field."""
    data = json.loads(json.dumps(tiny_plan.to_dict()))
    edit(data)
    with pytest.raises(HeAeroError, match="plan: .*" + re.escape(field)):
        ExecutionPlan.from_dict(data)


def test_the_shipped_plan_keeps_40_bits_over_a_full_context_session():
    """The longest session the context allows: a prefill (at most the full context's refreshes) and a
    decode step for every other position (each at most the costliest, the last position's). Its refreshed
    polynomials stay within the plan's cap, so the server never cuts it short, and hide >= 40 bits."""
    plan = load_plan(DEFAULT_PLAN)
    est = plan.estimates
    full = (
        est["prefill"]["refreshed_ciphertexts"]
        + (plan.shape.t_max - 1) * est["decode"]["refreshed_ciphertexts"]
    )
    assert full <= plan.max_refresh_polynomials
    assert plan.hiding.session_bits(full) >= plan.session_hiding_bits == 40


# --- the exp shift (issue 11: degenerate prompts) ---------------------------------------------------------
def test_the_exp_shift_is_the_least_that_fits_the_attention_bound():
    from he_aero.plan import ATTENTION_BOUND, attention_peak, exp_shift

    assert exp_shift(3.0, 80.0, 150.0) == 0.0  # natural text: nothing to shift
    delta = exp_shift(10.75, 22960.0, 62680.0)  # the shipped layer 2: numerators dominate
    assert attention_peak(10.75, 22960.0, 62680.0) * np.exp(-delta) == pytest.approx(ATTENTION_BOUND)
    assert exp_shift(12.0, 10.0, 10.0) == pytest.approx(12.0 - np.log(ATTENTION_BOUND))  # weights dominate


def test_the_shipped_plan_shifts_and_bounds_what_the_refresh_sees():
    """Layer 2 of the shipped model (a byte repeated: denominators ~2e4, numerators ~6e4) is shifted so the
    refresh bound stays 2^13, and its plans run on the shifted ranges."""
    from he_aero.plan import ATTENTION_BOUND

    plan = load_plan()
    assert plan.activation_bound <= ATTENTION_BOUND * (1 + 1e-9)
    shifts = [lay.exp_shift for lay in plan.layers]
    assert shifts[0] == 0.0 and 0 < shifts[1] < shifts[2] < 3
    for lay in plan.layers:
        lo, hi = lay.reciprocal.steps[0].domain
        assert lo <= np.exp(-lay.exp_shift) and hi >= lay.denominator_domain[1] * np.exp(-lay.exp_shift)
        assert lay.exp.steps[0].domain[1] >= lay.z_domain[1] - lay.exp_shift
        assert 2 * np.exp(lay.exp_shift) <= plan.activation_bound


@pytest.mark.parametrize("value", [-1.0, 64.0, "1", True, None])
def test_a_bad_exp_shift_in_a_plan_file_is_refused(tiny_plan, value):
    data = tiny_plan.to_dict()
    data["layers"][0]["exp_shift"] = value
    with pytest.raises(HeAeroError, match=r"field 'layers\[0\]\.exp_shift' must be a number in \[0, 64\)"):
        ExecutionPlan.from_dict(data)
    del data["layers"][0]["exp_shift"]
    with pytest.raises(HeAeroError, match="exp_shift"):
        ExecutionPlan.from_dict(data)


def test_a_plan_whose_shifted_domains_do_not_cover_the_ranges_is_refused(tiny_plan):
    data = tiny_plan.to_dict()
    data["layers"][0]["exp_shift"] = 5.0  # the fitted polynomials are on the unshifted ranges
    with pytest.raises(HeAeroError, match="does not cover the layer's range"):
        ExecutionPlan.from_dict(data)


def test_when_no_shift_fits_the_bound_the_shift_balances_weights_and_reciprocals():
    from he_aero.plan import ATTENTION_BOUND, attention_peak, exp_shift

    peak = attention_peak(20.0, 1e6, 1e6)  # e^20: beyond what any shift keeps under 2^13
    delta = exp_shift(20.0, 1e6, 1e6)
    assert peak * np.exp(-delta) == pytest.approx(2 * np.exp(delta)) and 2 * np.exp(delta) > ATTENTION_BOUND


def test_a_plan_whose_session_cap_cannot_cover_a_full_context_is_refused(tiny):
    """A calibration whose attention values need a bound too wide for the hiding target: refused, naming the
    bound, the cap and what a full context refreshes (found by review: it used to pass silently)."""
    import dataclasses

    from he_aero.calibrate import LayerCalibration
    from he_aero.plan import PlanConfig, compile_plan
    from tests.he_aero.conftest import small_ring_params

    _, _, header, _, cal = tiny
    lay = cal.layers[0]
    wide = dataclasses.replace(cal, layers=(LayerCalibration((lay.z_domain[0], 40.0), lay.denominator_domain),
                                            *cal.layers[1:]))  # fmt: skip
    with pytest.raises(HeAeroError, match=r"refresh bound .* a full context \(prefill \+ \d+ decode steps\)"):
        compile_plan(header, wide, PlanConfig(session_hiding_bits=40), params=small_ring_params())


def test_a_plan_file_whose_bound_is_below_its_own_domains_is_refused(tiny_plan):
    data = tiny_plan.to_dict()
    data["refresh"]["activation_bound"] = 1.0
    with pytest.raises(HeAeroError, match=r"activation_bound' is 1, below the .* layers\[0\]'s domains"):
        ExecutionPlan.from_dict(data)


def test_logits_outside_the_calibrated_range_are_reported_before_encryption(tiny, tiny_plan):
    """The client's plausibility check would flag them after the work; the pre-check names them first."""
    import dataclasses

    view = tiny[3]
    narrow = dataclasses.replace(tiny_plan, logit_domain=(-0.01, 0.01))
    found = narrow.domain_violations(view, list(b"if x:\n  "))
    assert found and all(line.startswith("logits: ") for line in found)
    assert "the calibrated range edge" in found[0]
    assert not tiny_plan.domain_violations(view, list(b"if x:\n  "))


def test_baseline_variant_plans_round_trip_and_are_checked_at_load(tiny_variant, tmp_path):
    """A baseline model's plan carries its activation and LayerNorm plans with their calibrated domains; the
    file reads back to the same hash, and a plan missing them, with a domain they do not cover or with a plan
    of another function is refused naming the field."""
    model, header, view, cal, plan = tiny_variant
    again = load_plan(plan.save(tmp_path / "plan.json"))
    assert again.sha256 == plan.sha256 and len(again.plans[0]) == 4  # (exp, 1/x, shift, BaselinePlans)
    assert again.shape.variant == model.cfg.variant and "variant" in plan.to_dict()["checkpoint"]["shape"]
    norm = model.cfg.variant != "lnfree-relu"
    assert (plan.final_norm is not None) == norm
    text = plan.explain()
    assert ("ln1 1/sqrt" in text) == norm and ("sign" in text or "gelu" in text)

    def refused(edit, match):
        data = plan.to_dict()
        edit(data)
        with pytest.raises(HeAeroError, match=match):
            ExecutionPlan.from_dict(data)

    refused(lambda d: d["layers"][0].pop("act"), "missing field layers\\[0\\].'act'")
    refused(lambda d: d["layers"][1].update(pre_domain=[-1e3, 1e3]), "does not cover pre_domain")
    refused(lambda d: d["layers"][1].update(pre_domain=["-1", 1.0]), "two numbers")
    refused(lambda d: d["checkpoint"]["shape"].update(variant="softmax-only"), "softmax-only model")
    if model.cfg.variant == "baseline":  # a GELU file whose coefficients approximate nothing

        def constant(d):
            act = d["layers"][0]["act"]
            act["coefficients"] = act["steps"][0]["coefficients"] = [5.0] + [0.0] * (act["degree"])

        refused(constant, "max_error|steps give")

        def scaled_with_a_matching_claim(d):  # found by review: it decoded another token, silently
            act = d["layers"][0]["act"]
            act["coefficients"] = act["steps"][0]["coefficients"] = [1.3 * c for c in act["coefficients"]]
            act["max_error"] = 0.45

        refused(scaled_with_a_matching_claim, "above the 0.01 a plan may claim")
        square = {"op": "square", "times": 1}
        refused(lambda d: d["layers"][0]["act"]["steps"].append(square), "polynomial steps only|depth")
    else:  # a ReLU file with edited stages, or one whose stages do not fit between refreshes
        refused(lambda d: d["layers"][0]["act"]["stages"][0].__setitem__(1, 3.0), "max_error")
        refused(lambda d: d["layers"][0]["act"].update(eps=5.0), "must lie in \\(0, 1\\)")
    if norm:
        refused(lambda d: d["layers"][0].update(norm_ffn=d["layers"][0]["exp"]), "1/sqrt plan")
        refused(lambda d: d.pop("final_norm"), "missing field 'final_norm'")
        u_lo = plan.layers[0].u_attn_domain[0]
        refused(lambda d: d["layers"][0].update(u_attn_domain=[u_lo / 100, 2.0]), "covers the positive")
        refused(lambda d: d["layers"][0].update(u_attn_domain=[1e-200, 1e-150]), "covers the positive")
    else:  # fields of a LayerNorm in a plan for a model without one
        refused(lambda d: d.update(final_norm=d["layers"][0]["exp"]), "final_norm")
        refused(lambda d: d.update(u_final_domain=[0.5, 2.0]), "u_final_domain")
        refused(lambda d: d["layers"][0].update(u_attn_domain=[0.5, 2.0]), "u_attn_domain")


def test_the_server_refuses_a_plan_for_another_variant(tiny, tiny_variant):
    from he_aero.server.server import Server

    _, header, view, _, plan = tiny_variant
    other = {**header, "config": {**header["config"], "variant": "softmax-only"}}
    with pytest.raises(HeAeroError, match="plan is for a .* model, the checkpoint is softmax-only"):
        Server(view, other, plan, allow_insecure_for_tests=True)


def test_baseline_ranges_outside_the_plan_are_reported_before_encryption(tiny_variant):
    """A prompt that drives an FFN pre-activation (or a LayerNorm's variance) past its domain is named."""
    import dataclasses

    _, _, view, _, plan = tiny_variant
    tokens = list(b"def f(x")
    assert plan.domain_violations(view, tokens) == []
    lay = plan.layers[0]
    narrow = dataclasses.replace(lay, pre_domain=(lay.pre_domain[0] / 10, lay.pre_domain[1] / 10))
    found = dataclasses.replace(plan, layers=(narrow, *plan.layers[1:])).domain_violations(view, tokens)
    assert found and any("layer 0: FFN pre-activation" in line for line in found)


def test_error_targets_above_what_a_plan_may_claim_are_refused():
    """The plan stage cannot compile a plan its own loader would refuse (MAX_PLAN_ERROR)."""
    from he_aero.plan import PlanConfig

    for name in ("exp_max_rel_error", "recip_max_rel_error", "norm_max_rel_error", "act_max_abs_error"):
        with pytest.raises(HeAeroError, match=name):
            PlanConfig(**{name: 0.02})
    PlanConfig(act_max_abs_error=0.01)
    res = CliRunner().invoke(cli, ["plan", "--exp-error", "0.5"])
    assert res.exit_code == 2 and "'--exp-error'" in res.output


def test_plan_cli_names_the_calibration_that_does_not_fit_the_checkpoint(tiny, tmp_path):
    """Found by review: `plan --checkpoint OTHER` without --calibration fell back to the shipped calibration
    and failed later (exit 1) blaming a calibration the user never named."""
    ckpt = str(tiny[0])
    res = CliRunner().invoke(cli, ["plan", "--checkpoint", ckpt])
    assert (
        res.exit_code == 2
        and "'--calibration': not given, so the shipped model's file was used" in res.output
    )
    from he_aero.calibrate import DEFAULT_CALIBRATION

    res = CliRunner().invoke(cli, ["plan", "--checkpoint", ckpt, "--calibration", str(DEFAULT_CALIBRATION)])
    assert res.exit_code == 2 and "'--calibration'" in res.output and "not given" not in res.output
    assert "he-aero calibrate --checkpoint CHECKPOINT" in res.output
