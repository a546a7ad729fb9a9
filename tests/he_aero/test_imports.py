"""The dependency direction, checked in fresh interpreters: the server side cannot load key generation or
decryption code, and `models` never imports `he_aero`."""

import json
import subprocess
import sys

SERVER_SIDE = ("he_aero.server.server", "he_aero.plan", "he_aero.ckks.pipeline", "he_aero.ckks.refresh")
SECRET_NAMES = ("KeyGenerator", "Decryptor", "SecretKey", "secret_key")


def _loaded_after(*modules: str) -> dict[str, str]:
    """{module name: source file} of every he_aero/approx/models module loaded by importing `modules` in a
    fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {list(modules)!r}: importlib.import_module(m)\n"
        "print(json.dumps({k: getattr(v, '__file__', None) for k, v in sys.modules.items()\n"
        "    if k.split('.')[0] in ('he_aero', 'approx', 'models')}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def test_the_server_side_loads_no_key_generation_or_decryption():
    loaded = _loaded_after(*SERVER_SIDE)
    assert "he_aero.server.server" in loaded
    assert not [m for m in loaded if m.startswith("he_aero.client")]
    for name, path in loaded.items():  # no loaded project module even names the secret-key API
        if path and name.startswith("he_aero"):
            source = open(path, encoding="utf-8").read()
            assert not [s for s in SECRET_NAMES if s in source], f"{name} names {SECRET_NAMES}"


def test_the_client_side_is_where_the_secret_key_api_is_named():
    """The check above can fail: the client's key module does name the secret-key API."""
    loaded = _loaded_after("he_aero.client.keys")
    source = open(loaded["he_aero.client.keys"], encoding="utf-8").read()
    assert "KeyGenerator" in source and "Decryptor" in source


def test_models_never_import_he_aero():
    for top in ("models.linear_view", "models.decoder"):  # approx: tests/approx/test_imports.py
        loaded = _loaded_after(top)
        assert not [m for m in loaded if m.startswith("he_aero")], top
