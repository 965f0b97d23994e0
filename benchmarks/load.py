"""Load test for `lstmlm serve`: N concurrent clients on loopback send a bounded number of requests.

Reports requests/s, p50/p99 latency and the error count; prints Markdown and writes OUT.json and OUT.md.
The server is either one already running (--url) or one this script starts as a subprocess for a run
directory (--run-dir) or for a toy model it trains in a few seconds (--tiny), and stops afterwards.

Args (command line):
    --url URL | --run-dir DIR | --tiny    what to load
    --endpoint next|generate|score         what each request asks (default next)
    --clients N --requests M               M requests in all, N at a time (each client keeps one connection)
    --num-words W                          /v1/generate: words per request
    --out PREFIX                           default test-artifacts/load-ENDPOINT
    --serve-flags "..."                    extra flags for `lstmlm serve` (e.g. "--precision int8")
    --compare-batching                     /v1/next with micro-batching and with the plain lock (--no-micro-batching),
                                           for each of --clients-list (default 1,8,32): one table
    --keep-alive-check                     one client, /v1/next one request at a time: median latency through an
                                           httpx keep-alive connection, a new connection per request (urllib), and
                                           headless Chromium's fetch() from the served page (its keep-alive)
    --compare-streaming                    /v1/completions for each of --clients-list (default 1,8,32) concurrent
                                           clients: streamed (time to first token, tokens/s per stream and in all)
                                           beside the same requests not streamed (latency); --num-words tokens each

Example:
    python benchmarks/load.py --tiny --clients 8 --requests 400
    python benchmarks/load.py --run-dir runs/ptb-small --clients 4 --requests 200 --endpoint next
    python benchmarks/load.py --run-dir runs/ptb-small --compare-batching --requests 400
    python benchmarks/load.py --run-dir runs/ptb-small --keep-alive-check --requests 200
    python benchmarks/load.py --run-dir runs/ptb-small --compare-streaming --requests 256 --num-words 50
"""

import argparse
import json
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

PROMPTS = ["the", "the stock market", "a bird sang in the", "the company said it", "in new york",
           "the cat sat on the", "shares of the", "the dog ate the bone and"]
TOY_SENTENCES = ["the cat sat on the mat", "the dog ate the bone", "a bird sang in the tree",
                 "the market rose today"]


def train_tiny(folder):
    """A one-epoch toy run directory (the tests' recipe), for measuring the server rather than the model."""
    from lstmlm.presets import preset
    from lstmlm.training.loop import train

    rng = random.Random(0)
    for name, lines in (("train", 300), ("valid", 40)):
        (folder / f"{name}.txt").write_text("\n".join(rng.choice(TOY_SENTENCES) for _ in range(lines)) + "\n")
    config = preset("tiny", train=str(folder / "train.txt"), valid=str(folder / "valid.txt"), epochs=1,
                    hidden_size=16)
    return train(config, out=folder / "run", progress=False, log=lambda line: None)


