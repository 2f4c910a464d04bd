"""The Open Inference Protocol (KServe v2) over gRPC, with the real client: tritonclient from PyPI
(tests/requirements-oip.txt, installed by scripts/oip-venv.sh), against a running
convnext-server. Answers are compared with our own protocol's, through the `convnext` CLI, and
with convnext-run on the same checkpoint.

Run by ctest in the virtual environment, which sets CONVNEXT_BIN and CONVNEXT_TESTDATA.
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

BIN = os.environ.get("CONVNEXT_BIN", "build/bin")
DATA = os.environ.get("CONVNEXT_TESTDATA", "build/testdata")
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# Real photos shipped by Debian's python3-skimage.
PHOTOS = [os.path.join("/usr/lib/python3/dist-packages/skimage/data", name)
          for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")]


class Server:
    """A convnext-server process on a free loopback port."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [os.path.join(BIN, "convnext-server"), "--host", "127.0.0.1", "--port", "0",
             "--metrics_host", "127.0.0.1", "--metrics_port", "0", "--http_host", "127.0.0.1",
             "--http_port", "0", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines, self.port = [], None
        deadline = time.time() + 180
        while time.time() < deadline and self.port is None:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r"event=serving .* port=(\d+) metrics_port=(\d+) http_port=(\d+)",
                              line)
            if match:
                self.port, self.metrics_port, self.http_port = map(int, match.groups())
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("server did not start: " + "".join(self.lines))
        threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stderr],
                         daemon=True).start()

    def requests_total(self, code):
        """convnext_requests_total for model tiny, method ModelInfer and `code`."""
        import urllib.request
        page = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                      timeout=10).read().decode()
        for line in page.splitlines():
            if (line.startswith("convnext_requests_total{") and 'model="tiny"' in line and
                    'method="ModelInfer"' in line and f'code="{code}"' in line):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self):
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.proc.stderr.close()
        return code


def read(path):
    with open(path, "rb") as f:
        return f.read()


class OipTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.checkpoint = os.path.join(DATA, "tiny.safetensors")
        cls.server = Server("--model", f"tiny={cls.checkpoint}")
        cls.target = f"127.0.0.1:{cls.server.port}"
        cls.client = triton.InferenceServerClient(cls.target)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        code = cls.server.stop()
        if code != 0:
            raise AssertionError(f"convnext-server exited {code}: {''.join(cls.server.lines)}")

    def cli(self, *args):
        r = subprocess.run([os.path.join(BIN, "convnext"), "--target", self.target, *args],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def images_input(self, paths):
        data = np.array([read(p) for p in paths], dtype=np.object_)
        image = triton.InferInput("IMAGE", [len(paths)], "BYTES")
        image.set_data_from_numpy(data)
        return image

    def test_wire_compatible_with_the_proto_tritonclient_ships(self):
        """Every message, field number, type and RPC of our .proto is Triton's (a superset)."""
        from google.protobuf import descriptor_pb2
        from tritonclient.grpc import model_config_pb2, service_pb2
        root = os.path.join(ROOT, "proto")
        with tempfile.TemporaryDirectory() as out:
            desc = os.path.join(out, "oip.desc")
            subprocess.run(["protoc", f"--proto_path={root}", f"--descriptor_set_out={desc}",
                            "inference/open_inference.proto"], check=True, timeout=60)
            files = descriptor_pb2.FileDescriptorSet.FromString(read(desc))
        ours = files.file[0]
        self.assertEqual(ours.package, "inference")
        triton_file = service_pb2.DESCRIPTOR

        def compare(message, theirs, path):
            for field in message.field:
                other = theirs.fields_by_name.get(field.name)
                self.assertIsNotNone(other, f"{path}.{field.name}")
                self.assertEqual((field.number, field.type), (other.number, other.type),
                                 f"{path}.{field.name}")
                self.assertEqual(field.label == field.LABEL_REPEATED, other.is_repeated,
                                 f"{path}.{field.name}")
            for nested in message.nested_type:
                if not nested.options.map_entry:
                    compare(nested, theirs.nested_types_by_name[nested.name],
                            f"{path}.{nested.name}")

        def theirs_named(kind, name):
            for f in (triton_file, model_config_pb2.DESCRIPTOR):
                found = getattr(f, kind).get(name)
                if found is not None:
                    return found
            self.fail(f"Triton has no {name}")

        for message in ours.message_type:
            compare(message, theirs_named("message_types_by_name", message.name), message.name)
        for enum in ours.enum_type:
            theirs = theirs_named("enum_types_by_name", enum.name)
            self.assertEqual({(v.name, v.number) for v in enum.value},
                             {(v.name, v.number) for v in theirs.values}, enum.name)
        service = ours.service[0]
        self.assertEqual(service.name, "GRPCInferenceService")
        theirs = triton_file.services_by_name[service.name]
        for method in service.method:
            other = theirs.methods_by_name[method.name]
            self.assertEqual((method.input_type, method.output_type),
                             ("." + other.input_type.full_name, "." + other.output_type.full_name))

    def test_model_config_and_statistics_for_triton_tools(self):
        config = self.client.get_model_config("tiny", as_json=True)["config"]
        self.assertEqual(config["max_batch_size"], 64)  # batching.max_queue_size's default.
        self.assertEqual([(i["name"], i["data_type"], i["dims"]) for i in config["input"]],
                         [("IMAGE", "TYPE_STRING", ["1"]), ("PIXELS", "TYPE_UINT8",
                          ["-1", "-1", "-1"]), ("TENSOR", "TYPE_FP32", ["3", "-1", "-1"])])
        self.assertEqual(config["output"][0]["dims"], ["1000"])
        self.assertIn("dynamic_batching", config)
        before = self.client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
        self.client.infer("tiny", [self.images_input(PHOTOS[:2])])
        after = self.client.get_inference_statistics("tiny", as_json=True)["model_stats"][0]
        self.assertEqual(int(after["inference_count"]) - int(before.get("inference_count", 0)), 2)
        everything = self.client.get_inference_statistics(as_json=True)["model_stats"]
        self.assertEqual([s["name"] for s in everything], ["tiny"])

    def test_health_and_metadata(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("tiny"))
        self.assertTrue(self.client.is_model_ready("tiny", "1"))
        self.assertFalse(self.client.is_model_ready("tiny", "2"))
        self.assertFalse(self.client.is_model_ready("nope"))
        server = self.client.get_server_metadata(as_json=True)
        self.assertEqual(server["name"], "convnext-serve")
        self.assertIn("classification", server["extensions"])
        meta = self.client.get_model_metadata("tiny", as_json=True)
        self.assertEqual(meta["versions"], ["1"])
        self.assertEqual([(t["name"], t["datatype"]) for t in meta["inputs"]],
                         [("IMAGE", "BYTES"), ("PIXELS", "UINT8"), ("TENSOR", "FP32")])
        self.assertEqual([t["name"] for t in meta["outputs"]],
                         ["probabilities", "embedding", "stage1", "stage2", "stage3", "stage4"])
        self.assertEqual(meta["outputs"][0]["shape"], ["-1", "1000"])
        self.assertEqual(meta["outputs"][1]["shape"], ["-1", "768"])
        with self.assertRaises(InferenceServerException) as e:
            self.client.get_model_metadata("nope")
        self.assertIn("NOT_FOUND", e.exception.status())

    def test_classify_real_photos_like_our_own_protocol(self):
        ours = json.loads(self.cli("classify", *PHOTOS, "--model", "tiny", "--top_k", "5",
                                   "--json"))
        top5 = [[c["index"] for c in r["classes"]] for r in ours["results"]]
        # Every class's probability, dense.
        result = self.client.infer("tiny", [self.images_input(PHOTOS)],
                                   outputs=[triton.InferRequestedOutput("probabilities")],
                                   request_id="photos-1")
        self.assertEqual(result.get_response().id, "photos-1")
        probabilities = result.as_numpy("probabilities")
        self.assertEqual(probabilities.shape, (len(PHOTOS), 1000))
        self.assertEqual([list(np.argsort(-p, kind="stable")[:5]) for p in probabilities], top5)
        for p, r in zip(probabilities, ours["results"]):
            self.assertAlmostEqual(float(p.sum()), 1.0, places=4)
            for c in r["classes"]:
                self.assertAlmostEqual(float(p[c["index"]]), c["score"], places=6)
        # The classification extension: top 5 as "score:index".
        result = self.client.infer("tiny", [self.images_input(PHOTOS)], outputs=[
            triton.InferRequestedOutput("probabilities", class_count=5)])
        classes = result.as_numpy("probabilities")
        self.assertEqual(classes.shape, (len(PHOTOS), 5))
        self.assertEqual([[int(x.decode().split(":")[1]) for x in row] for row in classes], top5)

    def test_embeddings_and_stage_maps_like_our_own_protocol(self):
        names = ["embedding"] + [f"stage{s}" for s in range(1, 5)]
        result = self.client.infer("tiny", [self.images_input(PHOTOS[:2])], outputs=[
            triton.InferRequestedOutput(n) for n in names])
        with tempfile.TemporaryDirectory() as out:
            for i, photo in enumerate(PHOTOS[:2]):
                self.cli("embed", photo, "--model", "tiny", "--stages", "1,2,3,4", "--out", out)
                stem = os.path.join(out, os.path.splitext(os.path.basename(photo))[0])
                for name in names:
                    ours = np.load(f"{stem}.{name}.npy")
                    theirs = result.as_numpy(name)[i]
                    self.assertEqual(theirs.shape, ours.shape, name)
                    self.assertLessEqual(float(np.abs(theirs - ours).max()), 1e-5, name)
        self.assertEqual(result.as_numpy("stage1").shape, (2, 96, 56, 56))
        # Probabilities with them: one forward pass, the same answers as asked apart.
        both = self.client.infer("tiny", [self.images_input(PHOTOS[:2])], outputs=[
            triton.InferRequestedOutput(n) for n in ("stage2", "probabilities", "embedding")])
        alone = self.client.infer("tiny", [self.images_input(PHOTOS[:2])])
        self.assertLessEqual(float(np.abs(both.as_numpy("probabilities") -
                                          alone.as_numpy("probabilities")).max()), 1e-6)
        for name in ("stage2", "embedding"):
            self.assertLessEqual(float(np.abs(both.as_numpy(name) -
                                              result.as_numpy(name)).max()), 1e-5, name)

    def test_fp32_and_fp16_tensors(self):
        rng = np.random.default_rng(7)
        x = rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
        with tempfile.TemporaryDirectory() as out:
            outputs = {}
            for dtype in (np.float32, np.float16):
                values = x.astype(dtype)
                np.save(os.path.join(out, "x.npy"), values.astype(np.float32))
                r = subprocess.run([os.path.join(BIN, "convnext-run"), "--checkpoint",
                                    self.checkpoint, "--input", os.path.join(out, "x.npy"),
                                    "--output", os.path.join(out, "ref.npy"), "--features"],
                                   capture_output=True, text=True, timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                reference = np.load(os.path.join(out, "ref.embedding.npy"))
                tensor = triton.InferInput("TENSOR", list(values.shape),
                                           "FP32" if dtype == np.float32 else "FP16")
                tensor.set_data_from_numpy(values)
                result = self.client.infer("tiny", [tensor], outputs=[
                    triton.InferRequestedOutput("embedding")])
                outputs[dtype] = result.as_numpy("embedding")
                self.assertEqual(outputs[dtype].shape, (1, 768))
                self.assertLessEqual(float(np.abs(outputs[dtype] - reference).max()), 1e-4)

    def test_pixels(self):
        # The photo's pixels, decoded by Debian's PIL (the virtual environment has none).
        with tempfile.TemporaryDirectory() as out:
            npy = os.path.join(out, "pixels.npy")
            subprocess.run(["/usr/bin/python3", "-c",
                            "import sys, numpy; from PIL import Image; numpy.save(sys.argv[2], "
                            "numpy.asarray(Image.open(sys.argv[1]).convert('RGB')))",
                            PHOTOS[0], npy], check=True, timeout=60)
            pixels = np.load(npy)[None]
        image = triton.InferInput("PIXELS", list(pixels.shape), "UINT8")
        image.set_data_from_numpy(pixels)
        theirs = self.client.infer("tiny", [image]).as_numpy("probabilities")
        ours = self.client.infer("tiny", [self.images_input(PHOTOS[:1])]).as_numpy(
            "probabilities")
        # A PNG decodes to the same pixels: the same answer.
        self.assertLessEqual(float(np.abs(theirs - ours).max()), 1e-6)

    def test_bad_requests_get_clear_errors(self):
        def fails(code, text, *args, **kwargs):
            with self.assertRaises(InferenceServerException) as e:
                self.client.infer(*args, **kwargs)
            self.assertIn(code, e.exception.status())
            self.assertIn(text, e.exception.message())

        image = self.images_input(PHOTOS[:1])
        before = self.server.requests_total("INVALID_ARGUMENT")
        fails("NOT_FOUND", "no model named 'nope'", "nope", [image])
        fails("NOT_FOUND", "has no version or version label '7'", "tiny", [image], model_version="7")
        garbage = triton.InferInput("IMAGE", [1], "BYTES")
        garbage.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        fails("INVALID_ARGUMENT", "image 0", "tiny", [garbage])
        wrong = triton.InferInput("TENSOR", [1, 3, 8, 8], "INT32")
        wrong.set_data_from_numpy(np.zeros((1, 3, 8, 8), dtype=np.int32))
        fails("INVALID_ARGUMENT", "expected FP32 or FP16", "tiny", [wrong])
        fails("INVALID_ARGUMENT", "has no output 'logits'", "tiny", [image],
              outputs=[triton.InferRequestedOutput("logits")])
        fails("INVALID_ARGUMENT", "classification = 5000", "tiny", [image],
              outputs=[triton.InferRequestedOutput("probabilities", class_count=5000)])
        # Counted under the model, as ModelInfer; the server is unharmed.
        self.assertEqual(self.server.requests_total("INVALID_ARGUMENT") - before, 4)
        self.assertTrue(self.client.is_server_ready())
        ok = self.server.requests_total("OK")
        self.client.infer("tiny", [image])
        self.assertEqual(self.server.requests_total("OK") - ok, 1)


class OipRepositoryTest(unittest.TestCase):
    """The model repository extension through tritonclient: index, load, reload, unload."""

    def test_index_load_reload_unload(self):
        digits = os.path.join(ROOT, "default_model", "convnext_digits.safetensors")
        server = Server("--model", f"digits={digits}", "--enable_model_control")
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            self.assertIn("model_repository", client.get_server_metadata(as_json=True)["extensions"])
            index = client.get_model_repository_index(as_json=True)["models"]
            self.assertEqual([(m["name"], m["version"], m["state"]) for m in index],
                             [("digits", "1", "READY")])
            client.load_model("digits", config=f'version: "2" checkpoint: "{digits}"')
            self.assertTrue(client.is_model_ready("digits", "2"))
            self.assertTrue(client.is_model_ready("digits", "1"))
            client.load_model("digits")  # Reloads both versions from their configs.
            self.assertEqual(sorted((m["version"], m["state"]) for m in client.get_model_repository_index(
                as_json=True)["models"] if m["state"] != "UNLOADING"), [("1", "READY"), ("2", "READY")])
            with self.assertRaises(InferenceServerException) as e:
                client.load_model("digits", config='version: "3" checkpoint: "/nonexistent.pth"')
            self.assertIn("NOT_FOUND", str(e.exception.status()))
            with self.assertRaises(InferenceServerException) as e:
                client.load_model("nothing")
            self.assertIn("NOT_FOUND", str(e.exception.status()))
            client.unload_model("digits")
            self.assertFalse(client.is_model_ready("digits"))
            index = client.get_model_repository_index(as_json=True).get("models", [])
            self.assertEqual([m for m in index if m["state"] == "READY"], [])
        finally:
            client.close()
            server.stop()

    def test_load_refused_without_model_control(self):
        digits = os.path.join(ROOT, "default_model", "convnext_digits.safetensors")
        server = Server("--model", f"digits={digits}")
        client = triton.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            for call in (lambda: client.load_model("digits"), lambda: client.unload_model("digits")):
                with self.assertRaises(InferenceServerException) as e:
                    call()
                self.assertIn("PERMISSION_DENIED", str(e.exception.status()))
                self.assertIn("--enable_model_control", e.exception.message())
            self.assertTrue(client.is_model_ready("digits"))
        finally:
            client.close()
            server.stop()


class OipHttpTest(unittest.TestCase):
    """The same protocol over HTTP/REST with tritonclient.http, against the gRPC answers."""

    @classmethod
    def setUpClass(cls):
        import tritonclient.http as triton_http
        cls.http = triton_http
        cls.checkpoint = os.path.join(DATA, "tiny.safetensors")
        cls.server = Server("--model", f"tiny={cls.checkpoint}", "--http_read_timeout_s", "3")
        cls.client = triton_http.InferenceServerClient(f"127.0.0.1:{cls.server.http_port}")
        cls.grpc = triton.InferenceServerClient(f"127.0.0.1:{cls.server.port}")

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.grpc.close()
        code = cls.server.stop()
        if code != 0:
            raise AssertionError(f"convnext-server exited {code}: {''.join(cls.server.lines)}")

    def images(self, paths, binary=True):
        image = self.http.InferInput("IMAGE", [len(paths)], "BYTES")
        image.set_data_from_numpy(np.array([read(p) for p in paths], dtype=np.object_),
                                  binary_data=binary)
        return image

    def test_health_metadata_config_and_statistics(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())
        self.assertTrue(self.client.is_model_ready("tiny"))
        self.assertFalse(self.client.is_model_ready("tiny", "2"))
        self.assertIn("binary_tensor_data", self.client.get_server_metadata()["extensions"])
        meta = self.client.get_model_metadata("tiny")
        over_grpc = self.grpc.get_model_metadata("tiny", as_json=True)
        for key in ("name", "versions", "platform", "inputs", "outputs"):
            # The same, but for numbers (gRPC's JSON writes int64 as strings).
            self.assertEqual(json.dumps(meta[key], sort_keys=True).replace('"', ""),
                             json.dumps(over_grpc[key], sort_keys=True).replace('"', ""), key)
        self.assertEqual(meta["outputs"][0], {"name": "probabilities", "datatype": "FP32",
                                              "shape": [-1, 1000]})
        self.assertEqual(self.client.get_model_config("tiny")["max_batch_size"], 64)
        stats = self.client.get_inference_statistics("tiny")["model_stats"]
        self.assertEqual(stats[0]["name"], "tiny")

    def test_same_answers_as_grpc(self):
        outputs = [self.http.InferRequestedOutput(n, binary_data=(n != "embedding"))
                   for n in ("probabilities", "embedding", "stage3")]
        theirs = self.client.infer("tiny", [self.images(PHOTOS[:2])], outputs=outputs,
                                   request_id="h1")
        self.assertEqual(theirs.get_response()["id"], "h1")
        image = triton.InferInput("IMAGE", [2], "BYTES")
        image.set_data_from_numpy(np.array([read(p) for p in PHOTOS[:2]], dtype=np.object_))
        ours = self.grpc.infer("tiny", [image], outputs=[
            triton.InferRequestedOutput(n) for n in ("probabilities", "embedding", "stage3")])
        for name in ("probabilities", "embedding", "stage3"):
            self.assertEqual(theirs.as_numpy(name).shape, ours.as_numpy(name).shape, name)
            self.assertLessEqual(float(np.abs(theirs.as_numpy(name) -
                                              ours.as_numpy(name)).max()), 1e-5, name)
        # JSON everywhere: a JSON image (a BYTES string) is text, so send a tensor instead.
        x = np.random.default_rng(3).standard_normal((1, 3, 64, 64), dtype=np.float32)
        tensor = self.http.InferInput("TENSOR", [1, 3, 64, 64], "FP32")
        tensor.set_data_from_numpy(x, binary_data=False)
        json_answer = self.client.infer("tiny", [tensor], outputs=[
            self.http.InferRequestedOutput("probabilities", binary_data=False, class_count=3)])
        top3 = json_answer.as_numpy("probabilities")
        self.assertEqual(top3.shape, (1, 3))
        half = self.http.InferInput("TENSOR", [1, 3, 64, 64], "FP16")
        half.set_data_from_numpy(x.astype(np.float16))
        fp16 = self.client.infer("tiny", [half], outputs=[
            self.http.InferRequestedOutput("probabilities", class_count=3)])
        def indices(row):
            return [int((v if isinstance(v, str) else v.decode()).split(":")[1]) for v in row]

        self.assertEqual(indices(fp16.as_numpy("probabilities")[0]), indices(top3[0]))

    def test_clients_trickling_bytes_are_cut_off(self):
        """70 connections (more than the 64 served at once) each sending a byte every half
        second: every one is closed once it has taken 3 s (--http_read_timeout_s) without
        finishing its request, and a normal client is then answered."""
        import socket
        import threading
        tricklers, closed_after = [], []

        def trickle():
            s = socket.create_connection(("127.0.0.1", self.server.http_port), timeout=30)
            start = time.monotonic()
            try:
                for byte in b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n" * 10:
                    s.sendall(bytes([byte]))
                    time.sleep(0.5)
            except OSError:
                pass
            closed_after.append(time.monotonic() - start)
            s.close()

        for _ in range(70):
            t = threading.Thread(target=trickle)
            t.start()
            tricklers.append(t)
        time.sleep(1)
        start = time.monotonic()
        self.assertTrue(self.client.is_server_ready())  # Served once a connection is freed.
        waited = time.monotonic() - start
        for t in tricklers:
            t.join()
        print(f"\ntrickling clients closed after {min(closed_after):.1f}-{max(closed_after):.1f} s;"
              f" a normal request waited {waited:.1f} s for a connection")
        self.assertEqual(len(closed_after), 70)
        self.assertLess(max(closed_after), 20)  # Not the 460 s their requests would take.

    def test_errors_have_http_codes(self):
        def fails(code, text, *args, **kwargs):
            with self.assertRaises(InferenceServerException) as e:
                self.client.infer(*args, **kwargs)
            self.assertEqual(str(e.exception.status()), str(code))
            self.assertIn(text, e.exception.message())

        fails(404, "no model named 'nope'", "nope", [self.images(PHOTOS[:1])])
        garbage = self.http.InferInput("IMAGE", [1], "BYTES")
        garbage.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
        fails(400, "image 0", "tiny", [garbage])
        fails(400, "has no output 'logits'", "tiny", [self.images(PHOTOS[:1])],
              outputs=[self.http.InferRequestedOutput("logits")])
        import http.client
        connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=30)
        # A body declared over the message limit is refused before it is read.
        connection.putrequest("POST", "/v2/models/tiny/infer")
        connection.putheader("Content-Length", str(1 << 30))
        connection.endheaders()
        answer = connection.getresponse()
        self.assertEqual(answer.status, 413)
        self.assertIn("larger than 67108864 bytes", json.loads(answer.read())["error"])
        connection.close()
        for method, path, status in (("GET", "/v3", 404), ("POST", "/v2/health/live", 405),
                                     ("GET", "/v2/models/tiny/infer", 405),
                                     ("POST", "/v2/models/tiny/infer", 400)):
            connection = http.client.HTTPConnection("127.0.0.1", self.server.http_port,
                                                    timeout=30)
            connection.request(method, path, body=b"{" if method == "POST" else None)
            answer = connection.getresponse()
            self.assertEqual(answer.status, status, path)
            self.assertIn("error", json.loads(answer.read()))
            connection.close()
        self.assertTrue(self.client.is_server_ready())


class OipHttpBudgetTest(unittest.TestCase):
    def test_request_bodies_held_at_once_are_bounded(self):
        """With transport_memory_bytes at 1 MiB, a connection holding 700 kB of an unfinished
        body leaves no room for another's 800 kB: that one is answered 503 (retry) as its bytes
        arrive, and the first is still served."""
        import http.client
        with tempfile.TemporaryDirectory() as tmp:
            config = os.path.join(tmp, "server.textproto")
            with open(config, "w") as f:
                checkpoint = os.path.abspath(os.path.join(DATA, "tiny.safetensors"))
                f.write(f'max_message_bytes: 1048576 transport_memory_bytes: 1048576 '
                        f'model {{ name: "tiny" checkpoint: "{checkpoint}" }}')
            server = Server("--config", config)
            try:
                holder = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
                holder.putrequest("POST", "/v2/models/tiny/infer")
                holder.putheader("Content-Length", "800000")
                holder.endheaders()
                holder.send(b" " * 700000)
                time.sleep(1)  # Let the server take the 700 kB in.
                other = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
                other.request("POST", "/v2/models/tiny/infer", body=b" " * 800000)
                answer = other.getresponse()
                self.assertEqual(answer.status, 503)
                self.assertIn("transport_memory_bytes", json.loads(answer.read())["error"])
                other.close()
                holder.send(b" " * 100000)
                answer = holder.getresponse()
                self.assertEqual(answer.status, 400)  # Served: 800 kB of spaces is no request.
                self.assertIn("not a JSON object", json.loads(answer.read())["error"])
                holder.close()
            finally:
                self.assertEqual(server.stop(), 0)

def readme_from(heading):
    """The README from `heading` on."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    return readme[readme.index(heading):]


class ReadmeSnippetTest(unittest.TestCase):
    def test_the_readme_tritonclient_snippet_runs(self):
        section = readme_from("## Using Triton and KServe clients")
        snippet = re.search(r"```python\n(.*?)```", section, re.S).group(1)
        server = Server()  # The default model, as the README's first command serves it.
        try:
            r = subprocess.run([sys.executable, "-c", snippet.replace(
                "localhost:50051", f"127.0.0.1:{server.port}")], cwd=ROOT, capture_output=True,
                text=True, timeout=120)
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertEqual(r.returncode, 0, r.stderr)
        print("\n" + r.stdout.strip())
        self.assertRegex(r.stdout, r"\[\[b'0\.9\d*:3:digit 3' b'0\.0\d*:\d:digit \d'\]\]")

    def test_the_readme_curl_examples_run(self):
        section = readme_from("**HTTP/REST.**")
        commands = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
        expected = re.search(r"prints .*?```\n(.*?)\n```", section, re.S).group(1)
        server = Server()  # The default model, as the README's first command serves it.
        try:
            r = subprocess.run(["bash", "-euo", "pipefail", "-c", commands.replace(
                "localhost:8000", f"127.0.0.1:{server.http_port}")], capture_output=True,
                text=True, timeout=120)
        finally:
            self.assertEqual(server.stop(), 0)
        self.assertEqual(r.returncode, 0, r.stderr)
        status, rest = r.stdout.split("\n", 1)
        self.assertEqual(status, "200")
        # curl adds no newline: the metadata and the answer follow each other.
        metadata, end = json.JSONDecoder().raw_decode(rest)
        self.assertEqual(metadata["name"], "digits")
        self.assertEqual(rest[end:].strip(), expected)

if __name__ == "__main__":
    unittest.main()
