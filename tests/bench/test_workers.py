"""The simulated worker plan (bench/workers.py) on the tiny model: what it counts and how it adds up."""

import pytest

from bench.workers import simulate

COSTS = {"rotate": 2.0, "ctct_mult": 3.0, "pt_mult": 0.5, "add": 0.05, "encrypt": 3.0, "decrypt": 1.0,
         "serialise_and_load": 1.0, "refresh_per_ciphertext": 20.0}  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(tiny_session):
    return tiny_session.server.pipeline


def test_stages_add_up_and_every_fan_out_is_costed(pipeline, tiny_plan):
    one = simulate(pipeline, tiny_plan.activation_bound, tiny_plan.mask_bits, 1, COSTS)
    assert list(one["stages"]) == pipeline.stage_names
    assert one["seconds"] == pytest.approx(sum(s["seconds"] for s in one["stages"].values()), abs=0.05)
    for name, s in one["stages"].items():
        assert s["seconds"] == pytest.approx(
            s["own_ops_seconds"] + s["refresh_seconds"] + s["parts_seconds"], abs=0.02
        ), name
    layer = one["stages"]["layer 0"]
    # qkv, o, mix products and attention's scores and values parts; refreshes cost what was measured
    assert layer["fan_outs"] == 5 and layer["parts_seconds"] > layer["own_ops_seconds"]
    assert layer["refresh_seconds"] == pytest.approx(layer["refreshed_ciphertexts"] * 0.02, abs=0.01)


def test_two_workers_are_faster_unless_moving_ciphertexts_costs_more_than_the_work(pipeline, tiny_plan):
    args = (pipeline, tiny_plan.activation_bound, tiny_plan.mask_bits)
    one, two = simulate(*args, 1, COSTS), simulate(*args, 2, COSTS)
    assert two["seconds"] < one["seconds"]
    assert two["stages"]["layer 0"]["parts"] > one["stages"]["layer 0"]["parts"]  # products split two ways
    slow_wire = {**COSTS, "serialise_and_load": 1000.0}
    assert simulate(*args, 2, slow_wire)["seconds"] > one["seconds"]


def test_a_decode_step_runs_in_place_and_counts_its_refresh_traffic(pipeline, tiny_plan):
    dec = simulate(pipeline, tiny_plan.activation_bound, tiny_plan.mask_bits, 2, COSTS, decode=True)
    layer = dec["stages"]["layer 0"]
    assert layer["fan_outs"] == 0 and layer["parts_seconds"] == 0  # one token's parts stay in the process
    assert layer["refreshed_ciphertexts"] > 0 and layer["refresh_bytes"] > 0
