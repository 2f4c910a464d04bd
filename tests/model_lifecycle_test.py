"""Model lifecycle end to end against convnext-server: versions and labels, answers that name
their version and embedding space, reload under load with nothing lost, a failed reload that
keeps the old version, unload that drains, the golden self-test gating readiness, the
ModelControl API's flag and mutual-TLS identity check, and the config-file watch.

The model is the embedded digits model (fast on two cores); a second checkpoint with a changed
head is written here, so versions really differ.
"""
import concurrent.futures
import os
import shutil
import sys
import tempfile
import threading
import time
import unittest

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
from convnext_reference import write_safetensors  # noqa: E402
from server_e2e_test import BIN, Server, grpc, pb, pb_grpc, read_safetensors  # noqa: E402
from tls_test import make_certificates, openssl, read  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "default_model")
DIGIT = os.path.join(ROOT, "samples", "digit_3_heldout_23.png")

MODEL = """
  name: "digits"
  version: "{version}"
  checkpoint: "{checkpoint}"
  labels_file: "{labels}"
  preprocessing {{ size: 32 crop_pct: 1.0 interpolation: "bicubic" mean: [0.5, 0.5, 0.5] std: [0.5, 0.5, 0.5] }}
  batching {{ max_batch_size: 8 max_queue_delay_us: 2000 max_queue_size: 256 }}
  {extra}
"""


def model_config(version, checkpoint, extra=""):
    """A ModelConfig's fields, as LoadModelRequest.config takes them."""
    return MODEL.format(version=version, checkpoint=checkpoint,
                        labels=os.path.join(DIGITS, "labels.txt"), extra=extra)


def model_entry(version, checkpoint):
    """The same as a config file's `model { ... }` entry."""
    return "model {" + model_config(version, checkpoint) + "}\n"


def classify_request(version="", model="digits"):
    with open(DIGIT, "rb") as f:
        return pb.ClassifyRequest(model=model, model_version=version,
                                  images=[pb.Image(encoded=f.read())], top_k=10)


def stop(server):
    """Stops the server; a clean exit is 0 (under the sanitizers: no leak, no error at exit)."""
    code = server.stop()
    if code != 0:
        raise AssertionError(f"convnext-server exited {code}: " + "".join(server.lines[-40:]))


def probabilities(reply):
    p = np.zeros(10, dtype=np.float32)
    for c in reply.results[0].classes:
        p[c.index] = c.score
    return p


class LifecycleTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp()
        cls.v1 = os.path.join(DIGITS, "convnext_digits.safetensors")
        # Version 2: the same network with another classifier bias (another digest, other
        # answers).
        tensors = read_safetensors(cls.v1)
        tensors["classifier.2.bias"] = tensors["classifier.2.bias"] + torch.linspace(-2, 2, 10)
        cls.v2 = os.path.join(cls.dir, "digits_v2.safetensors")
        write_safetensors(cls.v2, tensors)
        cls.config = os.path.join(cls.dir, "server.textproto")
        with open(cls.config, "w") as f:
            f.write('default_model: "digits"\n' + model_entry("1", cls.v1))
        cls.server = Server("--config", cls.config, "--enable_model_control")
        cls.control = pb_grpc.ModelControlStub(cls.server.channel)

    @classmethod
    def tearDownClass(cls):
        stop(cls.server)
        shutil.rmtree(cls.dir, ignore_errors=True)

    def load(self, version, checkpoint, extra="", make_default=False, timeout=120):
        return self.control.LoadModel(pb.LoadModelRequest(
            config=model_config(version, checkpoint, extra), make_default=make_default),
            timeout=timeout)

    def assert_code(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args, **kwargs)
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        return ctx.exception.details()

    def test_answers_name_their_version_and_embedding_space(self):
        reply = self.server.stub.Classify(classify_request(), timeout=30)
        self.assertEqual(reply.model, "digits")
        self.assertEqual(reply.model_version, "1")
        self.assertTrue(reply.embedding_space.startswith("es1-"), reply.embedding_space)
        with open(DIGIT, "rb") as f:
            image = pb.Image(encoded=f.read())
        raw = self.server.stub.Embed(pb.EmbedRequest(model="digits", images=[image],
                                                     include_embedding=True), timeout=30)
        unit = self.server.stub.Embed(pb.EmbedRequest(model="digits", images=[image],
                                                      include_embedding=True, normalize=True),
                                      timeout=30)
        self.assertEqual(raw.embedding_space, reply.embedding_space)
        self.assertNotEqual(unit.embedding_space, raw.embedding_space)  # Another vector space.
        info = self.server.stub.GetModel(pb.GetModelRequest(name="digits"), timeout=30)
        self.assertEqual((info.version, info.state, info.default_version),
                         ("1", pb.READY, True))
        self.assertEqual(info.embedding_space, reply.embedding_space)
        p = info.preprocessing
        self.assertEqual((p.size, p.resize_shorter_side, p.channel_order, p.exif_orientation),
                         (32, 32, "RGB", "applied"))

    def test_reload_under_load_loses_nothing(self):
        self.load("10", self.v1)
        before = self.server.stub.Classify(classify_request("10"), timeout=30)
        stop = threading.Event()
        sent, answered, failures = [0], [0], []
        spaces = set()
        lock = threading.Lock()

        def client():
            stub = pb_grpc.ImageModelServiceStub(self.server.channel)
            while not stop.is_set():
                with lock:
                    sent[0] += 1
                try:
                    r = stub.Classify(classify_request("10"), timeout=60)
                    with lock:
                        answered[0] += 1
                        spaces.add(r.embedding_space)
                except grpc.RpcError as e:
                    with lock:
                        failures.append(f"{e.code()}: {e.details()}")

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        swaps = []
        for checkpoint in (self.v2, self.v1, self.v2):  # Three swaps while the clients call.
            r = self.load("10", checkpoint)
            swaps.append(r.replaced)
            time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        self.assertEqual(failures, [])
        self.assertEqual(sent[0], answered[0])
        self.assertGreater(answered[0], 20)
        self.assertEqual(swaps, [True, True, True])
        # Both checkpoints answered during the test; now version 10 is the second one.
        self.assertEqual(len(spaces), 2, spaces)
        after = self.server.stub.Classify(classify_request("10"), timeout=30)
        self.assertNotEqual(after.embedding_space, before.embedding_space)
        self.assertFalse(np.allclose(probabilities(after), probabilities(before), atol=1e-3))
        print(f"reload under load: {sent[0]} calls sent, {answered[0]} answered, "
              f"3 swaps", file=sys.stderr)

    def test_failed_reload_keeps_the_old_version_serving(self):
        self.load("20", self.v1)
        before = self.server.stub.Classify(classify_request("20"), timeout=30)
        details = self.assert_code(grpc.StatusCode.NOT_FOUND, self.load, "20",
                                   os.path.join(self.dir, "missing.safetensors"))
        self.assertIn("missing.safetensors", details)
        after = self.server.stub.Classify(classify_request("20"), timeout=30)
        self.assertEqual(after.embedding_space, before.embedding_space)
        info = self.server.stub.GetModel(pb.GetModelRequest(name="digits", version="20"),
                                         timeout=30)
        self.assertEqual(info.state, pb.READY)
        self.assertIn("the last reload failed", info.state_reason)

    def test_golden_self_test_gates_readiness(self):
        self.load("30", self.v1)
        good = probabilities(self.server.stub.Classify(classify_request("30"), timeout=30))
        np.save(os.path.join(self.dir, "golden.npy"), good)
        np.save(os.path.join(self.dir, "wrong.npy"), good[::-1].copy())
        golden = ('golden { image: "' + DIGIT + '" expected: "%s" tolerance: 1e-4 }').__mod__
        ok = self.load("31", self.v1, golden(os.path.join(self.dir, "golden.npy")))
        self.assertEqual((ok.model.state, ok.model.golden_cases_passed), (pb.READY, 1))
        # The same golden file against the other checkpoint: refused, never serves.
        details = self.assert_code(grpc.StatusCode.FAILED_PRECONDITION, self.load, "32", self.v2,
                                   golden(os.path.join(self.dir, "golden.npy")))
        self.assertIn("golden self-test failed", details)
        info = self.server.stub.GetModel(pb.GetModelRequest(name="digits", version="32"),
                                         timeout=30)
        self.assertEqual(info.state, pb.FAILED)
        self.assertIn("golden self-test failed", info.state_reason)
        self.assert_code(grpc.StatusCode.UNAVAILABLE, self.server.stub.Classify,
                         classify_request("32"), timeout=30)
        # A failed version beside serving ones leaves the server ready (it serves on).
        import urllib.request
        ready = urllib.request.urlopen(
            f"http://127.0.0.1:{self.server.http_port}/v2/health/ready", timeout=10)
        self.assertEqual(ready.status, 200)
        # A wrong expectation fails the right checkpoint too.
        self.assert_code(grpc.StatusCode.FAILED_PRECONDITION, self.load, "33", self.v1,
                         golden(os.path.join(self.dir, "wrong.npy")))

    def test_unload_drains_admitted_calls(self):
        self.load("40", self.v1)
        with open(DIGIT, "rb") as f:
            image = pb.Image(encoded=f.read())
        big = pb.ClassifyRequest(model="digits", model_version="40", images=[image] * 60,
                                 top_k=1)
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(self.server.stub.Classify, big, timeout=120) for _ in range(4)]
            time.sleep(0.2)
            unloaded = self.control.UnloadModel(pb.UnloadModelRequest(name="digits", version="40"),
                                                timeout=30)
            replies = [f.result() for f in futures]  # Every admitted call is answered.
        self.assertEqual(list(unloaded.versions), ["40"])
        self.assertTrue(all(len(r.results) == 60 for r in replies))
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.server.stub.Classify,
                         classify_request("40"), timeout=30)

    def test_versions_labels_and_default_version(self):
        self.load("50", self.v2, 'version_labels: "canary"')
        by_label = self.server.stub.Classify(classify_request("canary"), timeout=30)
        self.assertEqual(by_label.model_version, "50")
        by_name = self.server.stub.Classify(classify_request("", model="digits:50"), timeout=30)
        self.assertEqual(by_name.model_version, "50")
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.server.stub.Classify,
                         classify_request("no-such-version"), timeout=30)
        # The default version: pinned to 1, then back to the latest (numerically: 50 > 10 > 1).
        pinned = self.control.SetDefaultVersion(
            pb.SetDefaultVersionRequest(name="digits", version="1"), timeout=30)
        self.assertEqual(pinned.version, "1")
        self.assertEqual(self.server.stub.Classify(classify_request(), timeout=30).model_version,
                         "1")
        latest = self.control.SetDefaultVersion(pb.SetDefaultVersionRequest(name="digits"),
                                                timeout=30)
        self.assertNotEqual(latest.version, "1")
        self.assertEqual(self.server.stub.Classify(classify_request(), timeout=30).model_version,
                         latest.version)
        self.control.SetDefaultVersion(pb.SetDefaultVersionRequest(name="digits", version="1"),
                                       timeout=30)
        listed = self.server.stub.ListModels(pb.ListModelsRequest(), timeout=30)
        versions = [m.version for m in listed.models if m.name == "digits"]
        self.assertIn("50", versions)
        self.assertEqual([m.version for m in listed.models if m.default_version], ["1"])
        metrics = self.server.metrics()
        self.assertGreaterEqual(metrics[("convnext_model_loads_total", frozenset(
            {("model", "digits"), ("result", "ok")}))], 1)
        self.assertEqual(metrics[("convnext_model_ready", frozenset(
            {("model", "digits"), ("version", "50")}))], 1)

    def test_cli_load_models_default_unload(self):
        import json
        import subprocess

        def cli(*args):
            return subprocess.run([os.path.join(BIN, "convnext"), *args,
                                   f"--target=127.0.0.1:{self.server.port}", "--timeout_s=120"],
                                  capture_output=True, text=True, timeout=180)

        config = os.path.join(self.dir, "v60.textproto")
        with open(config, "w") as f:
            f.write(model_config("60", self.v2))
        r = cli("load", config)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("digits version 60 loaded", r.stdout)
        r = cli("models", "--json")
        models = {(m["name"], m["version"]): m for m in json.loads(r.stdout)}
        self.assertEqual(models[("digits", "60")]["state"], "ready")
        r = cli("classify", DIGIT, "--model=digits", "--model_version=60", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = cli("default", "digits", "--model_version=1")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "digits: default version 1"))
        r = cli("unload", "digits", "--model_version=60")
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "digits: unloaded version(s) 60"))
        r = cli("load", "name: 'digits' checkpoint: '/nonexistent.safetensors'")
        self.assertEqual(r.returncode, 1)
        self.assertIn("NOT_FOUND", r.stderr)

    def test_bad_load_requests(self):
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.control.LoadModel,
                         pb.LoadModelRequest(config="name: 'digits' nonsense: 1"), timeout=30)
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.control.LoadModel,
                         pb.LoadModelRequest(config="name: 'digits' version: 'a b'"), timeout=30)
        self.assert_code(grpc.StatusCode.NOT_FOUND, self.control.UnloadModel,
                         pb.UnloadModelRequest(name="nothing"), timeout=30)