def start_server(run_dir, flags=()):
    """`lstmlm serve RUN_DIR --port 0 FLAGS` in a subprocess; returns (process, base URL) once /health answers."""
    process = subprocess.Popen([sys.executable, "-m", "lstmlm", "serve", str(run_dir), "--port", "0",
                                "--log-level", "warning", *flags], stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    found = re.search(r"at (http://\S+?)/ ", line)
    if not found:
        process.kill()
        sys.exit(f"load.py: the server did not start: {line.strip()} {process.stderr.read()[-2000:]}")
    # keep reading its stderr so a chatty server never blocks on a full pipe
    threading.Thread(target=lambda: [sys.stderr.write(f"server: {text}") for text in process.stderr],
                     daemon=True).start()
    url = found[1]
    for _ in range(300):
        try:
            httpx.get(url + "/health", timeout=5).raise_for_status()
            return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    sys.exit("load.py: the server did not answer /health within 30 s")


def percentile(values, q):
    """Nearest-rank percentile of `values` (q in [0, 1]); nan when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def request_body(endpoint, index, num_words):
    prompt = PROMPTS[index % len(PROMPTS)]
    if endpoint == "next":
        return {"text": prompt, "top_k": 5}
    if endpoint == "generate":
        return {"prompt": prompt, "num_words": num_words, "temperature": 1.0, "top_k": 40, "seed": index}
    return {"text": prompt + " " + " ".join(PROMPTS)}


def measure(url, endpoint, clients, requests, num_words):
    """Send `requests` requests over `clients` threads; returns the result dict."""
    local = threading.local()
    latencies, errors, lock = [], [], threading.Lock()

    def one(index):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        started = time.perf_counter()
        try:
            answer = local.client.post(f"/v1/{endpoint}", json=request_body(endpoint, index, num_words))
            ok, reason = answer.status_code == 200, f"HTTP {answer.status_code}"
        except httpx.HTTPError as error:
            ok, reason = False, type(error).__name__
        elapsed = time.perf_counter() - started
        with lock:
            (latencies.append(elapsed) if ok else errors.append(reason))

    with ThreadPoolExecutor(clients) as pool:  # warm-up: one request per client (connections, first calls)
        list(pool.map(one, range(clients)))
    latencies.clear(), errors.clear()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - started
    health = httpx.get(url + "/health", timeout=10).json()
    return {"endpoint": endpoint, "clients": clients, "requests": requests,
            "num_words": num_words if endpoint == "generate" else None, "seconds": round(seconds, 3), "requests_per_second": round(requests / seconds, 2),
            "p50_ms": round(1000 * percentile(latencies, 0.50), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "mean_ms": round(1000 * statistics.fmean(latencies or [float("nan")]), 2), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "model": health["model"],
            "vocabulary_size": health["vocabulary_size"], "parameters": health["parameters"],
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPUs", "command": " ".join(sys.argv)}


def markdown(result):
    rows = [("model", f"{result['model']} ({result['vocabulary_size']:,} words, {result['parameters']:,} "
                      "parameters)"),
            ("endpoint", f"/v1/{result['endpoint']}"
             + (f" ({result['num_words']} words)" if result["num_words"] else "")),
            ("clients x requests", f"{result['clients']} x {result['requests']}"),
            ("requests/s", f"{result['requests_per_second']:.1f}"),
            ("p50 latency", f"{result['p50_ms']:.1f} ms"), ("p99 latency", f"{result['p99_ms']:.1f} ms"),
            ("errors", str(result["errors"]) + (f" ({', '.join(result['error_kinds'])})" if result["errors"] else "")),
            ("machine", result["machine"])]
    return "\n".join(["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--run-dir", help="start `lstmlm serve RUN_DIR` for the test")
    where.add_argument("--tiny", action="store_true", help="train a toy model (seconds) and serve it")
    parser.add_argument("--endpoint", choices=["next", "generate", "score"], default="next")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--num-words", type=int, default=20, help="/v1/generate: words per request")
    parser.add_argument("--out", help="output prefix (default test-artifacts/load-ENDPOINT)")
    parser.add_argument("--serve-flags", default="", help="extra flags for lstmlm serve")
    parser.add_argument("--compare-batching", action="store_true",
                        help="/v1/next with and without micro-batching for each of --clients-list")
    parser.add_argument("--clients-list", default="1,8,32")
    parser.add_argument("--keep-alive-check", action="store_true",
                        help="one client: httpx keep-alive vs a connection per request vs Chromium's fetch")
    parser.add_argument("--compare-streaming", action="store_true",
                        help="/v1/completions streamed (time to first token, tokens/s) and not, per --clients-list")
    args = parser.parse_args()
    if args.clients <= 0 or args.requests <= 0:
        parser.error("--clients and --requests must be positive")
    if args.compare_batching:
        return compare_batching(args)
    if args.keep_alive_check:
        return keep_alive_check(args)
    if args.compare_streaming:
        return compare_streaming(args)

    process = None
    with tempfile.TemporaryDirectory() as folder:
        url = args.url.rstrip("/") if args.url else None
        if not url:
            run_dir = train_tiny(Path(folder)) if args.tiny else args.run_dir
            process, url = start_server(run_dir, args.serve_flags.split())
        try:
            result = measure(url, args.endpoint, args.clients, args.requests, args.num_words)
        finally:
            if process:
                process.terminate()
                process.wait(timeout=30)
    out = Path(args.out or f"test-artifacts/load-{args.endpoint}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(f"`{result['command']}`\n\n" + markdown(result))
    print(markdown(result), end="")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}", file=sys.stderr)
    return 1 if result["errors"] else 0


def compare_batching(args):
    """One table: /v1/next requests/s, p50 and p99 with micro-batching and with the plain lock, per client count."""
    import os

    from lstmlm.machine import describe

    clients_list = [int(n) for n in args.clients_list.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        run_dir = train_tiny(Path(folder)) if args.tiny else args.run_dir
        for label, flags in (("micro-batching", []), ("plain lock", ["--no-micro-batching"])):
            process, url = start_server(run_dir, [*flags, *args.serve_flags.split()])
            try:
                for clients in clients_list:
                    result = measure(url, "next", clients, args.requests, args.num_words)
                    rows.append({"server": label, **result})
                    print(f"{label}, {clients} clients: {result['requests_per_second']} requests/s, "
                          f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, errors {result['errors']}",
                          file=sys.stderr)
            finally:
                process.terminate()
                process.wait(timeout=30)
    header = (f"`{' '.join(sys.argv)}` -- {describe()}; load average {os.getloadavg()[0]:.1f} at the end; "
              f"model {rows[0]['model']} ({rows[0]['parameters']:,} parameters)\n\n")
    table = ["| server | clients | requests/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    table += [f"| {r['server']} | {r['clients']} | {r['requests_per_second']:.1f} | {r['p50_ms']:.1f} | "
              f"{r['p99_ms']:.1f} | {r['errors']} |" for r in rows]
    text = header + "\n".join(table) + "\n"
    out = Path(args.out or "test-artifacts/load-batching")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text, end="")
    return 1 if any(r["errors"] for r in rows) else 0


def browser_latencies(url, body, requests, chromium="/usr/bin/chromium"):
    """Seconds of each of `requests` sequential fetch() POSTs made by headless Chromium from the served page
    (one keep-alive connection, as a user's browser), or None without Chromium or Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ModuleNotFoundError:
        return None
    if not Path(chromium).exists():
        return None
    script = """async ([body, n]) => { const out = [];
        for (let i = 0; i < n; i++) { const t = performance.now();
            const r = await fetch('/v1/next', {method: 'POST', headers: {'content-type': 'application/json'},
                                               body: JSON.stringify(body)});
            await r.json(); out.push((performance.now() - t) / 1000); }
        return out; }"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.evaluate(script, [body, 5])  # warm-up
            return page.evaluate(script, [body, requests])
        finally:
            browser.close()


def keep_alive_check(args):
    """Median and p99 latency of sequential /v1/next requests from one client, three ways (see --help)."""
    import os
    import urllib.request

    from lstmlm.machine import describe

    body = {"text": "the stock market", "top_k": 5}
    data = json.dumps(body).encode()

    def timed(call, n):
        call()  # warm-up
        out = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            out.append(time.perf_counter() - started)
        return out

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        run_dir = train_tiny(Path(folder)) if args.tiny else args.run_dir
        process, url = start_server(run_dir, args.serve_flags.split())
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                rows["httpx, one keep-alive connection"] = timed(
                    lambda: client.post("/v1/next", json=body).raise_for_status(), args.requests)
            request = lambda: urllib.request.Request(url + "/v1/next", data=data,  # noqa: E731
                                                     headers={"content-type": "application/json"})
            rows["urllib, a new connection per request"] = timed(
                lambda: urllib.request.urlopen(request(), timeout=60).read(), args.requests)
            browser = browser_latencies(url, body, args.requests)
            if browser is not None:
                rows["Chromium fetch() from the page (keep-alive)"] = browser
        finally:
            process.terminate()
            process.wait(timeout=30)
    header = (f"`{' '.join(sys.argv)}` -- {describe()}; load average {os.getloadavg()[0]:.1f} at the end; "
              f"{args.requests} sequential /v1/next requests per client kind\n\n")
    table = ["| client | p50 ms | p99 ms |", "|---|---|---|"]
    for label, seconds in rows.items():
        table.append(f"| {label} | {1000 * percentile(seconds, 0.5):.1f} | {1000 * percentile(seconds, 0.99):.1f} |")
    text = header + "\n".join(table) + "\n"
    out = Path(args.out or "test-artifacts/load-keep-alive")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({k: [round(v, 6) for v in s] for k, s in rows.items()}) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text, end="")
    return 0


def completion_body(index, num_words, stream):
    return {"model": "served", "prompt": PROMPTS[index % len(PROMPTS)], "max_tokens": num_words,
            "temperature": 1.0, "top_k": 40, "seed": index, "stream": stream}


def one_completion(client, body):
    """One /v1/completions request: (seconds to the first token or to the answer, total seconds, tokens) or an
    error string. A streamed token is a chunk whose choice has no finish_reason yet."""
    started = time.perf_counter()
    if not body["stream"]:
        answer = client.post("/v1/completions", json=body)
        if answer.status_code != 200:
            return f"HTTP {answer.status_code}"
        elapsed = time.perf_counter() - started
        return elapsed, elapsed, answer.json()["usage"]["completion_tokens"]
    first, tokens = None, 0
    with client.stream("POST", "/v1/completions", json=body) as events:
        if events.status_code != 200:
            return f"HTTP {events.status_code}"
        for line in events.iter_lines():
            if line == "data: [DONE]":
                break
            if line.startswith("data: ") and json.loads(line[6:])["choices"][0]["finish_reason"] is None:
                first = first or time.perf_counter() - started
                tokens += 1
    return first or float("nan"), time.perf_counter() - started, tokens


def measure_completions(url, clients, requests, num_words, stream, model):
    """`requests` completions over `clients` threads (one keep-alive connection each): the row of the table."""
    local, lock, timings, errors = threading.local(), threading.Lock(), [], []

    def one(index):
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=url, timeout=120)
        try:
            result = one_completion(local.client, {**completion_body(index, num_words, stream), "model": model})
        except httpx.HTTPError as error:
            result = type(error).__name__
        with lock:
            (errors if isinstance(result, str) else timings).append(result)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(clients)))  # warm-up: connections, first calls
        timings.clear(), errors.clear()
        started = time.perf_counter()
        list(pool.map(one, range(requests)))
        seconds = time.perf_counter() - started
    firsts = [first for first, _, _ in timings]
    per_stream = [(tokens - 1) / (total - first) for first, total, tokens in timings if tokens > 1 and total > first]
    return {"clients": clients, "stream": stream, "requests": requests, "num_words": num_words,
            "p50_first_ms": round(1000 * percentile(firsts, 0.5), 2),
            "p99_first_ms": round(1000 * percentile(firsts, 0.99), 2),
            "p50_total_ms": round(1000 * percentile([t for _, t, _ in timings], 0.5), 2),
            "tokens_per_second_per_stream": round(statistics.median(per_stream), 1) if per_stream else None,
            "tokens_per_second": round(sum(tokens for _, _, tokens in timings) / seconds, 1), "errors": len(errors)}


def compare_streaming(args):
    """One table: per client count, time to first token and streamed tokens/s beside the plain latency."""
    import os

    from lstmlm.machine import describe

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        process, url = (None, args.url.rstrip("/")) if args.url else \
            start_server(train_tiny(Path(folder)) if args.tiny else args.run_dir, args.serve_flags.split())
        try:
            model = httpx.get(url + "/health", timeout=10).json()["model"]
            for clients in [int(n) for n in args.clients_list.split(",")]:
                for stream in (False, True):
                    rows.append(measure_completions(url, clients, args.requests, args.num_words, stream, model))
                    print(f"{rows[-1]}", file=sys.stderr)
        finally:
            if process:
                process.terminate()
                process.wait(timeout=30)
    header = (f"`{' '.join(sys.argv)}` -- {describe()}; load average {os.getloadavg()[0]:.1f} at the end; "
              f"model {model}, {args.num_words} tokens per request\n\n")
    table = ["| clients | streamed | p50 first token ms | p99 first token ms | p50 whole answer ms | "
             "tokens/s per stream | tokens/s in all | errors |", "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['clients']} | {'yes' if r['stream'] else 'no'} | {r['p50_first_ms'] if r['stream'] else '-'} | "
              f"{r['p99_first_ms'] if r['stream'] else '-'} | {r['p50_total_ms']} | "
              f"{r['tokens_per_second_per_stream'] if r['stream'] else '-'} | {r['tokens_per_second']} | "
              f"{r['errors']} |" for r in rows]
    text = header + "\n".join(table) + "\n"
    out = Path(args.out or "test-artifacts/load-streaming")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text, end="")
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
