"""Soak test for `lstmlm serve` (issue 8): many clients, many requests, a share of them malformed, on loopback.

N client threads (each with its own keep-alive connection) send M requests in all, drawn at random (seeded) from:

    next, generate, score      valid requests; generate is seeded and its answers are checked for repeats: the same
                               (prompt, num_words, seed) must give the same text every time, whatever ran beside it
    bad-json                   a body that is not JSON                               expect 400
    wrong-type                 {"text": 5} / {"top_k": "five"} / an unknown field    expect 422
    too-many-words             a text over the word limit                            expect 422
    oversize                   a body over --max-request-bytes                       expect 413
    bad-utf8                   bytes that are not UTF-8 inside the JSON              expect 400/422
    wrong-path                 an unknown path or a GET on a POST endpoint           expect 404/405
    slow-body                  a valid /v1/next whose body is sent one byte at a time (raw socket)   expect 200
    disconnect                 headers and half a body, then the client hangs up     no answer to read
    stream                     a seeded streamed /v1/completions, read to `data: [DONE]`; its concatenated text is
                               checked for repeats like generate's                   expect 200
    stream-disconnect          a streamed completion of 400 words, hung up after two events   no answer to read
    wrong-key                  /v1/completions with a wrong API key                  expect 401

The server is started with an API key (every other request sends it).

It records every status and latency, the server's resident memory (VmRSS from /proc) after each thousand
requests (each sixth of them in a run under 5,000), and checks: no 5xx, no connection error outside `disconnect`, the server still answers /health at the
end, every seeded generation repeated identically, RSS growth from the first to the last thousand requests. p50
and p99 are per kind. Results go to OUT.json and OUT.md (Markdown table); exit status 1 if a goal is missed.

Example:
    python benchmarks/soak.py --run-dir runs/ptb-small --clients 32 --requests 20000
    python benchmarks/soak.py --quick            # a toy model, 8 clients, 600 requests (the test's mode)
"""

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402  (start_server, train_tiny, percentile)
from load import percentile  # noqa: E402

PROMPTS = ["the", "the stock market", "in new york", "the company said it", "shares of the", "the president",
           "a spokesman for the", "the federal reserve", "interest rates", "the dollar fell against the yen"]
# kind: share of requests. Valid traffic dominates; every malformed kind is present.
MIX = {"next": 0.40, "generate": 0.11, "score": 0.10, "stream": 0.08, "stream-disconnect": 0.02, "wrong-key": 0.02,
       "bad-json": 0.04, "wrong-type": 0.04, "too-many-words": 0.03, "oversize": 0.03, "bad-utf8": 0.04,
       "wrong-path": 0.03, "slow-body": 0.03, "disconnect": 0.03}
EXPECTED = {"next": {200}, "generate": {200}, "score": {200}, "bad-json": {400}, "wrong-type": {422},
            "too-many-words": {422}, "oversize": {413}, "bad-utf8": {400, 422}, "wrong-path": {404, 405},
            "slow-body": {200}, "disconnect": {None}, "stream": {200}, "stream-disconnect": {None},
            "wrong-key": {401}}
API_KEY = "soak-test-key"  # the server's (`--api-key`); never printed by the server


