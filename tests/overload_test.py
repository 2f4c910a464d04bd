"""Overload and graceful shutdown of convnext-server, driven open-loop from Debian's python3-grpcio.

Overload: Classify calls are offered at 10x the capacity measured at the start of the test, for a
bounded time. Every call must end as OK (admitted, with its answer) or UNAVAILABLE (refused), the
two counts must add up to the calls sent, the server's own counters must agree, and its resident
memory must stay bounded. Shutdown: SIGTERM in the middle of the same load; health must say
NOT_SERVING while admitted calls drain, every call still ends OK or refused (sent = answered +
refused, none lost), and the process exits 0.

Latency and rate figures are printed, never asserted (they depend on the machine).

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN.
"""
import os
import signal
import sys
import tempfile
import threading
import time
import unittest

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import DATA, Server, grpc, pb  # noqa: E402

MAX_QUEUE = 8


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * (len(values) - 1) + 0.5))]


class OpenLoop:
    """Sends `request` every `interval` seconds for `seconds`, without waiting for answers."""

    def __init__(self, stub, request, interval, seconds):
        self.calls = []  # [sent_at, done_at, code name, response]
        self.lock = threading.Lock()
        start = time.monotonic()
        next_send = start
        while time.monotonic() - start < seconds:
            self.send(stub, request)
            next_send += interval  # On a fixed schedule: sending itself takes time.
            time.sleep(max(0.0, next_send - time.monotonic()))

    def send(self, stub, request):
        record = [time.monotonic(), None, None, None]
        with self.lock:
            self.calls.append(record)
        future = stub.Classify.future(request, timeout=120)

        def done(f, record=record):
            record[1] = time.monotonic()
            try:
                record[3] = f.result()
                record[2] = "OK"
            except grpc.RpcError as e:
                record[2] = e.code().name
                record[3] = e.details()
        future.add_done_callback(done)

    def wait(self, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if all(c[2] is not None for c in self.calls):
                    return
            time.sleep(0.05)
        raise AssertionError("calls still unanswered after %d s" % timeout)

    def codes(self):
        out = {}
        for c in self.calls:
            out[c[2]] = out.get(c[2], 0) + 1
        return out

    def latencies_ms(self, code):
        return [(c[1] - c[0]) * 1000 for c in self.calls if c[2] == code]


class OverloadTest(unittest.TestCase):
    def setUp(self):
        self.config = tempfile.NamedTemporaryFile("w", suffix=".textproto", delete=False)
        checkpoint = os.path.abspath(os.path.join(DATA, "tiny.safetensors"))
        self.config.write(
            f'model {{ name: "tiny" checkpoint: "{checkpoint}"'
            f' batching {{ max_batch_size: 4 max_queue_size: {MAX_QUEUE}'
            ' max_queue_delay_us: 2000 } }')
        self.config.close()
        self.server = Server("--config", self.config.name)
        x = np.load(os.path.join(DATA, "tiny.input.npy"))[:1]
        image = pb.Image(tensor=pb.Tensor(shape=[1, 3, 224, 224], data=x.astype("<f4").tobytes()))
        self.request = pb.ClassifyRequest(images=[image], top_k=3)
        # Capacity: 4 concurrent callers for 12 calls.
        start = time.monotonic()
        load = OpenLoop(self.server.stub, self.request, interval=0, seconds=0)
        for _ in range(12):
            load.send(self.server.stub, self.request)
            while sum(1 for c in load.calls if c[2] is None) >= 4:
                time.sleep(0.005)
        load.wait()
        self.assertEqual(load.codes(), {"OK": 12})
        self.capacity = 12 / (time.monotonic() - start)

    def tearDown(self):
        self.server.stop()
        os.unlink(self.config.name)

    def refused_count(self):
        return self.server.metrics().get(
            ("convnext_requests_total",
             frozenset({("model", "tiny"), ("version", "1"), ("method", "Classify"),
                        ("code", "UNAVAILABLE")})), 0)

    def test_ten_times_capacity_admits_what_fits_and_refuses_the_rest(self):
        refused_before = self.refused_count()
        rss_before = self.server.rss_mb()
        peak = [rss_before]
        sampling = [True]

        def sample():
            while sampling[0]:
                peak[0] = max(peak[0], self.server.rss_mb())
                time.sleep(0.05)
        sampler = threading.Thread(target=sample)
        sampler.start()
        load = OpenLoop(self.server.stub, self.request, 1 / (10 * self.capacity), seconds=6)
        load.wait()
        sampling[0] = False
        sampler.join()

        codes = load.codes()
        sent = len(load.calls)
        print(f"\noverload: capacity {self.capacity:.1f} calls/s, offered "
              f"{sent / 6:.1f} calls/s for 6 s: sent {sent}, {codes}; admitted latency ms "
              f"p50 {percentile(load.latencies_ms('OK'), 0.5):.0f} "
              f"p99 {percentile(load.latencies_ms('OK'), 0.99):.0f}; refused latency ms "
              f"p50 {percentile(load.latencies_ms('UNAVAILABLE'), 0.5):.1f} "
              f"p99 {percentile(load.latencies_ms('UNAVAILABLE'), 0.99):.1f}; "
              f"RSS {rss_before:.0f} MB before, {peak[0]:.0f} MB peak", flush=True)
        self.assertEqual(set(codes) - {"OK", "UNAVAILABLE"}, set(), codes)
        self.assertEqual(codes.get("OK", 0) + codes.get("UNAVAILABLE", 0), sent)
        self.assertGreater(codes.get("OK", 0), 0)
        self.assertGreater(codes.get("UNAVAILABLE", 0), sent / 2)  # 10x: most are refused.
        for c in load.calls:
            if c[2] == "OK":
                self.assertEqual(len(c[3].results), 1)
                self.assertEqual(len(c[3].results[0].classes), 3)
        # The server counted every refusal.
        self.assertEqual(self.refused_count() - refused_before, codes["UNAVAILABLE"])
        # Memory is bounded by the queue (8 images of 0.6 MB), not by the offered load.
        self.assertLess(peak[0] - rss_before, 200)
        # Unharmed afterwards.
        self.assertEqual(self.server.health(), "SERVING")
        self.assertEqual(len(self.server.stub.Classify(self.request, timeout=60).results), 1)

    def test_sigterm_under_load_loses_nothing(self):
        results = {}

        def drive():
            results["load"] = OpenLoop(self.server.stub, self.request,
                                       1 / (10 * self.capacity), seconds=4)
        driver = threading.Thread(target=drive)
        driver.start()
        time.sleep(2)
        sigterm_at = time.monotonic()
        self.server.proc.send_signal(signal.SIGTERM)
        # Health turns NOT_SERVING as soon as the server handles the signal, while the admitted
        # calls drain (about one queue of batches: hundreds of milliseconds here).
        health = self.server.health()
        while health == "SERVING" and time.monotonic() - sigterm_at < 5:
            time.sleep(0.005)
            health = self.server.health()
        driver.join()
        load = results["load"]
        load.wait()
        self.assertEqual(self.server.proc.wait(timeout=60), 0)
        codes = load.codes()
        sent = len(load.calls)
        print(f"\nshutdown: sent {sent}, {codes}", flush=True)
        for c in load.calls:
            if c[2] not in ("OK", "UNAVAILABLE"):
                print(f"  {c[2]} sent {c[0] - sigterm_at:+.3f} s from SIGTERM, answered "
                      f"{c[1] - sigterm_at:+.3f} s: {c[3]}", flush=True)
        self.assertEqual(health, "NOT_SERVING")
        # Every call is answered or refused. Refused means UNAVAILABLE, except that a call that
        # reaches gRPC in the instant its transport shuts down (after the drain) is cancelled by
        # gRPC itself, before any handler sees it: CANCELLED, and only for calls sent after the
        # SIGTERM.
        for c in load.calls:
            allowed = {"OK", "UNAVAILABLE"} | ({"CANCELLED"} if c[0] > sigterm_at else set())
            self.assertIn(c[2], allowed, c)
        self.assertEqual(sum(codes.values()), sent)
        self.assertGreater(codes.get("OK", 0), 0)
        deadline = time.monotonic() + 10  # The log reader may still be catching up.
        while time.monotonic() < deadline and not any("event=stopped" in line
                                                      for line in self.server.lines):
            time.sleep(0.05)
        self.assertTrue(any("event=drained pending_images=0" in line
                            for line in self.server.lines), "".join(self.server.lines[-5:]))


if __name__ == "__main__":
    unittest.main()
