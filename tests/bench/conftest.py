"""The benchmarks' smoke tests reuse the private-inference fixtures (tiny model, plan, session)."""

from tests.he_aero.conftest import tiny, tiny_plan, tiny_session  # noqa: F401
