"""Server throughput and latency on the torch engine vs the vLLM engine, same model and clips, on 127.0.0.1 only.

    python benchmarks/serve_engines.py [--data ../shared/data] [--clients 16 64] [--requests 8 4] [--enforce-eager]

Two models (tiny.en encoder + osum adapter + a random Qwen2 with 64-wide attention heads, which vLLM's CPU
attention needs; at most 24 new tokens), benchmarks/common.py: "small" (4 layers x 256) and "large" (12 layers
x 768). For each model, `osum serve` is started once per engine (`--engine torch`, then `--engine vllm`, both with
`--max-batch 16 --batch-wait-ms 10`) on a free loopback port, warmed up with one request, and then loaded twice:
`--clients` threads (16, then 64), each sending its number of `--requests` /v1/audio/understand requests
(task <TRANSCRIBE>, real 1-5 s AN4 clips) one after another. Printed, as a Markdown table: requests per second,
p50 and p95 latency and the vLLM / torch throughput ratio; each server's start-up time (from launch to /health
answering); and, per model, on how many clips the two engines gave the same `raw` answer (every answer to that
clip from either engine equal). Random-weight LLMs can have near-ties between tokens, so the count is reported,
not asserted. Requests are bounded in number and time and go only to 127.0.0.1. Server logs go to a temporary
directory and are shown if a server fails to come up; each server is stopped with SIGINT (see `stop`).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_DATA, ROOT, an4_clips, small_speech_llm  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from servers import free_port, wait_until_up  # noqa: E402

# name -> (layers, width, key/value heads); attention heads are width / 64 wide
MODELS = {"small": (4, 256, 2), "large": (12, 768, 4)}
ENGINES = ("torch", "vllm")
TASK = "<TRANSCRIBE>"
START_TIMEOUT = 600.0
REQUEST_TIMEOUT = 600.0


def run_load(base: str, clips: list[bytes], clients: int, requests: int) -> dict:
    """`clients` threads, each sending `requests` requests one after another; latencies and answers per clip."""
    import httpx

    def client(index: int) -> list[tuple[int, float, str]]:
        results = []
        with httpx.Client(timeout=REQUEST_TIMEOUT) as c:
            for k in range(requests):
                clip = (index * requests + k) % len(clips)
                t = time.perf_counter()
                r = c.post(f"{base}/v1/audio/understand", files={"file": ("a.wav", clips[clip])}, data={"task": TASK})
                r.raise_for_status()
                results.append((clip, time.perf_counter() - t, r.json()["raw"]))
        return results

    before = httpx.get(f"{base}/health").json()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [x for part in pool.map(client, range(clients)) for x in part]
    elapsed = time.perf_counter() - started
    after = httpx.get(f"{base}/health").json()
    latencies = sorted(x[1] for x in results)
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]  # noqa: E731
    answers = defaultdict(set)
    for clip, _, raw in results:
        answers[clip].add(raw)
    return {"throughput": len(latencies) / elapsed, "p50": pick(0.50), "p95": pick(0.95), "answers": answers,
            "requests": after["requests"] - before["requests"], "batches": after["batches"] - before["batches"]}


def run_server(model_dir: Path, engine: str, extra: list[str], clips: list[bytes], loads: list[tuple[int, int]],
               log_path: Path) -> dict:
    """Start `osum serve` on `engine`, warm it up, run each (clients, requests) load; start-up seconds and results."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "osum.cli", "serve", "--model", str(model_dir), "--host", "127.0.0.1",
               "--port", str(port), "--engine", engine, "--max-batch", "16", "--batch-wait-ms", "10", *extra]
    with open(log_path, "w") as log:
        started = time.perf_counter()
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until_up(f"{base}/health", server, timeout=START_TIMEOUT, log_path=log_path)
            startup = time.perf_counter() - started
            with httpx.Client(timeout=REQUEST_TIMEOUT) as c:  # warm-up
                r = c.post(f"{base}/v1/audio/understand", files={"file": ("a.wav", clips[0])}, data={"task": TASK})
                r.raise_for_status()
            results = {}
            for clients, requests in loads:
                print(f"    {engine}: {clients} clients x {requests} requests ...", file=sys.stderr, flush=True)
                results[clients] = run_load(base, clips, clients, requests)
        finally:
            stop(server)
    return {"startup": startup, "loads": results}


def stop(server: subprocess.Popen) -> None:
    """Stop a server started in its own session, and whatever it left of its process group.

    SIGINT, not SIGTERM: uvicorn re-raises a captured SIGTERM after its shutdown, which ends the process before
    `osum serve` closes the model, so vLLM's engine processes (VLLM::EngineCore and its worker) would outlive it;
    SIGINT ends it through KeyboardInterrupt, which does close the model. Anything still left is killed."""
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    try:
        os.killpg(server.pid, signal.SIGKILL)  # the session's leftovers, if any (the group keeps the server's id)
    except ProcessLookupError:
        pass


