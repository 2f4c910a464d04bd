#!/usr/bin/python3
"""Throughput of the Open Inference Protocol against our own protocol, in one run, on one server:
perf_analyzer (Triton's load generator, set up by scripts/perf-analyzer.sh) sending ModelInfer
with a BYTES image, and `convnext bench` sending Classify with the same image, at the same
concurrency, alternating rounds. Prints both, their ratio and the CPU's ISA.

perf_analyzer asks for every output ModelMetadata lists (probabilities, embedding and the four
stage maps), so its calls carry more answer than a Classify; the ratio includes that.

  bench/oip_throughput.py [--concurrency 2] [--seconds 10] [--rounds 2]
                          [--model NAME=CHECKPOINT] [--image FILE]

Default: the default model (the digits ConvNeXt) and samples/digit_3_heldout_23.png, where the
protocol's own cost weighs most; pass a ConvNeXt-T checkpoint to see it at full compute.
"""
import argparse
import base64
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BIN = os.path.join(ROOT, "build", "bin")


def isa():
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    found = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
             if name in flags]
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f
                      if line.startswith("model name")), "unknown CPU")
    return f"{model}; {os.cpu_count()} cores; {', '.join(found) or 'no AVX2'}"


def start_server(model_args):
    proc = subprocess.Popen([os.path.join(BIN, "convnext-server"), "--host", "127.0.0.1",
                             "--port", "0", "--metrics_port", "-1", "--http_port", "-1", *model_args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        match = re.search(r"event=serving .* port=(\d+)", line)
        if match:
            # Keep draining the server's log so that it never blocks on a full pipe.
            import threading
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(match.group(1))
    proc.kill()
    sys.exit("convnext-server did not start")


def rss_mb(pid):
    """Resident memory of process `pid`, in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def closed_loop(call, clients, seconds):
    """`clients` threads each calling call(rng) back to back for `seconds` (rng: a numpy
    Generator seeded by the client's index): returns (calls/s, latencies in ms)."""
    import concurrent.futures
    import threading
    import numpy as np
    stop = time.time() + seconds
    latencies, lock = [], threading.Lock()

    def client(c):
        rng = np.random.default_rng(c)
        mine = []
        while time.time() < stop:
            t = time.time()
            call(rng)
            mine.append((time.time() - t) * 1e3)
        with lock:
            latencies.extend(mine)

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return len(latencies) / (time.time() - start), np.array(latencies)


def model_name(port):
    out = subprocess.run([os.path.join(BIN, "convnext"), "--target", f"127.0.0.1:{port}",
                          "models", "--json"], capture_output=True, text=True, check=True)
    return next(m["name"] for m in json.loads(out.stdout) if m["default"])


def own(port, model, image, concurrency, seconds):
    out = subprocess.run([os.path.join(BIN, "convnext"), "--target", f"127.0.0.1:{port}",
                          "bench", image, "--model", model, "--concurrency", str(concurrency),
                          "--duration", str(seconds), "--json"],
                         capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    return report["calls_per_s"], report["codes"]


def oip(perf_analyzer, port, model, data_file, concurrency, seconds):
    out = subprocess.run([perf_analyzer, "-m", model, "-u", f"127.0.0.1:{port}", "-i", "grpc",
                          "--input-data", data_file, "--concurrency-range", str(concurrency),
                          "--measurement-interval", str(seconds * 1000)],
                         capture_output=True, text=True)
    match = re.search(r"Throughput: ([0-9.]+) infer/sec", out.stdout)
    if out.returncode != 0 or match is None:
        sys.exit("perf_analyzer failed:\n" + out.stdout[-3000:] + out.stderr[-2000:])
    return float(match.group(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="", help="NAME=CHECKPOINT (default: the default model)")
    parser.add_argument("--image", default=os.path.join(ROOT, "samples", "digit_3_heldout_23.png"))
    args = parser.parse_args()
    perf_analyzer = subprocess.run([os.path.join(ROOT, "scripts", "perf-analyzer.sh")],
                                   capture_output=True, text=True, check=True).stdout.split()[-1]
    with open(args.image, "rb") as f:
        image = f.read()
    server, port = start_server(["--model", args.model] if args.model else [])
    try:
        model = model_name(port)
        with tempfile.TemporaryDirectory() as tmp:
            # perf_analyzer's raw BYTES element: a 4-byte little-endian length, then the file.
            data_file = os.path.join(tmp, "input.json")
            with open(data_file, "w") as f:
                json.dump({"data": [{"IMAGE": {"b64": base64.b64encode(
                    struct.pack("<I", len(image)) + image).decode()}}]}, f)
            print(f"CPU: {isa()}")
            print(f"model {model}, image {os.path.basename(args.image)}, concurrency "
                  f"{args.concurrency}, {args.seconds} s per measurement, {args.rounds} rounds")
            print(f"{'round':>5}  {'own Classify img/s':>19}  {'OIP ModelInfer img/s':>20}  "
                  f"{'ratio':>6}")
            own_all, oip_all = [], []
            for r in range(1, args.rounds + 1):
                rate, codes = own(port, model, args.image, args.concurrency, args.seconds)
                if set(codes) != {"OK"}:
                    sys.exit(f"convnext bench got {codes}")
                other = oip(perf_analyzer, port, model, data_file, args.concurrency,
                            args.seconds)
                own_all.append(rate)
                oip_all.append(other)
                print(f"{r:>5}  {rate:>19.2f}  {other:>20.2f}  {other / rate:>6.3f}")
            own_mean = sum(own_all) / len(own_all)
            oip_mean = sum(oip_all) / len(oip_all)
            print(f"{'mean':>5}  {own_mean:>19.2f}  {oip_mean:>20.2f}  {oip_mean / own_mean:>6.3f}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
