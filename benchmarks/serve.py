"""Server throughput and latency with request batching on vs off, on 127.0.0.1 only.

    python benchmarks/serve.py [--data ../shared/data] [--clients 16] [--requests 20]

Starts `osum serve` twice on a free loopback port with the same model (tiny.en + osum adapter + a random
8x512 Qwen2, benchmarks/common.py, at most 24 new tokens): batching on (`--max-batch 16 --batch-wait-ms
10`) and off (`--max-batch 1`). Each time, `--clients` threads each send `--requests` transcription
requests one after another (real 1-5 s AN4 clips). Printed: requests per second, p50 and p95 latency, and
the throughput ratio. Requests are bounded in number and time and go only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, an4_clips, small_speech_llm  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from servers import free_port, wait_until_up  # noqa: E402


def run_server(model_dir: Path, extra: list[str], clips: list[bytes], clients: int, requests: int) -> dict:
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "osum.cli", "serve", "--model", str(model_dir), "--port",
                               str(port), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"{base}/health", server)
        with httpx.Client(timeout=300) as c:  # warm-up
            c.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", clips[0])})

        def client(index: int) -> list[float]:
            latencies = []
            with httpx.Client(timeout=300) as c:
                for k in range(requests):
                    data = clips[(index * requests + k) % len(clips)]
                    t = time.perf_counter()
                    r = c.post(f"{base}/v1/audio/transcriptions", files={"file": ("a.wav", data)})
                    r.raise_for_status()
                    latencies.append(time.perf_counter() - t)
            return latencies

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = sorted(x for part in pool.map(client, range(clients)) for x in part)
        elapsed = time.perf_counter() - started
        health = httpx.get(f"{base}/health").json()
    finally:
        server.terminate()
        server.wait(timeout=30)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    return {"throughput": len(latencies) / elapsed, "p50": pick(0.50), "p95": pick(0.95),
            "batches": health["batches"] - 1, "requests": health["requests"] - 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    data = Path(args.data)
    if not (data / "an4" / "manifest.jsonl").is_file():
        print(f"data not found under {data}: pass --data DIR", file=sys.stderr)
        return 1
    from osum.models.checkpoint import save_model

    clips = [p.read_bytes() for p in an4_clips(data, 64, 1.0, 5.0, seed=2)]
    model, _ = small_speech_llm()
    model.config.generation.max_new_tokens = 24
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_model(model, Path(tmp) / "model")
        on = run_server(model_dir, ["--max-batch", "16", "--batch-wait-ms", "10"], clips, args.clients, args.requests)
        off = run_server(model_dir, ["--max-batch", "1"], clips, args.clients, args.requests)
    total = args.clients * args.requests
    print(f"server, {args.clients} concurrent clients x {args.requests} requests ({total}), AN4 clips of 1-5 s, "
          f"tiny.en + osum adapter + 8x512 Qwen2 (random), 24 new tokens:")
    for name, r in (("batching on (max 16, 10 ms)", on), ("batching off", off)):
        print(f"  {name:<30} {r['throughput']:6.2f} req/s   p50 {r['p50'] * 1000:7.0f} ms   p95 "
              f"{r['p95'] * 1000:7.0f} ms   ({r['requests']} requests in {r['batches']} model calls)")
    print(f"  throughput ratio {on['throughput'] / off['throughput']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
