"""Throughput and client CPU cost of the model door against the loopback server (not a test).

The server runs in its own process with a fixed latency per reply (100 ms by default), so the ideal
throughput at concurrency c is c / latency. The figures printed, measured in one run:
  requests/s, ratio = (requests/s) / (c / latency)   (goal >= 0.9 at c = 32)
  client CPU ms per request (time.process_time of this process only; goal < 2 ms)
The cache is disabled: every request goes over the wire.

    python bench/bench_client.py [--requests 500] [--latency 0.1] [--c1-requests 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from generator.config import settings_from_dict
from generator.models import ModelHub, user_message


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of another process (Linux /proc), to show the server's share of the machine."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator.testing.fake_openai", "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    base_url = proc.stdout.readline().strip()
    if not base_url.startswith("http"):
        proc.kill()
        raise SystemExit(f"the fake server did not start (said {base_url!r})")
    return proc, base_url


async def measure(base_url: str, concurrency: int, requests: int) -> tuple[float, float, int]:
    """(wall seconds, client CPU seconds, failures) for `requests` requests at `concurrency`."""
    settings = settings_from_dict(
        {
            "endpoints": {
                "bench": {"base_url": base_url, "model": "bench-model", "max_concurrency": concurrency, "timeout_s": 30}
            },
            "roles": {"judge": "bench"},
            "cache": {"enabled": False},
        }
    )
    async with ModelHub(settings) as hub:
        client = hub.chat("judge")
        # warm up: open the connections outside the measurement
        await asyncio.gather(*(client.complete([user_message(f"warm {i}")], max_tokens=16) for i in range(concurrency)))
        cpu0, t0 = time.process_time(), time.perf_counter()
        results = await asyncio.gather(
            *(client.complete([user_message(f"question number {i}")], max_tokens=16) for i in range(requests))
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    failures = sum(1 for [r] in results if not r.ok)
    return wall, cpu, failures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--c1-requests", type=int, default=50, help="requests at concurrency 1 (500 would take 50 s)")
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    args = ap.parse_args()
    proc, base_url = start_server(args.latency)
    try:
        print(f"server {base_url}, latency {args.latency * 1000:.0f} ms, cache off")
        print(f"load average before: {os.getloadavg()[0]:.2f} (other processes share this machine's cores)")
        print(
            f"{'conc':>5} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} {'ratio':>6} {'cpu ms/req':>10} "
            f"{'server ms/req':>13} {'failed':>6}"
        )
        for c in args.concurrency:
            n = args.c1_requests if c == 1 else args.requests
            server0 = process_cpu_seconds(proc.pid)
            wall, cpu, failed = asyncio.run(measure(base_url, c, n))
            server_cpu = (process_cpu_seconds(proc.pid) - server0) / (n + c)  # + the warm-up requests
            rps = n / wall
            ideal = c / args.latency
            print(
                f"{c:>5} {n:>8} {wall:>8.2f} {rps:>8.1f} {ideal:>8.1f} {rps / ideal:>6.3f} {cpu / n * 1000:>10.3f} "
                f"{server_cpu * 1000:>13.3f} {failed:>6}",
                flush=True,
            )
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