class ControlAccessTest(unittest.TestCase):
    def test_refused_without_its_flag(self):
        server = Server("--model", f"digits={os.path.join(DIGITS, 'convnext_digits.safetensors')}")
        try:
            control = pb_grpc.ModelControlStub(server.channel)
            with self.assertRaises(grpc.RpcError) as ctx:
                control.UnloadModel(pb.UnloadModelRequest(name="digits"), timeout=30)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
            self.assertIn("--enable_model_control", ctx.exception.details())
            server.stub.Classify(classify_request(), timeout=30)  # Still serving.
        finally:
            stop(server)

    def test_mutual_tls_identity(self):
        d = tempfile.mkdtemp()
        try:
            make_certificates(d)  # ca, server, client (CN=client), rogue
            openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=admin", "-keyout",
                    "admin.key", "-out", "admin.csr", cwd=d)
            openssl("x509", "-req", "-in", "admin.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-out", "admin.pem", cwd=d)
            p = lambda n: os.path.join(d, n)
            server = Server("--model",
                            f"digits={os.path.join(DIGITS, 'convnext_digits.safetensors')}",
                            "--tls_cert", p("server.pem"), "--tls_key", p("server.key"),
                            "--tls_client_ca", p("ca.pem"), "--enable_model_control",
                            "--model_control_clients", "admin")
            try:
                def control_as(name):
                    creds = grpc.ssl_channel_credentials(
                        root_certificates=read(d, "ca.pem"), private_key=read(d, f"{name}.key"),
                        certificate_chain=read(d, f"{name}.pem"))
                    channel = grpc.secure_channel(f"localhost:{server.port}", creds)
                    return channel, pb_grpc.ModelControlStub(channel)

                channel, control = control_as("client")
                with channel, self.assertRaises(grpc.RpcError) as ctx:
                    control.SetDefaultVersion(pb.SetDefaultVersionRequest(name="digits"),
                                              timeout=30)
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.PERMISSION_DENIED)
                self.assertIn("client", ctx.exception.details())
                channel, control = control_as("admin")
                with channel:
                    r = control.SetDefaultVersion(pb.SetDefaultVersionRequest(name="digits"),
                                                  timeout=30)
                self.assertEqual(r.version, "1")
            finally:
                stop(server)
        finally:
            shutil.rmtree(d, ignore_errors=True)


