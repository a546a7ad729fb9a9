"""Fuzzing what parses bytes or files: any mutation of a frame, a plan file, a calibration file or a
checkpoint config gives a clean error naming it (or, where the mutation is harmless, a valid object), never
another exception type; any byte string as a prompt gives a check result or a clean error. Seeded
(derandomized) and bounded so the default suite stays fast.
"""

import json
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from he_aero.calibrate import Calibration
from he_aero.errors import HeAeroError
from he_aero.generation import fit_prompt
from he_aero.plan import ExecutionPlan
from he_aero.protocol import Kind, Message, parse_frame, to_frame
from models.errors import ModelError

FUZZ = settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _paths(data, prefix=()):
    """Every (path, value) in a JSON tree (dicts and lists)."""
    yield prefix, data
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _paths(v, (*prefix, i))


def _mutated(data, which: int, value, delete: bool):
    """A deep copy of `data` with the which-th node (mod the node count) replaced by `value` or deleted."""
    data = json.loads(json.dumps(data))
    paths = [p for p, _ in _paths(data) if p]
    path = paths[which % len(paths)]
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return data


@FUZZ
@given(data=st.data())
def test_any_mutation_of_a_frame_is_refused_cleanly(data):
    frame = bytearray(
        to_frame(Message(Kind.TOKENS, bytes(16), {"position": 0, "n_tokens": 2}, (b"ab", b"c" * 40)))
    )
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        i = data.draw(st.integers(0, len(frame) - 1))
        if op == "flip":
            frame[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del frame[i : i + data.draw(st.integers(1, 50))]
        else:
            frame[i:i] = data.draw(st.binary(min_size=1, max_size=20))
        if not frame:
            break
    try:
        parse_frame(bytes(frame), Kind.TOKENS, bytes(16))
    except HeAeroError as exc:
        assert str(exc).startswith("protocol: ")


@pytest.fixture(scope="module")
def plan_dict(tiny_plan):
    return tiny_plan.to_dict()


@FUZZ
@given(which=st.integers(0, 10_000), value=JSON_VALUES, delete=st.booleans())
def test_any_mutation_of_a_plan_file_is_refused_naming_it(plan_dict, which, value, delete):
    try:
        ExecutionPlan.from_dict(_mutated(plan_dict, which, value, delete), where="plan fuzz.json")
    except HeAeroError as exc:
        assert "plan fuzz.json" in str(exc)


@pytest.fixture(scope="module")
def calibration_dict(tiny):
    return tiny[4].to_dict()


@FUZZ
@given(which=st.integers(0, 10_000), value=JSON_VALUES, delete=st.booleans())
def test_any_mutation_of_a_calibration_file_is_refused_naming_it(calibration_dict, which, value, delete):
    try:
        Calibration.from_dict(_mutated(calibration_dict, which, value, delete), where="calibration fuzz.json")
    except HeAeroError as exc:
        assert "calibration fuzz.json" in str(exc)


@FUZZ
@given(which=st.integers(0, 10_000), value=JSON_VALUES, delete=st.booleans())
def test_any_mutation_of_a_checkpoint_config_is_refused_naming_it(
    tiny, tmp_path_factory, which, value, delete
):
    from models.checkpoint import load_checkpoint

    folder = tmp_path_factory.mktemp("ckpt")
    shutil.copytree(tiny[0], folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(_mutated(config, which, value, delete)))
    try:
        load_checkpoint(folder)
    except ModelError as exc:
        assert "config.json" in str(exc) or str(folder) in str(exc)


@FUZZ
@given(prompt=st.binary(max_size=100))
def test_any_byte_string_as_a_prompt_is_checked_or_refused_cleanly(tiny, tiny_plan, prompt):
    """Any bytes: fit to the context (or refused when empty), then the client's domain pre-check answers."""
    view = tiny[3]
    try:
        fitted, _ = fit_prompt(prompt, 8, 2)
    except HeAeroError as exc:
        assert not prompt and "empty" in str(exc)
        return
    assert isinstance(tiny_plan.domain_violations(view, list(fitted)), list)
