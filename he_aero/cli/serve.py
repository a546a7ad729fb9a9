"""`he-aero serve`: the server of private inference as a long-running network service (docs/deploy.md).

Thin: check the checkpoint and its plan (usage errors name the option, before anything listens), then run
`he_aero.server.service` until SIGTERM or SIGINT. Clients connect with `he-aero encrypt-infer PROMPT --server
HOST:PORT`.
"""

from __future__ import annotations

import os

import click

from he_aero.cli.options import blame, checkpoint_option, finite, plan_option
from he_aero.server.service import MAX_CACHE_MB


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on (0.0.0.0: all)")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="TCP port (0: any free one)",
)
@checkpoint_option()
@plan_option
@click.option(
    "--max-sessions",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="sessions at once (one worker process each); more clients are told to retry later",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0, min_open=True),
    default=300.0,
    show_default=True,
    help="seconds a session waits for the client's keys or next request before it is closed",
)
@click.option(
    "--refresh-timeout",
    type=click.FloatRange(0, min_open=True),
    default=60.0,
    show_default=True,
    help="seconds a request waits for the client's refresh reply before the session is closed",
)
@click.option(
    "--max-message-mb",
    type=click.FloatRange(0.001),
    default=None,
    show_default="twice the plan's key size, >= 64 MB",
    help="largest message a client may send (the keys are the largest)",
)
@click.option(
    "--warm-workers",
    type=click.IntRange(0),
    default=1,
    show_default=True,
    help="workers kept loaded ahead of clients (saves ~4 s per session; counted within --max-sessions)",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    show_default="none: plain ws://",
    help="PEM certificate: serve wss://",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    show_default="none",
    help="PEM private key of --tls-cert",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(0),
    default=None,
    show_default="0, or 2 with --ray-address",
    help="Ray actors per session for the prefill's independent parts (needs he-aero[ray]); 0: none",
)
@click.option(
    "--ray-address",
    default=None,
    show_default="a private local Ray per session",
    help="Ray cluster for --ray-workers: 'auto' (started with `ray start --head`), HOST:PORT or ray://HOST:PORT",
)
@click.option(
    "--plaintext-cache-mb",
    type=click.FloatRange(0, MAX_CACHE_MB),
    callback=finite,
    default=None,
    show_default="no cap",
    help="MB of encoded weight plaintexts each session's worker and Ray actor keeps; the rest are encoded at "
    "each use (a cap for models whose plaintexts do not fit in memory)",
)
@click.option(
    "--allow-insecure-for-tests",
    "insecure",
    is_flag=True,
    hidden=True,
    help="tests only: serve a plan on a ring below 128-bit security",
)
def serve(
    host,
    port,
    checkpoint,
    plan_file,
    max_sessions,
    idle_timeout,
    refresh_timeout,
    max_message_mb,
    warm_workers,
    tls_cert,
    tls_key,
    ray_workers,
    ray_address,
    plaintext_cache_mb,
    insecure,
) -> None:
    """Serve encrypted inference: hold the weights and the plan, run each client's session on its
    ciphertexts in a worker process. Logs one line per session event on standard error; stops cleanly on
    SIGTERM or Ctrl-C."""
    import logging

    from he_aero.plan import load_plan
    from he_aero.server.service import ServiceConfig, default_max_message_bytes, run_service
    from models.checkpoint import DEFAULT_CHECKPOINT, read_header

    with blame("--plan"):
        plan = load_plan(plan_file)
    with blame("--checkpoint"):
        plan.check_checkpoint(read_header(checkpoint or DEFAULT_CHECKPOINT))
    if not plan.params.is_secure:
        if not insecure:
            with blame("--plan"):
                plan.params.require_secure()
        click.echo(f"WARNING: insecure test ring N={plan.params.poly_modulus_degree}", err=True)
    if (tls_cert is None) != (tls_key is None):
        raise click.BadParameter("give both --tls-cert and --tls-key, or neither", param_hint="'--tls-key'")
    ssl_context = None
    if tls_cert is not None:
        import ssl

        ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with blame("--tls-cert"):
            try:
                ssl_context.load_cert_chain(tls_cert, tls_key)
            except (ssl.SSLError, OSError) as exc:
                from he_aero.errors import HeAeroError

                raise HeAeroError(f"cannot load the certificate and key: {exc}") from exc
    if ray_workers is None:
        ray_workers = 2 if ray_address is not None else 0
    elif ray_workers == 0 and ray_address is not None:
        raise click.BadParameter("--ray-address needs --ray-workers >= 1", param_hint="'--ray-workers'")
    if ray_workers and ray_address is None and ray_workers > (os.cpu_count() or 1):
        raise click.BadParameter(
            f"{ray_workers} workers on a private Ray of this machine's {os.cpu_count()} CPUs would only take "
            "turns; use a cluster (--ray-address)",
            param_hint="'--ray-workers'",
        )
    if ray_workers:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise click.BadParameter(
                "Ray is not installed: pip install 'he-aero[ray]'", param_hint="'--ray-workers'"
            ) from None
    max_bytes = int(max_message_mb * 1e6) if max_message_mb is not None else default_max_message_bytes(plan)
    config = ServiceConfig(
        host=host,
        port=port,
        checkpoint=None if checkpoint is None else str(checkpoint),
        plan=None if plan_file is None else str(plan_file),
        max_sessions=max_sessions,
        idle_timeout=idle_timeout,
        refresh_timeout=refresh_timeout,
        max_message_bytes=max_bytes,
        warm_workers=warm_workers,
        ssl=ssl_context,
        allow_insecure_for_tests=insecure,
        ray_workers=ray_workers,
        ray_address=ray_address,
        plaintext_cache_mb=plaintext_cache_mb,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=None)
    logging.getLogger("websockets").setLevel(logging.WARNING)
    run_service(config, announce=lambda line: click.echo(line))


if __name__ == "__main__":  # `python -m he_aero.cli.serve serve ...` until `serve` is registered in the group
    from he_aero.cli import cli, main

    cli.add_command(serve)
    main()