def rss_bytes(pid):
    """Resident memory of process `pid` (Linux /proc), or None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def plan(requests, seed):
    """The request list: (kind, detail) for each, seeded. Generation repeats from a small set of (prompt, words,
    seed) so that repeats can be compared."""
    rng = random.Random(seed)
    kinds, weights = zip(*MIX.items())
    out = []
    for index in range(requests):
        kind = rng.choices(kinds, weights)[0]
        prompt = rng.choice(PROMPTS)
        if kind == "generate":  # one of 32 fixed requests, so that each is asked many times
            key = random.Random(rng.randrange(32))
            detail = {"prompt": key.choice(PROMPTS), "num_words": key.choice([1, 5, 10, 20]), "temperature": 1.0,
                      "top_k": key.choice([0, 40]), "seed": key.randrange(1000)}
        elif kind in ("stream", "stream-disconnect", "wrong-key"):  # like generate: 32 fixed requests
            key = random.Random(rng.randrange(32))
            detail = {"prompt": key.choice(PROMPTS), "max_tokens": 400 if kind == "stream-disconnect" else
                      key.choice([1, 5, 10, 20]), "temperature": 1.0, "top_k": key.choice([0, 40]),
                      "seed": key.randrange(1000), "stream": kind != "wrong-key"}
        elif kind == "score":
            detail = {"text": " ".join(rng.choice(PROMPTS) for _ in range(rng.randint(1, 4)))}
        else:
            detail = {"text": prompt, "top_k": rng.choice([1, 5, 10])}
        out.append((kind, detail, rng.randrange(4)))
    return out


def raw_request(base_url, path, body, pause=None, hang_up=False, timeout=60):
    """POST over a raw socket: the body one byte at a time (`pause` s apart), or half of it and then close
    (`hang_up`). Returns the status code, or None when it hung up."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=timeout) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sendall(head)
        if hang_up:
            conn.sendall(body[: len(body) // 2])
            return None
        for byte in body:
            conn.sendall(bytes([byte]))
            time.sleep(pause)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def send(client, base_url, kind, detail, variant, max_request_bytes):
    """One request of `kind`; returns (status or None, error text or None, parsed JSON answer or None)."""
    if kind in ("slow-body", "disconnect"):
        body = json.dumps(detail).encode()
        status = raw_request(base_url, "/v1/next", body, pause=0.002, hang_up=kind == "disconnect")
        return status, None, None
    if kind in ("stream", "stream-disconnect"):
        return send_stream(client, detail, hang_up=kind == "stream-disconnect")
    if kind in ("next", "generate", "score"):
        answer = client.post(f"/v1/{kind}", json=detail)
    elif kind == "wrong-key":
        answer = client.post("/v1/completions", json=detail, headers={"Authorization": "Bearer not-the-key"})
    elif kind == "bad-json":
        answer = client.post("/v1/next", content=[b'{"text": "the', b"not json", b"{", b"[1, 2"][variant],
                             headers={"content-type": "application/json"})
    elif kind == "wrong-type":
        body = [{"text": 5}, {"text": "the", "top_k": "five"}, {"text": "the", "topk": 3},
                {"prompt": "the", "num_words": -1}][variant]
        answer = client.post("/v1/generate" if variant == 3 else "/v1/next", json=body)
    elif kind == "too-many-words":
        answer = client.post("/v1/score", json={"text": " ".join(["the"] * 1001)})
    elif kind == "oversize":
        answer = client.post("/v1/next", content=b'{"text": "' + b"a" * (max_request_bytes + 10) + b'"}',
                             headers={"content-type": "application/json"})
    elif kind == "bad-utf8":
        answer = client.post("/v1/next", content=b'{"text": "the \xff\xfe cat"}',
                             headers={"content-type": "application/json"})
    else:  # wrong-path
        answer = client.get("/v1/next") if variant % 2 else client.post("/v1/nothing", json={})
    parsed = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else None
    return answer.status_code, None, parsed


def send_stream(client, detail, hang_up=False):
    """A streamed completion: (200, None, {"text": the pieces joined}) read to [DONE], or, with `hang_up`,
    closed after two events: (None, None, None)."""
    text, events = "", 0
    with client.stream("POST", "/v1/completions", json=detail) as answer:
        if answer.status_code != 200:
            return answer.status_code, None, None
        for line in answer.iter_lines():
            if line == "data: [DONE]":
                break
            if line.startswith("data: "):
                events += 1
                text += json.loads(line[6:])["choices"][0]["text"]
                if hang_up and events == 2:
                    return None, None, None  # leaving the block closes the connection mid-stream
    return 200, None, {"text": text}


def soak(base_url, pid, clients, requests, seed=0, max_request_bytes=64 * 1024, log=print):
    """Run the soak against a server at `base_url` (its process id `pid` for RSS); returns the result dict."""
    work = plan(requests, seed)
    local, lock = threading.local(), threading.Lock()
    records = [None] * requests  # (kind, status, seconds, error)
    generated = defaultdict(list)  # (prompt, num_words, top_k, seed) -> every text answered
    rss, done = [], [0]
    model = httpx.get(base_url + "/health", timeout=30).json()["model"]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    every = 1000 if requests >= 5000 else max(1, requests // 6)  # RSS readings: per thousand requests

    def one(index):
        kind, detail, variant = work[index]
        detail = {"model": model, **detail} if "max_tokens" in detail else detail
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base_url, timeout=120, headers=headers)
        started = time.perf_counter()
        try:
            status, error, parsed = send(local.client, base_url, kind, detail, variant, max_request_bytes)
        except (httpx.HTTPError, OSError) as failure:
            status, error, parsed = None, f"{type(failure).__name__}: {failure}", None
            local.client = httpx.Client(base_url=base_url, timeout=120, headers=headers)  # a fresh connection
        seconds = time.perf_counter() - started
        records[index] = (kind, status, seconds, error)
        with lock:
            if kind == "generate" and status == 200:
                key = (detail["prompt"], detail["num_words"], detail["top_k"], detail["seed"])
                generated[key].append(" ".join(parsed["words"]))
            elif kind == "stream" and status == 200:
                key = ("stream", detail["prompt"], detail["max_tokens"], detail["top_k"], detail["seed"])
                generated[key].append(parsed["text"])
            done[0] += 1
            if done[0] % every == 0 or done[0] == requests:
                rss.append((done[0], rss_bytes(pid)))
                if done[0] % 5000 == 0:
                    log(f"soak: {done[0]:,} of {requests:,} requests")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - started
    alive = httpx.get(base_url + "/health", timeout=30).status_code == 200
    return summarise(records, generated, rss, seconds, alive, clients)


def summarise(records, generated, rss, seconds, alive, clients):
    by_kind = defaultdict(list)
    for record in records:
        by_kind[record[0]].append(record)
    kinds = {}
    for kind, rows in sorted(by_kind.items(), key=lambda item: list(MIX).index(item[0])):
        statuses = Counter("none" if status is None else str(status) for _, status, _, _ in rows)
        unexpected = sum(status not in EXPECTED[kind] for _, status, _, _ in rows)
        latencies = [seconds for _, status, seconds, _ in rows if status is not None or kind.endswith("disconnect")]
        kinds[kind] = {"requests": len(rows), "statuses": dict(statuses), "unexpected": unexpected,
                       "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
                       "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                       "errors": sorted({error for _, _, _, error in rows if error})[:5]}
    server_errors = sum(1 for _, status, _, _ in records if status is not None and status >= 500)
    first, last = rss[0][1] if rss else None, rss[-1][1] if rss else None
    growth = (last - first) / first if first and last else None
    result = {"clients": clients, "requests": len(records), "seconds": round(seconds, 2),
              "requests_per_second": round(len(records) / seconds, 1), "server_errors_5xx": server_errors,
              "unexpected_statuses": sum(k["unexpected"] for k in kinds.values()), "alive_after": alive,
              "rss_bytes": rss, "rss_growth": None if growth is None else round(growth, 4),
              "generate_keys": len(generated),
              "generate_keys_repeated": sum(1 for texts in generated.values() if len(texts) > 1),
              "generate_keys_inconsistent": sum(1 for texts in generated.values() if len(set(texts)) > 1),
              "kinds": kinds}
    result["goals_met"] = (server_errors == 0 and result["unexpected_statuses"] == 0 and alive
                           and result["generate_keys_inconsistent"] == 0 and (growth is None or growth < 0.10))
    return result


def markdown(result):
    lines = [f"{result['clients']} clients, {result['requests']:,} requests in {result['seconds']:,.1f} s "
             f"({result['requests_per_second']:,.1f} requests/s). 5xx: {result['server_errors_5xx']}; unexpected "
             f"statuses: {result['unexpected_statuses']}; alive after: {result['alive_after']}; seeded generations "
             f"that differed between repeats: {result['generate_keys_inconsistent']} of the "
             f"{result['generate_keys_repeated']} seeded requests (generate or stream) asked more than once.",
             "", "| kind | requests | statuses | unexpected | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for kind, row in result["kinds"].items():
        statuses = ", ".join(f"{status}: {count:,}" for status, count in sorted(row["statuses"].items()))
        lines.append(f"| {kind} | {row['requests']:,} | {statuses} | {row['unexpected']} | {row['p50_ms']:.1f} | "
                     f"{row['p99_ms']:.1f} |")
    rss = result["rss_bytes"]
    if rss and rss[0][1]:
        lines += ["", f"Server RSS: {rss[0][1] / 1e6:,.1f} MB after the first {rss[0][0]:,} requests, "
                      f"{rss[-1][1] / 1e6:,.1f} MB after all {rss[-1][0]:,} (growth {100 * result['rss_growth']:+.2f}%); "
                      "readings: " + ", ".join(f"{value / 1e6:,.1f}" for _, value in rss) + " MB."]
    lines += ["", f"Goals (no 5xx, every status as expected, alive, seeded generations repeat, RSS growth < 10%): "
                  f"{'met' if result['goals_met'] else 'MISSED'}."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run-dir", help="serve this run directory (`lstmlm serve` in a subprocess)")
    where.add_argument("--quick", action="store_true", help="a toy model, 8 clients, 600 requests")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve-flags", default="", help="extra flags for lstmlm serve")
    parser.add_argument("--out", default="test-artifacts/soak", help="output prefix (.json, .md)")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.requests = min(args.clients, 8), min(args.requests, 600)
    from lstmlm.machine import describe

    with tempfile.TemporaryDirectory() as folder:
        run_dir = load.train_tiny(Path(folder)) if args.quick else args.run_dir
        process, url = load.start_server(run_dir, ["--api-key", API_KEY, *args.serve_flags.split()])
        try:
            load_before = os.getloadavg()[0]
            result = soak(url, process.pid, args.clients, args.requests, args.seed,
                          log=lambda line: print(line, file=sys.stderr))
        finally:
            process.terminate()
            process.wait(timeout=60)
    health_model = Path(run_dir).name
    result.update({"model": health_model, "machine": describe(), "load_average_start": round(load_before, 2),
                   "load_average_end": round(os.getloadavg()[0], 2), "seed": args.seed,
                   "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    text = (f"`python benchmarks/{result['command']}` -- model {result['model']}; {result['machine']}; load "
            f"average {result['load_average_start']} at the start, {result['load_average_end']} at the end\n\n"
            + markdown(result))
    out.with_suffix(".md").write_text(text)
    print(text, end="")
    return 0 if result["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