class ConfigWatchTest(unittest.TestCase):
    def test_applies_a_valid_edit_and_ignores_a_broken_one(self):
        d = tempfile.mkdtemp()
        v1 = os.path.join(DIGITS, "convnext_digits.safetensors")
        config = os.path.join(d, "server.textproto")

        def write(text):
            with open(config + ".tmp", "w") as f:
                f.write(text)
            os.replace(config + ".tmp", config)

        write('default_model: "digits"\n' + model_entry("1", v1))
        server = Server("--config", config, "--watch_config", "--watch_config_interval_s", "0.2")
        try:
            def versions():
                listed = server.stub.ListModels(pb.ListModelsRequest(), timeout=30)
                return {(m.version, m.state) for m in listed.models}

            def wait_for(pred, what):
                deadline = time.time() + 60
                while time.time() < deadline:
                    if pred():
                        return
                    time.sleep(0.1)
                self.fail(f"timed out waiting for {what}; have {versions()}")

            # A second version, made the default.
            write('default_model: "digits"\ndefault_version { model: "digits" version: "2" }\n' +
                  model_entry("1", v1) + model_entry("2", v1))
            wait_for(lambda: (("2", pb.READY) in versions() and server.stub.Classify(
                classify_request(), timeout=30).model_version == "2"), "version 2 as default")
            # A broken edit: logged, nothing changes.
            write("model { name: 'digits' checkpoint: ")
            wait_for(lambda: any("config_rejected" in l for l in server.lines), "config_rejected")
            self.assertEqual(versions(), {("1", pb.READY), ("2", pb.READY)})
            self.assertEqual(server.stub.Classify(classify_request(), timeout=30).model_version,
                             "2")
            # Version 1 removed: unloaded; version 2 serves on.
            write('default_model: "digits"\n' + model_entry("2", v1))
            wait_for(lambda: all(v != "1" for v, _ in versions()), "version 1 unloaded")
            self.assertEqual(server.stub.Classify(classify_request(), timeout=30).model_version,
                             "2")
        finally:
            stop(server)
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
