"""`he-aero serve`'s options reach the session workers, and bad ones are usage errors naming the option
(the served sessions themselves: tests/he_aero/server/test_service.py)."""

import pytest
from click.testing import CliRunner

from he_aero.cli import cli
from he_aero.errors import HeAeroError
from he_aero.server.service import ServiceConfig


@pytest.mark.parametrize(
    "args, option",
    [
        (["--plaintext-cache-mb", "-1"], "--plaintext-cache-mb"),
        (["--plaintext-cache-mb", "nan"], "--plaintext-cache-mb"),
        (["--plaintext-cache-mb", "inf"], "--plaintext-cache-mb"),
        (["--plaintext-cache-mb", "1e303"], "--plaintext-cache-mb"),
        (["--ray-workers", "0", "--ray-address", "auto"], "--ray-workers"),
        (["--ray-workers", "64"], "--ray-workers"),
    ],
)
def test_bad_serve_options_are_usage_errors_naming_the_option(args, option):
    result = CliRunner().invoke(cli, ["serve", "--port", "0", *args])
    assert result.exit_code == 2 and option in result.output


def test_the_plaintext_cache_cap_reaches_the_worker_and_its_server():
    from he_aero.server.worker import load_server

    cmd = ServiceConfig(plaintext_cache_mb=1.5).worker_command()
    assert cmd[cmd.index("--plaintext-cache-mb") + 1] == "1.5"
    assert "--plaintext-cache-mb" not in ServiceConfig().worker_command()
    assert load_server(None, None, False, plaintext_cache_mb=1.5).cache_limit == 1_500_000
    for bad in (-1, float("nan"), float("inf"), 1e303, "2", True):
        with pytest.raises(HeAeroError, match="plaintext_cache_mb"):
            ServiceConfig(plaintext_cache_mb=bad)
