"""End-to-end tests of convnext-server over gRPC on loopback, with Debian's python3-grpcio as the
client (stubs generated from proto/ at build time), against torchvision as the reference.

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN (generated stubs).
"""
import concurrent.futures
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import zlib

import numpy as np

sys.path.insert(0, os.environ.get("CONVNEXT_PYGEN", "build/tests/pygen"))
import grpc  # noqa: E402
from convnext.v1 import image_model_pb2 as pb  # noqa: E402
from convnext.v1 import image_model_pb2_grpc as pb_grpc  # noqa: E402

BIN = os.environ.get("CONVNEXT_BIN", "build/bin")
DATA = os.environ.get("CONVNEXT_TESTDATA", "build/testdata")
# Whether this build has the oneDNN CPU fast path (not with a LibTorch 2.x: README, GPU).
FAST_PATH = os.environ.get("CONVNEXT_FAST_PATH", "1") == "1"
PHOTOS = ["chelsea.png", "coffee.png", "astronaut.png", "china.jpg", "flower.jpg"]


def photo_path(name):
    return os.path.join(DATA, "preprocess", name)


class Server:
    """A convnext-server process on a free loopback port."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "convnext-server"), "--host", "127.0.0.1", "--port", "0",
             "--metrics_host", "127.0.0.1", "--metrics_port", "0", "--http_host", "127.0.0.1",
             "--http_port", "0", "--grace_period_s", "20",
             *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self.lines = []
        self.port = None
        deadline = time.time() + 180
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r"event=serving .* port=(\d+) metrics_port=(-?\d+) http_port=(-?\d+)",
                              line)
            if match:
                self.port, self.metrics_port, self.http_port = map(int, match.groups())
                break
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("server did not start: " + "".join(self.lines) +
                               self.proc.stderr.read())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.ImageModelServiceStub(self.channel)
        # Keep reading stdout so that the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def metrics(self):
        """The /metrics page parsed into {(name, frozenset(labels)): value}."""
        import urllib.request
        text = urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            head, value = line.rsplit(" ", 1)
            name, _, labels = head.partition("{")
            pairs = frozenset(tuple(kv.split("=", 1)) for kv in
                              re.findall(r'(\w+="[^"]*")', labels))
            out[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
        return out

    def rss_mb(self):
        """The server process's resident memory, in MB."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def health(self):
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check",
                                         request_serializer=lambda b: b,
                                         response_deserializer=lambda b: b)
        reply = check(b"", timeout=10)  # HealthCheckRequest{service: ""}
        return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(reply, repr(reply))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout=60)
        return self.proc.returncode


def keep_size_input(name):
    """The photo `name` as KEEP_SIZE gives it to the model: [1, 3, H, W] normalised with
    ImageNet's mean and std, zero-padded at the bottom and right to multiples of 32."""
    from PIL import Image
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    image = np.asarray(Image.open(photo_path(name)).convert("RGB"), np.float32)
    h, w = image.shape[:2]
    x = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    x[0, :, :h, :w] = ((image / 255 - mean) / std).transpose(2, 0, 1)
    return x


def tiny_reference():
    """torchvision's convnext_tiny with the test data's random weights (tiny.safetensors), in
    eval mode: the reference for the served "tiny" model."""
    from torchvision.models import convnext_tiny
    model = convnext_tiny()
    model.load_state_dict(read_safetensors(os.path.join(DATA, "tiny.safetensors")))
    return model.eval()


def read_safetensors(path):
    import torch
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        data = np.fromfile(f, dtype=np.uint8, offset=0)
    sd = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        sd[k] = torch.from_numpy(data[a:b].view(np.float32).reshape(v["shape"]).copy())
    return sd


class ServerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = Server("--model", f"tiny={os.path.join(DATA, 'tiny.safetensors')}",
                            "--model", f"custom={os.path.join(DATA, 'custom.safetensors')}",
                            "--model", f"backbone={os.path.join(DATA, 'formats', 'mmdet_backbone.pth')}",
                            "--default_model", "tiny",
                            # A wait long enough that concurrent calls batch even on a loaded
                            # machine or under TSan (at the 2 ms default, 50 calls arriving
                            # over a busy pool were once all batched alone).
                            "--max_queue_delay_us", "20000")
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()

    def classify(self, images, model="", top_k=5, timeout=120):
        return self.stub.Classify(pb.ClassifyRequest(model=model, images=images, top_k=top_k),
                                  timeout=timeout)

    def assert_code(self, code, fn, *args, **kwargs):
        with self.assertRaises(grpc.RpcError) as ctx:
            fn(*args, **kwargs)
        self.assertEqual(ctx.exception.code(), code, ctx.exception.details())
        return ctx.exception.details()

    def test_opencv_decodes_under_the_servers_pixel_limit(self):
        # OpenCV takes its limit from the environment the process starts with; the server
        # restarts itself with it set to max_image_pixels (40,000,000 by default).
        with open(f"/proc/{self.server.proc.pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        self.assertIn(b"OPENCV_IO_MAX_IMAGE_PIXELS=40000000", environ)

    def test_health_and_model_listing(self):
        self.assertEqual(self.server.health(), "SERVING")
        models = self.stub.ListModels(pb.ListModelsRequest(), timeout=10)
        self.assertEqual(models.default_model, "tiny")
        self.assertEqual(sorted(m.name for m in models.models), ["backbone", "custom", "tiny"])
        tiny = self.stub.GetModel(pb.GetModelRequest(name=""), timeout=10)
        self.assertEqual(tiny.name, "tiny")
        self.assertEqual(tiny.variant, "convnext_tiny")
        self.assertEqual(list(tiny.depths), [3, 3, 9, 3])
        self.assertEqual(list(tiny.dims), [96, 192, 384, 768])
        self.assertEqual(tiny.num_classes, 1000)
        self.assertEqual(tiny.parameter_count, 28589128)
        self.assertTrue(tiny.ready)
        self.assertEqual(tiny.device, "cpu")
        self.assertEqual(tiny.cpu_fast_path, FAST_PATH)
        self.assertEqual(tiny.preprocessing.size, 224)
        self.assertEqual(len(tiny.checkpoint_sha256), 64)
        import hashlib
        with open(os.path.join(DATA, "tiny.safetensors"), "rb") as f:
            self.assertEqual(tiny.checkpoint_sha256, hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(tiny.batching.max_batch_size, 4)  # The default.

    def test_classify_real_photos_matches_the_python_reference_top5(self):
        import torch
        from PIL import Image
        from torchvision import transforms
        model = tiny_reference()
        tf = transforms.Compose([
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(224), transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        images = []
        expected = []
        for name in PHOTOS:
            with open(photo_path(name), "rb") as f:
                images.append(pb.Image(encoded=f.read()))
            with torch.no_grad():
                x = tf(Image.open(photo_path(name)).convert("RGB")).unsqueeze(0)
                expected.append(torch.topk(torch.softmax(model(x), 1)[0], 5).indices.tolist())
        reply = self.classify(images)
        self.assertEqual(reply.model, "tiny")
        self.assertEqual(len(reply.results), len(PHOTOS))
        for name, result, want in zip(PHOTOS, reply.results, expected):
            got = [c.index for c in result.classes]
            self.assertEqual(got, want, name)
            scores = [c.score for c in result.classes]
            self.assertEqual(scores, sorted(scores, reverse=True))
            self.assertTrue(all(0 <= s <= 1 for s in scores))
        self.assertGreater(reply.timings.compute_us, 0)
        self.assertGreater(reply.timings.preprocess_us, 0)

    def test_embed_all_stages_matches_torchvision(self):
        x = np.load(os.path.join(DATA, "tiny.features_input.npy"))  # [1, 3, 256, 320]
        tensor = pb.Tensor(shape=list(x.shape), dtype=pb.FP32, data=x.astype("<f4").tobytes())
        reply = self.stub.Embed(pb.EmbedRequest(
            images=[pb.Image(tensor=tensor)], include_embedding=True, stages=[1, 2, 3, 4]),
            timeout=120)
        r = reply.results[0]
        emb = np.frombuffer(r.embedding.data, "<f4").reshape(list(r.embedding.shape))
        want = np.load(os.path.join(DATA, "tiny.embedding.npy"))[0]
        self.assertLessEqual(np.abs(emb - want).max(), 1e-4)
        for s, t in enumerate(r.stages, start=1):
            got = np.frombuffer(t.data, "<f4").reshape(list(t.shape))
            want = np.load(os.path.join(DATA, f"tiny.stage{s}.npy"))[0]
            self.assertEqual(got.shape, want.shape)
            self.assertLessEqual(np.abs(got - want).max(), 1e-4, f"stage {s}")
        # Normalised FP16 embedding.
        reply = self.stub.Embed(pb.EmbedRequest(
            images=[pb.Image(tensor=tensor)], include_embedding=True, normalize=True,
            dtype=pb.FP16), timeout=120)
        e = np.frombuffer(reply.results[0].embedding.data, "<f2").astype(np.float32)
        self.assertAlmostEqual(float(np.linalg.norm(e)), 1.0, places=2)

    def test_embed_keep_size_pads_to_multiples_of_32(self):
        with open(photo_path("chelsea.png"), "rb") as f:  # 451 x 300
            image = pb.Image(encoded=f.read())
        reply = self.stub.Embed(pb.EmbedRequest(images=[image], stages=[1, 4],
                                                resize=pb.KEEP_SIZE), timeout=120)
        s1, s4 = reply.results[0].stages
        self.assertEqual(list(s1.shape), [96, 80, 120])   # ceil(300/32)*8, ceil(451/32)*8
        self.assertEqual(list(s4.shape), [768, 10, 15])

    def test_detection_backbone_embeds_stages_but_cannot_classify(self):
        x = np.load(os.path.join(DATA, "custom.features_input.npy"))[:1]
        tensor = pb.Tensor(shape=list(x.shape), data=x.astype("<f4").tobytes())
        reply = self.stub.Embed(pb.EmbedRequest(model="backbone", images=[pb.Image(tensor=tensor)],
                                                stages=[2]), timeout=60)
        got = np.frombuffer(reply.results[0].stages[0].data, "<f4")
        want = np.load(os.path.join(DATA, "formats", "mmdet.stage2.npy"))[0].ravel()
        self.assertLessEqual(np.abs(got - want).max(), 1e-4)
        self.assert_code(grpc.StatusCode.FAILED_PRECONDITION, self.classify,
                         [pb.Image(tensor=tensor)], model="backbone")

    def test_concurrent_clients_are_batched_and_answered_exactly(self):
        rng = np.random.default_rng(0)
        pixels = [rng.integers(0, 256, size=(40 + i, 50 + 2 * i, 3), dtype=np.uint8)
                  for i in range(50)]
        requests = [pb.ClassifyRequest(model="custom", top_k=10, images=[pb.Image(raw=pb.RawImage(
            width=p.shape[1], height=p.shape[0], channels=3, pixels=p.tobytes()))])
            for p in pixels]
        before = self.stub.GetModel(pb.GetModelRequest(name="custom"), timeout=10).stats
        # All 50 started from one thread without waiting (gRPC futures), so that they reach the
        # server within a few milliseconds however slow the build (TSan) or the machine.
        futures = [self.stub.Classify.future(r, timeout=120) for r in requests]
        together = [f.result() for f in futures]
        after = self.stub.GetModel(pb.GetModelRequest(name="custom"), timeout=10).stats
        self.assertEqual(after.images - before.images, 50)
        grew = {k: v - before.batch_sizes.get(k, 0) for k, v in after.batch_sizes.items()}
        self.assertTrue(any(size > 1 and n > 0 for size, n in grew.items()), grew)
        for request, reply in zip(requests, together):
            alone = self.stub.Classify(request, timeout=60)
            a = [(c.index, c.score) for c in reply.results[0].classes]
            b = [(c.index, c.score) for c in alone.results[0].classes]
            self.assertEqual([i for i, _ in a], [i for i, _ in b])
            np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)

    def test_errors_have_the_right_status_codes(self):
        with open(photo_path("chelsea.png"), "rb") as f:
            good = pb.Image(encoded=f.read())
        self.assertIn("no model named 'nope'", self.assert_code(
            grpc.StatusCode.NOT_FOUND, self.classify, [good], model="nope"))
        self.assertIn("\\x01", self.assert_code(
            grpc.StatusCode.NOT_FOUND, self.classify, [good], model="bad\x01name"))
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify, [])
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify,
                         [pb.Image(encoded=b"definitely not an image")])
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify,
                         [pb.Image(encoded=good.encoded[: len(good.encoded) // 3])])
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify, [good], top_k=1001)
        # A decompression bomb: a valid PNG header declaring 50000 x 50000 pixels.
        ihdr = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
        bomb = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr +
                struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
        self.assertIn("50000x50000", self.assert_code(
            grpc.StatusCode.INVALID_ARGUMENT, self.classify, [pb.Image(encoded=bomb)]))
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify,
                         [pb.Image(raw=pb.RawImage(width=10, height=10, channels=3, pixels=b"x"))])
        bad_tensor = pb.Tensor(shape=[3, 64, 64], data=np.full((3, 64, 64), np.nan,
                                                                dtype="<f4").tobytes())
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify,
                         [pb.Image(tensor=bad_tensor)])
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.stub.Embed,
                         pb.EmbedRequest(images=[good], stages=[5]), timeout=10)
        # One bad image fails the whole request, with the image's index.
        self.assertIn("image 1", self.assert_code(
            grpc.StatusCode.INVALID_ARGUMENT, self.classify, [good, pb.Image(encoded=b"xx")]))
        self.assertEqual(self.server.health(), "SERVING")

    def test_hostile_inputs_are_invalid_argument_counted_and_harmless(self):
        def tensor(shape, values=None, dtype=pb.FP32):
            data = b"" if values is None else np.asarray(values, dtype="<f4").tobytes()
            return pb.Image(tensor=pb.Tensor(shape=shape, dtype=dtype, data=data))
        ok = np.zeros((3, 64, 64), dtype="<f4")
        inf = ok.copy()
        inf[1, 2, 3] = np.inf
        hostile = [
            pb.Image(raw=pb.RawImage(width=0, height=10, channels=3)),  # Zero-sized.
            pb.Image(raw=pb.RawImage(width=1 << 31, height=1 << 31, channels=3, pixels=b"x")),
            pb.Image(raw=pb.RawImage(width=4, height=4, channels=7, pixels=b"x" * 112)),
            pb.Image(raw=pb.RawImage(width=4, height=4, channels=3, order=99, pixels=b"x" * 48)),
            tensor([-1, 3, 64, 64], ok),                       # Negative size.
            tensor([3, 1 << 40, 1 << 40]),                     # Absurd size.
            tensor([3, 64, 64], inf),                          # Inf.
            tensor([3, 64, 64], ok, dtype=99),                 # Unknown enum value.
            pb.Image(),                                        # No source at all.
            pb.Image(encoded=b""),                             # Zero bytes.
        ]
        key = ("convnext_requests_total", frozenset(
            {("model", "tiny"), ("version", "1"), ("method", "Classify"),
             ("code", "INVALID_ARGUMENT")}))
        before = self.server.metrics().get(key, 0)
        for image in hostile:
            self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify, [image])
        self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.classify,
                         [tensor([3, 64, 64], ok)], top_k=(1 << 32) - 1)
        for field in ({"dtype": 99}, {"resize": 99}):
            self.assert_code(grpc.StatusCode.INVALID_ARGUMENT, self.stub.Embed,
                             pb.EmbedRequest(images=[tensor([3, 64, 64], ok)], stages=[1],
                                             **field), timeout=10)
        # Every refusal is counted, by model, method and code.
        self.assertEqual(self.server.metrics().get(key, 0) - before, len(hostile) + 1)
        self.assertEqual(self.server.health(), "SERVING")
        self.assertEqual(len(self.classify([tensor([3, 64, 64], ok)]).results), 1)

    def test_deadline_and_cancellation(self):
        with open(photo_path("astronaut.png"), "rb") as f:
            image = pb.Image(encoded=f.read())
        self.assert_code(grpc.StatusCode.DEADLINE_EXCEEDED, self.classify, [image] * 16,
                         timeout=0.001)
        future = self.stub.Classify.future(pb.ClassifyRequest(images=[image] * 16), timeout=60)
        future.cancel()
        self.assertTrue(future.cancelled())
        # The server is unharmed.
        self.assertEqual(len(self.classify([image]).results), 1)


