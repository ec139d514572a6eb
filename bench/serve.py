"""Serving: requests/s, latency and time to first token of `mmgpt serve` under load, batching on and off.

A server (`python -m mmgpt.serve`, its own process, 127.0.0.1) is started on the trained default model
for each batching setting: dynamic batching (``--max-batch-size 32 --max-wait-ms 5``) and none
(``--max-batch-size 1``). Clients (asyncio, httpx, streaming requests as the playground and OpenAI's
clients send them) keep `concurrency` requests in flight (1, 8, 32) over a fixed set of easy-VQA-style
images and questions, greedy; each reports requests/s, p50/p95/p99 latency (request sent to
``data: [DONE]``) and time to first token (to the first content delta).

Baseline for concurrency 1: ``answer()`` called directly in this process on the same inputs,
round-robin with the server's requests (one answer(), one request, ...) so load from other processes
hits both alike. Where the concurrency-1 target is missed, the server's own latency histogram
(/metrics) splits the overhead into time inside the server and time on the wire and in the client.

Targets: at concurrency 32 batching gives >= 5x the requests/s of no batching; at concurrency 1 the
p50 latency is within 15% of answer()'s.

    python -m bench.serve                      # runs/default/model, CPU
    python -m bench.serve --model PATH --requests 64
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import base64

import httpx
import torch
from PIL import Image, ImageDraw

from bench import cli, common

logger = logging.getLogger("bench.serve")

NAME = "serve"
MODES = {"batching": ["--max-batch-size", "32", "--max-wait-ms", "5"], "no_batching": ["--max-batch-size", "1"]}
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
          "teal": (30, 160, 160), "brown": (140, 90, 40), "gray": (128, 128, 128), "black": (20, 20, 20)}
QUESTIONS = ("What color is the shape?", "What shape is in the image?", "Is there a circle in the image?",
             "Is the shape blue?")


def inputs(count: int, seed: int) -> list[tuple[str, bytes]]:
    """(question, PNG bytes) pairs: one shape of a random colour, kind, size and place on white."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        image = Image.new("RGB", (64, 64), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        size, x, y = rng.randint(16, 40), rng.randint(0, 20), rng.randint(0, 20)
        color = rng.choice(list(COLORS.values()))
        shape = rng.choice(("circle", "rectangle", "triangle"))
        if shape == "circle":
            draw.ellipse((x, y, x + size, y + size), fill=color)
        elif shape == "rectangle":
            draw.rectangle((x, y, x + size, y + size), fill=color)
        else:
            draw.polygon([(x, y + size), (x + size, y + size), (x + size // 2, y)], fill=color)
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        out.append((rng.choice(QUESTIONS), buffer.getvalue()))
    return out


def body(model: str, question: str, image: bytes, max_tokens: int | None = None) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    return {"model": model, "stream": True, "temperature": 0, "messages": [{"role": "user", "content": [
        {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": url}}]}],
        **({"max_tokens": max_tokens} if max_tokens else {})}


async def one_request(client: httpx.AsyncClient, payload: dict[str, Any]) -> dict[str, Any]:
    """Send one streaming request -> {latency_s, ttft_s, text}."""
    start = time.perf_counter()
    first, text = None, []
    async with client.stream("POST", "/v1/chat/completions", json=payload) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                if choice["delta"].get("content"):
                    first = first if first is not None else time.perf_counter()
                    text.append(choice["delta"]["content"])
    end = time.perf_counter()
    return {"latency_s": end - start, "ttft_s": (first if first is not None else end) - start, "text": "".join(text)}


async def load(url: str, model: str, asks: list[tuple[str, bytes]], concurrency: int) -> dict[str, Any]:
    """Keep `concurrency` requests in flight until every ask is answered -> rates, percentiles, answers."""
    queue: asyncio.Queue = asyncio.Queue()
    for i, ask in enumerate(asks):
        queue.put_nowait((i, ask))
    results: list[dict[str, Any] | None] = [None] * len(asks)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:
        async def run() -> None:
            while not queue.empty():
                i, (question, image) = queue.get_nowait()
                results[i] = await one_request(client, body(model, question, image))

        start = time.perf_counter()
        await asyncio.gather(*(run() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(results, wall, concurrency)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p95, p99 (linear interpolation) and the mean."""
    ordered = sorted(values)

    def at(q: float) -> float:
        k = (len(ordered) - 1) * q
        low = int(k)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (k - low)

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "mean": statistics.fmean(ordered)}


def summarize(results: list[dict[str, Any]], wall: float, concurrency: int) -> dict[str, Any]:
    return {"concurrency": concurrency, "requests": len(results), "wall_s": wall,
            "requests_per_s": len(results) / wall,
            "latency_s": percentiles([r["latency_s"] for r in results]),
            "ttft_s": percentiles([r["ttft_s"] for r in results]),
            "answers": [r["text"] for r in results]}


def server_metrics(url: str) -> dict[str, float]:
    """Sums and counts of the server's latency and batch-size histograms."""
    text = httpx.get(f"{url}/metrics").text
    out = {}
    for name in ("mmgpt_request_latency_seconds", "mmgpt_batch_size", "mmgpt_time_to_first_token_seconds"):
        for stat in ("sum", "count"):
            match = re.search(rf"^{name}_{stat} (\S+)$", text, re.M)
            out[f"{name}_{stat}"] = float(match.group(1)) if match else 0.0
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# what each stack of the GIL-holding thread was doing, first match wins
PROFILE_CATEGORIES = (
    ("model: MMGPT.generate (encoders, HF decoding loop)", "MMGPT.generate"),
    ("model: batch collation (processor)", "Processor.__call__"),
    ("worker: streaming text and stop checks", "_Steps"),
    ("image: decode and transform (Processor.image_tensor)", "Processor.image_tensor"),
    ("request: JSON parse and validation", "parse ("),
    ("request: messages to prompt (conversation)", "conversation ("),
    ("response: SSE chunks (stream)", "stream ("),
    ("HTTP: uvicorn / starlette / fastapi", "uvicorn"),
    ("HTTP: uvicorn / starlette / fastapi", "starlette"),
    ("HTTP: uvicorn / starlette / fastapi", "fastapi"),
    ("asyncio event loop", "asyncio"),
)


def start_profile(pid: int, out: str) -> subprocess.Popen | None:
    """py-spy sampling the server's GIL holder for 10 s (None when py-spy is not installed)."""
    import shutil

    if shutil.which("py-spy") is None:
        logger.warning("--profile needs py-spy (pip install py-spy); no profile taken")
        return None
    spy = subprocess.Popen(["py-spy", "record", "--gil", "-f", "raw", "-r", "250", "-d", "10", "-o", out,
                            "--pid", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches
    return spy


def gil_profile(path: str) -> dict[str, Any]:
    """Shares of GIL-holding samples by category, and the top functions by own samples."""
    categories: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        name = next((label for label, key in PROFILE_CATEGORIES if any(key in f for f in frames)), "other")
        categories[name] = categories.get(name, 0) + int(count)
        leaf = frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1].split("/")[-1]
        own[leaf] = own.get(leaf, 0) + int(count)
    top = sorted(own.items(), key=lambda kv: -kv[1])[:12]
    return {"samples": total, "categories": {k: v / max(total, 1) for k, v in
                                             sorted(categories.items(), key=lambda kv: -kv[1])},
            "top_self": [{"function": k, "share": v / max(total, 1)} for k, v in top]}


def _stop_with_parent() -> None:
    """In a server's process before it starts (Linux): SIGTERM it when the bench's process ends, however it ends
    (a SIGKILL runs no cleanup), so a stopped bench leaves no server behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def start_server(model: str, mode: str, threads: int | None, extra: tuple[str, ...] = (),
                 source_tree: str | None = None) -> tuple[subprocess.Popen, str]:
    """`python -m mmgpt.serve` on a free port (mmgpt imported from `source_tree` if given) -> (process, URL)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
           **({"PYTHONPATH": str(Path(source_tree).resolve())} if source_tree else {})}
    process = subprocess.Popen([sys.executable, "-m", "mmgpt.serve", "--model", model, "--model-name", "bench",
                                "--port", str(port), "--device", "cpu", *MODES[mode], *extra], env=env,
                               cwd=source_tree,  # `python -m` puts the working folder first on sys.path
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_stop_with_parent if sys.platform == "linux" else None)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the {mode} server exited with {process.returncode}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the {mode} server did not start within 120 s")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)


def baseline_round_robin(url: str, mm: Any, asks: list[tuple[str, bytes]],
                         max_tokens: int | None = None) -> dict[str, Any]:
    """Concurrency 1, alternating answer() in this process with one server request on the same input.

    The server's requests share one kept-alive connection, as a client's do.
    """
    result = round_robin(mm, {"server": url}, asks, max_tokens)
    direct, served = result["answer()"], result["server"]
    return {"answer_latency_s": direct["latency_s"], "answers": direct["answers"],
            "server_latency_s": served["latency_s"], "server_ttft_s": served["ttft_s"],
            "server_answers": served["answers"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.new_parser(__doc__)
    parser.add_argument("--model", default="runs/default/model", help="saved model folder, or an `mmgpt export` folder")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level (c=1: a third)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests per server")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the server (what holds the GIL) during the batching run at the top concurrency")
    parser.add_argument("--profile-out", default="/tmp/mmgpt-serve-py-spy.txt", help="py-spy's raw stacks")
    parser.add_argument("--device", default="cpu", choices=["cpu"], help="the server runs on CPU here")
    parser.add_argument("--configs", nargs="+", default=None,
                        help="instead of the load runs: the concurrency-1 comparison with answer() only, on these "
                             "presets (configs/NAME.yaml) built with random weights, e.g. default gpu200m")
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[0],
                        help="with --configs: new tokens per answer, one comparison each (0: the model's default)")
    parser.add_argument("--server-args", default="", help="with --configs: extra `mmgpt serve` options")
    parser.add_argument("--exports", nargs="+", default=[], choices=["onnx", "onnx-int8"],
                        help="with --configs: also serve each model's `mmgpt export` (fp32, --int8) in the same "
                             "round-robin")
    parser.add_argument("--baseline-tree", default=None,
                        help="with --configs: also serve from this source tree (e.g. a checkout of main), "
                             "in the same round-robin")
    cli.add_run_options(parser)
    return parser.parse_args(argv)


def round_robin(mm: Any, urls: dict[str, str], asks: list[tuple[str, bytes]],
                max_tokens: int | None) -> dict[str, Any]:
    """Concurrency 1: for each ask, answer() in this process, then one streaming request to each server in turn
    -> {"answer()" and each server's name: {"latency_s": percentiles, "answers": [...]}}, a server's with
    "ttft_s" too. Each server's requests share one kept-alive connection, as a client's do."""
    from mmgpt.inference import answer

    options = {"max_new_tokens": max_tokens} if max_tokens else {}

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {name: {"latency": [], "ttft": [], "answers": []} for name in ["answer()", *urls]}
        clients = {name: httpx.AsyncClient(base_url=url, timeout=300) for name, url in urls.items()}
        try:
            for question, image in asks:
                start = time.perf_counter()
                out["answer()"]["answers"].append(answer(question, image, model=mm, **options))
                out["answer()"]["latency"].append(time.perf_counter() - start)
                for name, client in clients.items():
                    result = await one_request(client, body("bench", question, image, max_tokens))
                    out[name]["latency"].append(result["latency_s"])
                    out[name]["ttft"].append(result["ttft_s"])
                    out[name]["answers"].append(result["text"])
        finally:
            for client in clients.values():
                await client.aclose()
        return {name: {"latency_s": percentiles(v["latency"]), "answers": v["answers"],
                       **({"ttft_s": percentiles(v["ttft"])} if v["ttft"] else {})} for name, v in out.items()}

    return asyncio.run(run())


def concurrency_one(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Each server's p50 over answer()'s at concurrency 1, round-robin, on random-weight presets -> results JSON.

    With --baseline-tree, a second server runs that source tree's mmgpt (e.g. a checkout of the previous
    commit) in the same round-robin, so before and after are measured side by side.
    """
    import tempfile

    from bench.cpu_inference import build

    comparisons = []
    with tempfile.TemporaryDirectory() as folder:
        for config in args.configs:
            mm = build(config, seed=args.seed)
            mm.save_pretrained(Path(folder) / config)
            servers = {"server": start_server(str(Path(folder) / config), "batching", args.threads,
                                              tuple(args.server_args.split()))}
            if args.baseline_tree:
                servers["baseline server"] = start_server(str(Path(folder) / config), "batching", args.threads,
                                                          tuple(args.server_args.split()), args.baseline_tree)
            for kind in args.exports:
                from mmgpt.export import export_onnx

                exported = export_onnx(Path(folder) / config, Path(folder) / f"{config}-{kind}",
                                       int8=kind == "onnx-int8")
                servers[f"{kind} server"] = start_server(str(exported), "batching", args.threads,
                                                         tuple(args.server_args.split()))
            urls = {name: url for name, (_, url) in servers.items()}
            try:
                for max_tokens in args.max_tokens:
                    round_robin(mm, urls, inputs(args.warmup, args.seed + 99), max_tokens)
                    result = round_robin(mm, urls, inputs(args.requests, args.seed + 1), max_tokens)
                    direct = result.pop("answer()")
                    row = {"config": config, "max_tokens": max_tokens or None,
                           "answer_p50_ms": 1e3 * direct["latency_s"]["p50"]}
                    for name, served in result.items():
                        row[f"{name} p50_ms"] = 1e3 * served["latency_s"]["p50"]
                        row[f"{name} ratio"] = served["latency_s"]["p50"] / direct["latency_s"]["p50"]
                        row[f"{name} answers equal"] = served["answers"] == direct["answers"]
                    comparisons.append(row)
                    logger.info("%s", row)
            finally:
                for process, _ in servers.values():
                    process.terminate()
                    process.wait(30)
    return cli.write(NAME, f"{NAME}-c1", device, args, {"comparisons": comparisons})


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    # SIGTERM ends the bench through its cleanup (servers stopped, temporary models deleted), as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    device = cli.setup(args)
    if args.configs:
        return concurrency_one(args, device)
    from mmgpt.inference import load_model
    from mmgpt.runtime.manifest import is_export_folder

    # an export's baseline is answer() on the folder itself (mmgpt.runtime), as the server runs it
    mm = args.model if is_export_folder(args.model) else load_model(args.model, "cpu")
    runs: dict[str, list[dict[str, Any]]] = {}
    baseline: dict[str, Any] = {}
    server_side: dict[str, dict[str, float]] = {}
    for mode in MODES:
        process, url = start_server(args.model, mode, args.threads)
        try:
            asyncio.run(load(url, "bench", inputs(args.warmup, args.seed + 99), min(8, args.warmup)))
            runs[mode] = []
            for concurrency in args.concurrency:
                count = args.requests if concurrency > 1 else max(8, args.requests // 3)
                asks = inputs(count, args.seed + concurrency)
                if concurrency == 1 and mode == "batching":
                    before = server_metrics(url)
                    baseline = baseline_round_robin(url, mm, asks)
                    after = server_metrics(url)
                    server_side = {k: after[k] - before.get(k, 0.0) for k in after}
                spy = start_profile(process.pid, args.profile_out) if args.profile and (
                    mode, concurrency) == ("batching", max(args.concurrency)) else None
                before = server_metrics(url)
                cpu_before = (cpu_seconds(process.pid), sum(os.times()[:2]))
                result = asyncio.run(load(url, "bench", asks, concurrency))
                after = server_metrics(url)
                # where the 2 cores went: the server process (event loop + model) vs this client
                result["server_cpu_s"] = cpu_seconds(process.pid) - cpu_before[0]
                result["client_cpu_s"] = sum(os.times()[:2]) - cpu_before[1]
                result["server_batch_mean"] = ((after["mmgpt_batch_size_sum"] - before["mmgpt_batch_size_sum"])
                                               / max(after["mmgpt_batch_size_count"] - before["mmgpt_batch_size_count"],
                                                     1))
                logger.info("%s c=%d: %.1f req/s, p50 %.1f ms, p99 %.1f ms, ttft p50 %.1f ms", mode, concurrency,
                            result["requests_per_s"], 1e3 * result["latency_s"]["p50"],
                            1e3 * result["latency_s"]["p99"], 1e3 * result["ttft_s"]["p50"])
                if spy is not None:
                    spy.wait(60)
                    result["gil_profile"] = gil_profile(args.profile_out)
                runs[mode].append(result)
        finally:
            process.terminate()
            process.wait(30)
    payload = {"model": args.model, "runs": runs, "baseline_c1": baseline, "server_side_c1": server_side,
               "targets": targets(runs, baseline, server_side)}
    written = cli.write(NAME, NAME, device, args, payload)
    print(section({**json.loads(Path(written["path"]).read_text()), "path": written["path"]}))
    if args.out_dir is None:
        write_section({**json.loads(Path(written["path"]).read_text()), "path": written["path"]})
    return written


def targets(runs: dict[str, list[dict[str, Any]]], baseline: dict[str, Any],
            server_side: dict[str, float]) -> dict[str, Any]:
    """The two targets, measured: batching speedup at the highest concurrency, c=1 p50 over answer()'s."""
    top = {mode: max(rs, key=lambda r: r["concurrency"]) for mode, rs in runs.items()}
    speedup = top["batching"]["requests_per_s"] / top["no_batching"]["requests_per_s"]
    ratio = baseline["server_latency_s"]["p50"] / baseline["answer_latency_s"]["p50"]
    inside = server_side["mmgpt_request_latency_seconds_sum"] / max(server_side["mmgpt_request_latency_seconds_count"],
                                                                    1)
    return {
        "batching_speedup": {"concurrency": top["batching"]["concurrency"], "value": speedup, "target": 5.0,
                             "met": speedup >= 5.0},
        "c1_latency_over_answer": {"value": ratio, "target": 1.15, "met": ratio <= 1.15,
                                   "answer_p50_ms": 1e3 * baseline["answer_latency_s"]["p50"],
                                   "server_p50_ms": 1e3 * baseline["server_latency_s"]["p50"],
                                   "inside_server_mean_ms": 1e3 * inside},
        "answers_equal_answer": baseline["answers"] == baseline["server_answers"],
    }


def section(data: dict[str, Any]) -> str:
    """The markdown section for bench/RESULTS.md."""
    env = data["env"]
    threads = data["args"].get("threads") or "default"
    lines = ["## Serving", "",
             f"`{Path(data['path']).name}`: {env['device_name']}, {env['date']}, commit `{env['git_commit'][:7]}`, "
             f"model `{data['model']}`, greedy streaming requests, torch threads {threads}",
             "", "| mode | concurrency | requests | req/s | p50 ms | p95 ms | p99 ms | TTFT p50 ms | TTFT p99 ms "
                 "| mean batch | server CPU s | client CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, results in data["runs"].items():
        for r in results:
            lat, ttft = r["latency_s"], r["ttft_s"]
            lines.append(f"| {mode} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']:.1f} | "
                         f"{1e3 * lat['p50']:.1f} | {1e3 * lat['p95']:.1f} | {1e3 * lat['p99']:.1f} | "
                         f"{1e3 * ttft['p50']:.1f} | {1e3 * ttft['p99']:.1f} | {r['server_batch_mean']:.1f} | "
                         f"{r['server_cpu_s']:.1f} | {r['client_cpu_s']:.1f} |")
    t = data["targets"]
    speed, c1 = t["batching_speedup"], t["c1_latency_over_answer"]
    lines += ["", "| target | measured | status |", "|---|---|---|",
              f"| batching >= 5x the req/s of no batching at concurrency {speed['concurrency']} | "
              f"{speed['value']:.2f}x | {'met' if speed['met'] else '**missed**'} |",
              f"| concurrency-1 p50 latency within 15% of answer() | {c1['value']:.3f}x "
              f"(server {c1['server_p50_ms']:.1f} ms vs answer() {c1['answer_p50_ms']:.1f} ms; "
              f"{c1['inside_server_mean_ms']:.1f} ms of it inside the server) | "
              f"{'met' if c1['met'] else '**missed**'} |",
              "", f"Server answers equal answer()'s on the concurrency-1 inputs: {t['answers_equal_answer']}.", ""]
    for mode, results in data["runs"].items():
        for r in results:
            if "gil_profile" in r:
                profile = r["gil_profile"]
                lines += [f"Profile ({mode}, concurrency {r['concurrency']}; py-spy --gil, {profile['samples']} "
                          "samples of the thread holding the GIL in the server):", "",
                          "| where | share |", "|---|---|"]
                lines += [f"| {k} | {100 * v:.1f}% |" for k, v in profile["categories"].items()]
                lines += ["", "Top functions by own samples: " + ", ".join(
                    f"`{f['function']}` {100 * f['share']:.1f}%" for f in profile["top_self"][:6]) + ".", ""]
    return "\n".join(lines)


def write_section(data: dict[str, Any], results_md: Path = common.REPO / "bench" / "RESULTS.md") -> None:
    """Put (or replace) the Serving section at the end of bench/RESULTS.md."""
    common.write_marked_section(results_md, "serve", section(data), empty="# Benchmark results\n")


main = common.exit_status(run)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
