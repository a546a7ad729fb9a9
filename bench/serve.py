"""Service benchmark (`make bench-serve`): N clients x M tokens against one `he-aero serve` on loopback.

    python -m bench.serve [--clients 4] [--tokens 2] [--checkpoint DIR --plan FILE] [--out F.json]

Starts the server as a subprocess (`--max-sessions N --warm-workers N`, so every worker has loaded the model
before the clock starts), then N client processes at once, each running `he_aero.client.remote.run_remote`
on its own prompt from bench/data/prompts.json (greedy, M tokens). Reports throughput (generated tokens per
second of wall time, all clients together), p50/p95 time per token (prefill = the first token, decode = each
later one, measured by the client: encrypt + server + refreshes + decrypt), the server's peak RSS (front end
+ workers, sampled every 0.2 s from /proc) and the largest worker's, bytes and rounds per token counted at the
socket (keys excluded), and the WAN estimate of he_aero/wan.py. Client processes compete with the server for
the same cores: on a 2-core machine the figures include that contention.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from bench import DATA

PAGE_KB = 1024


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (FileNotFoundError, IndexError, ValueError, ProcessLookupError):
                pass
    return out


class RssSampler(threading.Thread):
    """Peak RSS of a process and its children (sum), and of the largest child, sampled every 0.2 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_total_kb, self.peak_worker_kb, self.front_kb = pid, 0, 0, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            kids = [_rss_kb(c) for c in _children(self.pid)]
            front = _rss_kb(self.pid)
            self.front_kb = max(self.front_kb, front)
            self.peak_total_kb = max(self.peak_total_kb, front + sum(kids))
            self.peak_worker_kb = max([self.peak_worker_kb, *kids])

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _client(url: str, prompt: bytes, tokens: int) -> dict:
    """One client process: a remote greedy run; per-token seconds and the socket-counted traffic."""
    from he_aero.client.remote import run_remote
    from he_aero.generation import GenerationConfig

    t0 = time.perf_counter()
    res = run_remote(url, prompt, GenerationConfig(max_new_tokens=tokens))
    return {
        "tokens": res.tokens,
        "token_seconds": [r.seconds for r in res.records],
        "seconds": dict(res.seconds),
        "traffic": res.traffic,
        "wire": res.wire,
        "wall_s": time.perf_counter() - t0,
    }


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run(clients: int, tokens: int, checkpoint: str | None, plan: str | None) -> dict:
    prompts = [bytes(p["bytes"]) for p in json.loads((DATA / "prompts.json").read_text())["prompts"]]
    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    cmd = [sys.executable, "-m", "he_aero.cli.serve", "serve", "--port", "0", "--max-sessions", str(clients)]
    cmd += ["--warm-workers", str(clients), "--idle-timeout", "900", "--refresh-timeout", "300"]
    if checkpoint:
        cmd += ["--checkpoint", checkpoint]
    if plan:
        cmd += ["--plan", plan]
    out, err = folder / "serve.out", folder / "serve.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        server = subprocess.Popen(cmd, stdout=o, stderr=e)
    try:
        deadline = time.monotonic() + 600
        while len(re.findall("model and plan loaded", err.read_text())) < clients:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start:\n{err.read_text()}")
            time.sleep(0.5)
        url = re.search(r"ws://[\d.]+:\d+", out.read_text()).group(0)
        sampler = RssSampler(server.pid)
        sampler.start()
        t0 = time.perf_counter()
        with ProcessPoolExecutor(clients, mp_context=get_context("spawn")) as pool:
            jobs = [pool.submit(_client, url, prompts[i % len(prompts)], tokens) for i in range(clients)]
            results = [j.result() for j in jobs]
        wall = time.perf_counter() - t0
        sampler.stop()
    finally:
        server.terminate()
        server.wait(60)
    prefill = [r["token_seconds"][0] for r in results]
    decode = [s for r in results for s in r["token_seconds"][1:]]
    per_token = [s for r in results for s in r["token_seconds"]]
    n_tok = sum(len(r["tokens"]) for r in results)

    def excl_setup(r, key):
        return sum(v[key] for k, v in r["traffic"]["bytes_by_purpose"].items() if k != "setup")

    up = sum(excl_setup(r, "to_server") for r in results)
    down = sum(excl_setup(r, "to_client") for r in results)
    rounds = sum(r["traffic"]["rounds"] - r["traffic"]["rounds_by_purpose"].get("setup", 0) for r in results)
    keys = results[0]["traffic"]["bytes_by_purpose"]["setup"]["to_server"]
    return {
        "clients": clients,
        "tokens_per_client": tokens,
        "cores": os.cpu_count(),
        "wall_s": round(wall, 2),
        "throughput_tokens_per_s": round(n_tok / wall, 4),
        "prefill_s": {"p50": round(_pct(prefill, 0.5), 2), "p95": round(_pct(prefill, 0.95), 2)},
        "decode_s_per_token": {"p50": round(_pct(decode, 0.5), 2), "p95": round(_pct(decode, 0.95), 2)},
        "time_per_token_s": {"p50": round(_pct(per_token, 0.5), 2), "p95": round(_pct(per_token, 0.95), 2)},
        "server_peak_rss_mb": round(sampler.peak_total_kb / PAGE_KB, 1),
        "front_end_rss_mb": round(sampler.front_kb / PAGE_KB, 1),
        "worker_peak_rss_mb": round(sampler.peak_worker_kb / PAGE_KB, 1),
        "key_bytes_per_session": keys,
        "bytes_per_token": {"up": round(up / n_tok), "down": round(down / n_tok)},
        "rounds_per_token": round(rounds / n_tok, 2),
        "wan_s_per_client": [r["wire"]["total"]["wan_s"] for r in results],
        "loopback_s_per_client": [r["wire"]["total"]["measured_s"] for r in results],
        "client_wall_s": [round(r["wall_s"], 2) for r in results],
        "tokens": [bytes(r["tokens"]).decode(errors="replace") for r in results],
    }


def report(res: dict) -> str:
    pre, dec, tok = res["prefill_s"], res["decode_s_per_token"], res["time_per_token_s"]
    per, keys = res["bytes_per_token"], res["key_bytes_per_session"] / 1e6
    return "\n".join(
        [
            f"{res['clients']} clients x {res['tokens_per_client']} tokens on {res['cores']} cores: "
            f"wall {res['wall_s']} s, throughput {res['throughput_tokens_per_s']} tokens/s",
            f"prefill p50 {pre['p50']} s p95 {pre['p95']} s; decode per token p50 {dec['p50']} s "
            f"p95 {dec['p95']} s; any token p50 {tok['p50']} s p95 {tok['p95']} s",
            f"server peak RSS {res['server_peak_rss_mb']} MB (front end {res['front_end_rss_mb']} MB, "
            f"largest worker {res['worker_peak_rss_mb']} MB)",
            f"per token (keys excluded: {keys:.1f} MB once per session): {per['up'] / 1e6:.2f} MB up, "
            f"{per['down'] / 1e6:.2f} MB down, {res['rounds_per_token']} rounds",
            f"per client: loopback {res['loopback_s_per_client']} s, "
            f"WAN estimate {res['wan_s_per_client']} s",
        ]
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.serve")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=2)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--plan", default=None)
    ap.add_argument("--out", default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)
    res = run(args.clients, args.tokens, args.checkpoint, args.plan)
    print(report(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
