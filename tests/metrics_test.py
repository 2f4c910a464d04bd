"""Metrics end to end: /metrics counters and histograms move by exactly the calls made; the batch
size histogram matches the batches the server formed; a real Prometheus (Debian's prometheus
package) scrapes the server on loopback with the shipped deploy/ configuration and answers
queries; every metric the dashboard and the rules use exists.
"""
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import DATA, Server, grpc, pb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")


def value(metrics, name, **labels):
    """A sample's value; a model's series carry its version too ("1" unless given; "" for
    calls naming no served model)."""
    if "model" in labels and "version" not in labels:
        labels["version"] = "" if labels["model"] == "unknown" else "1"
    return metrics.get((name, frozenset(labels.items())), 0.0)


class MetricsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--model", f"custom={os.path.join(DATA, 'custom.safetensors')}",
                            "--max_queue_delay_us", "20000")
        x = np.load(os.path.join(DATA, "custom.input.npy"))[0]
        cls.image = pb.Image(tensor=pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes()))

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def test_counters_and_histograms_move_by_exactly_the_calls_made(self):
        stub = self.server.stub
        before = self.server.metrics()
        for _ in range(5):
            stub.Classify(pb.ClassifyRequest(images=[self.image]), timeout=60)
        for _ in range(3):
            with self.assertRaises(grpc.RpcError):
                stub.Classify(pb.ClassifyRequest(images=[pb.Image(encoded=b"junk")]), timeout=60)
        for _ in range(2):
            with self.assertRaises(grpc.RpcError):
                stub.Classify(pb.ClassifyRequest(model="nope", images=[self.image]), timeout=60)
        with self.assertRaises(grpc.RpcError):
            stub.Embed(pb.EmbedRequest(images=[self.image], stages=[9]), timeout=60)
        after = self.server.metrics()

        def delta(name, **labels):
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(delta("convnext_requests_total", model="custom", method="Classify",
                               code="OK"), 5)
        self.assertEqual(delta("convnext_requests_total", model="custom", method="Classify",
                               code="INVALID_ARGUMENT"), 3)
        self.assertEqual(delta("convnext_requests_total", model="unknown", method="Classify",
                               code="NOT_FOUND"), 2)
        self.assertEqual(delta("convnext_requests_total", model="custom", method="Embed",
                               code="INVALID_ARGUMENT"), 1)
        self.assertEqual(delta("convnext_request_latency_microseconds_count", model="custom",
                               method="Classify"), 8)
        self.assertEqual(delta("convnext_images_total", model="custom"), 5)
        self.assertEqual(delta("convnext_queue_time_microseconds_count", model="custom"), 5)
        self.assertEqual(delta("convnext_preprocess_time_microseconds_count", model="custom"), 5)
        self.assertEqual(value(after, "convnext_model_ready", model="custom"), 1)
        self.assertEqual(value(after, "convnext_queue_depth", model="custom"), 0)
        self.assertEqual(value(after, "convnext_in_flight_requests", model="custom"), 0)
        self.assertGreater(value(after, "process_resident_memory_bytes"), 50e6)
        self.assertGreater(value(after, "process_open_fds"), 3)
        build = [k for k in after if k[0] == "convnext_build_info"]
        self.assertEqual(len(build), 1)
        self.assertIn(("device", "cpu"), build[0][1])

    def test_batch_size_histogram_reflects_the_batches_formed(self):
        stub = self.server.stub
        before_m = self.server.metrics()
        before = stub.GetModel(pb.GetModelRequest(name="custom"), timeout=10).stats
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            list(pool.map(lambda _: stub.Classify(pb.ClassifyRequest(images=[self.image]),
                                                  timeout=60), range(24)))
        after = stub.GetModel(pb.GetModelRequest(name="custom"), timeout=10).stats
        after_m = self.server.metrics()
        batches = after.batches - before.batches
        self.assertEqual(value(after_m, "convnext_batch_size_count", model="custom") -
                         value(before_m, "convnext_batch_size_count", model="custom"), batches)
        self.assertEqual(value(after_m, "convnext_batch_size_sum", model="custom") -
                         value(before_m, "convnext_batch_size_sum", model="custom"), 24)
        self.assertLess(batches, 24)  # Some batches held more than one image.
        # One replica (device cpu): its counters moved with the model's, as GetModel says.
        self.assertEqual(len(after.replicas), 1)
        replica = dict(model="custom", replica="0", device="cpu")
        self.assertEqual(value(after_m, "convnext_replica_batches_total", **replica) -
                         value(before_m, "convnext_replica_batches_total", **replica), batches)
        self.assertEqual(value(after_m, "convnext_replica_images_total", **replica) -
                         value(before_m, "convnext_replica_images_total", **replica), 24)
        self.assertEqual(after.replicas[0].batches - before.replicas[0].batches, batches)
        graphs = ("convnext_cuda_graph_replays_total",
                  frozenset(dict(replica, version="1").items()))
        self.assertEqual(after_m.get(graphs), 0)  # Exported, and no graphs on the CPU.
        # Bucket le="1" grew by exactly the single-image batches.
        singles = after.batch_sizes.get(1, 0) - before.batch_sizes.get(1, 0)
        self.assertEqual(value(after_m, "convnext_batch_size_bucket", model="custom", le="1") -
                         value(before_m, "convnext_batch_size_bucket", model="custom", le="1"),
                         singles)

    def test_dashboard_and_rules_use_only_exported_metrics(self):
        self.server.stub.Classify(pb.ClassifyRequest(images=[self.image]), timeout=60)
        exported = {name for name, _ in self.server.metrics()}
        with open(os.path.join(DEPLOY, "grafana-dashboard.json")) as f:
            dashboard = json.load(f)
        exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        with open(os.path.join(DEPLOY, "prometheus-rules.yml")) as f:
            rules = yaml.safe_load(f)
        exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
        used = set()
        for e in exprs:
            used |= set(re.findall(r"\b((?:convnext|process)_[a-z_]+)\b", e))
        self.assertTrue(used)
        missing = sorted(u for u in used if u not in exported)
        self.assertEqual(missing, [])

    def test_a_real_prometheus_scrapes_and_answers_queries(self):
        prometheus = shutil.which("prometheus")
        self.assertIsNotNone(prometheus, "Debian's prometheus package is a test dependency")
        work = tempfile.mkdtemp()
        with open(os.path.join(DEPLOY, "prometheus.yml")) as f:
            config = yaml.safe_load(f)
        config["global"]["scrape_interval"] = "1s"
        config["global"]["evaluation_interval"] = "1s"
        config["scrape_configs"][0]["static_configs"][0]["targets"] = [
            f"127.0.0.1:{self.server.metrics_port}"]
        config["rule_files"] = [os.path.join(DEPLOY, "prometheus-rules.yml")]
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            yaml.safe_dump(config, f)
        port = self.free_port()
        proc = subprocess.Popen(
            [prometheus, f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            def query(q):
                url = (f"http://127.0.0.1:{port}/api/v1/query?" +
                       urllib.parse.urlencode({"query": q}))
                with urllib.request.urlopen(url, timeout=5) as r:
                    return json.load(r)["data"]["result"]

            deadline = time.time() + 60
            up = []
            while time.time() < deadline:
                try:
                    up = query('up{job="convnext-serve"}')
                    if up and up[0]["value"][1] == "1":
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            self.assertTrue(up and up[0]["value"][1] == "1", up)
            # Traffic over several scrapes, then rate and quantile queries.
            end = time.time() + 6
            while time.time() < end:
                self.server.stub.Classify(pb.ClassifyRequest(images=[self.image]), timeout=60)
            time.sleep(2.5)
            rate = query('sum(rate(convnext_requests_total{code="OK"}[30s]))')
            self.assertTrue(rate and float(rate[0]["value"][1]) > 0, rate)
            p99 = query("histogram_quantile(0.99, sum by (le) "
                        "(rate(convnext_request_latency_microseconds_bucket[30s])))")
            self.assertTrue(p99, p99)
            self.assertGreater(float(p99[0]["value"][1]), 0)
            recorded = query("convnext:images_per_second:rate5m")
            self.assertTrue(recorded, "the shipped recording rules did not evaluate")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            shutil.rmtree(work, ignore_errors=True)

    @staticmethod
    def free_port():
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


if __name__ == "__main__":
    unittest.main()