def compare(torch_answers: dict[int, set[str]], vllm_answers: dict[int, set[str]]) -> tuple[int, int, list]:
    """(clips where every answer from both engines is the same, clips answered by both, the differing clips)."""
    clips = sorted(set(torch_answers) & set(vllm_answers))
    differing = [(c, sorted(torch_answers[c]), sorted(vllm_answers[c])) for c in clips
                 if len(torch_answers[c] | vllm_answers[c]) != 1]
    return len(clips) - len(differing), len(clips), differing


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64], help="concurrent clients of each load")
    parser.add_argument("--requests", type=int, nargs="+", default=[8, 4],
                        help="requests each client sends, one per entry of --clients")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--enforce-eager", action="store_true", help="pass --enforce-eager to the vLLM server")
    args = parser.parse_args()
    if len(args.clients) != len(args.requests):
        parser.error("--clients and --requests need the same number of values")
    data = Path(args.data)
    if not (data / "an4" / "manifest.jsonl").is_file():
        print(f"data not found under {data}: pass --data DIR", file=sys.stderr)
        return 1
    from osum.models.checkpoint import save_model

    clips = [p.read_bytes() for p in an4_clips(data, 64, 1.0, 5.0, seed=2)]
    loads = list(zip(args.clients, args.requests))
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    extra = {"torch": [], "vllm": ["--enforce-eager"] if args.enforce_eager else []}
    runs: dict[str, dict[str, dict]] = {}
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            layers, width, kv_heads = MODELS[name]
            model, _ = small_speech_llm(layers, width, head_dim=64, kv_heads=kv_heads)
            model.config.generation.max_new_tokens = 24
            model_dir = save_model(model, Path(tmp) / name)
            del model
            runs[name] = {}
            for engine in ENGINES:
                print(f"  {name} model, {engine} engine ...", file=sys.stderr, flush=True)
                runs[name][engine] = run_server(model_dir, engine, extra[engine], clips, loads,
                                                Path(tmp) / f"{name}-{engine}.log")
    wall = time.perf_counter() - begun

    mode = "enforce_eager" if args.enforce_eager else "compiled: vLLM's default"
    load_text = ", ".join(f"{c} clients x {r} requests" for c, r in loads)
    print(f"server, torch vs vLLM engine ({mode}), --max-batch 16 --batch-wait-ms 10, /v1/audio/understand "
          f"{TASK}, AN4 clips of 1-5 s, {load_text}, tiny.en + osum adapter + random Qwen2 (head_dim 64), "
          f"24 new tokens, {os.cpu_count()} CPU cores:")
    print()
    print("| model | engine | clients | req/s | p50 ms | p95 ms | vllm/torch req/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in args.models:
        layers, width, _ = MODELS[name]
        label = f"{name} ({layers}x{width})"
        for clients, _ in loads:
            base = runs[name]["torch"]["loads"][clients]["throughput"]
            for engine in ENGINES:
                r = runs[name][engine]["loads"][clients]
                ratio = f"{r['throughput'] / base:.2f}x" if engine == "vllm" else ""
                print(f"| {label} | {engine} | {clients} | {r['throughput']:.2f} | {r['p50'] * 1000:.0f} | "
                      f"{r['p95'] * 1000:.0f} | {ratio} |")
    print()
    print("| model | engine | start-up s | requests in model calls (per load) |")
    print("|---|---|---:|---|")
    for name in args.models:
        layers, width, _ = MODELS[name]
        for engine in ENGINES:
            run = runs[name][engine]
            calls = ", ".join(f"{c} clients: {r['requests']} in {r['batches']}" for c, r in run["loads"].items())
            print(f"| {name} ({layers}x{width}) | {engine} | {run['startup']:.1f} | {calls} |")
    print()
    for name in args.models:
        merged = {}
        for engine in ENGINES:
            answers = defaultdict(set)
            for r in runs[name][engine]["loads"].values():
                for clip, raws in r["answers"].items():
                    answers[clip] |= raws
            merged[engine] = answers
        same, total, differing = compare(merged["torch"], merged["vllm"])
        unstable = {e: sum(len(v) > 1 for v in merged[e].values()) for e in ENGINES}
        distinct = len(set().union(*merged["torch"].values(), *merged["vllm"].values()))
        print(f"{name}: outputs identical: {same}/{total} clips ({distinct} distinct answers in all; clips with more "
              f"than one answer within an engine: torch {unstable['torch']}, vllm {unstable['vllm']})")
        for clip, t, v in differing[:5]:
            print(f"    clip {clip}: torch {t!r}\n    {' ' * len(str(clip))}       vllm  {v!r}")
        if len(differing) > 5:
            print(f"    ... and {len(differing) - 5} more")
    print(f"\nwall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