class ShutdownAndOverloadTest(unittest.TestCase):
    def test_full_queue_is_unavailable_and_sigterm_loses_nothing(self):
        with tempfile.NamedTemporaryFile("w", suffix=".textproto", delete=False) as f:
            f.write(f'model {{ name: "tiny" checkpoint: "{os.path.join(DATA, "tiny.safetensors")}"'
                    ' batching { max_batch_size: 2 max_queue_size: 4 max_queue_delay_us: 1000 } }')
        server = Server("--config", f.name)
        try:
            x = np.load(os.path.join(DATA, "tiny.input.npy"))[:1]
            image = pb.Image(tensor=pb.Tensor(shape=[1, 3, 224, 224],
                                              data=x.astype("<f4").tobytes()))
            request = pb.ClassifyRequest(images=[image])

            def call(_):
                try:
                    server.stub.Classify(request, timeout=120)
                    return "OK"
                except grpc.RpcError as e:
                    return e.code().name
            with concurrent.futures.ThreadPoolExecutor(24) as pool:
                codes = list(pool.map(call, range(24)))
            self.assertIn("OK", codes)
            self.assertIn("UNAVAILABLE", codes)
            self.assertEqual(set(codes), {"OK", "UNAVAILABLE"})

            # SIGTERM under load: every admitted call is answered, later ones are refused.
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(call, i) for i in range(8)]
                time.sleep(0.3)
                server.proc.send_signal(signal.SIGTERM)
                results = [fut.result() for fut in futures]
            self.assertEqual(server.proc.wait(timeout=60), 0)
            self.assertEqual(len(results), 8)
            self.assertTrue(set(results) <= {"OK", "UNAVAILABLE"}, results)
        finally:
            os.unlink(f.name)
            server.stop()

    def test_oversize_message_is_refused_by_the_configured_limit(self):
        digits = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "default_model", "convnext_digits.safetensors")
        with tempfile.NamedTemporaryFile("w", suffix=".textproto", delete=False) as f:
            f.write(f'model {{ name: "digits" checkpoint: "{digits}" }}'
                    ' max_message_bytes: 1048576')
        server = Server("--config", f.name)
        try:
            big = pb.Image(encoded=b"\xff" * (2 << 20))
            with self.assertRaises(grpc.RpcError) as e:
                server.stub.Classify(pb.ClassifyRequest(images=[big]), timeout=30)
            self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
            self.assertEqual(server.health(), "SERVING")
            small = pb.Image(raw=pb.RawImage(width=8, height=8, channels=1, pixels=b"\x80" * 64))
            self.assertEqual(len(server.stub.Classify(pb.ClassifyRequest(images=[small]),
                                                      timeout=30).results), 1)
        finally:
            os.unlink(f.name)
            self.assertEqual(server.stop(), 0)

    def test_bad_checkpoint_is_a_clear_startup_error(self):
        r = subprocess.run([os.path.join(BIN, "convnext-server"), "--port", "0", "--model",
                            "x=/nonexistent.pth"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("model 'x' version 1: checkpoint '/nonexistent.pth': no such file", r.stderr)
        r = subprocess.run([os.path.join(BIN, "convnext-server"), "--port", "0", "--config",
                            os.devnull], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("no model to serve", r.stderr)


if __name__ == "__main__":
    unittest.main()
