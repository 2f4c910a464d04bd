"""Memory budgets against a running convnext-server (Debian's python3-grpcio as the client).

Requests that would once take the server to many GB (KEEP_SIZE Embeds of large blank JPEGs, a
thin raw image at 384, an answer over the message limit) must be refused with RESOURCE_EXHAUSTED
before the memory is spent, with a message naming the limit, while another client keeps being
answered; the server's peak resident memory is sampled throughout and must stay within its
configured budget plus a margin.

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN.
"""
import io
import os
import sys
import tempfile
import threading
import time
import unittest

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import DATA, Server, grpc, pb  # noqa: E402

BUDGET_MB = 1024
# Beyond the budget: what a loaded server holds outside admitted work (weights, allocator caches,
# gRPC buffers of requests being read); measured here well below this.
MARGIN_MB = 600


def blank_jpeg(width, height):
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class RssSampler(threading.Thread):
    def __init__(self, server):
        super().__init__(daemon=True)
        self.server, self.peak, self.stop = server, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.server.rss_mb())
            time.sleep(0.02)


class BudgetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tiny = os.path.join(DATA, "tiny.safetensors")
        cls.config = tempfile.NamedTemporaryFile("w", suffix=".textproto", delete=False)
        cls.config.write(f"""
            max_memory_bytes: {BUDGET_MB << 20}
            model {{ name: "tiny" checkpoint: "{tiny}" }}
            model {{ name: "tiny384" checkpoint: "{tiny}" preprocessing {{ size: 384 }} }}
        """)
        cls.config.close()
        cls.server = Server("--config", cls.config.name)
        cls.stub = cls.server.stub

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        os.unlink(cls.config.name)

    def refused(self, call, request):
        start = time.monotonic()
        with self.assertRaises(grpc.RpcError) as e:
            call(request, timeout=120)
        return e.exception, time.monotonic() - start

    def test_costly_requests_are_refused_before_the_memory_is_spent(self):
        small = pb.ClassifyRequest(model="tiny", images=[pb.Image(encoded=blank_jpeg(64, 64))])
        baseline = self.server.rss_mb()
        sampler = RssSampler(self.server)
        sampler.start()
        # Another client, answered throughout.
        answered, failed, stop = [0], [], threading.Event()

        def other_client():
            while not stop.is_set():
                try:
                    self.stub.Classify(small, timeout=60)
                    answered[0] += 1
                except grpc.RpcError as e:
                    failed.append(e.code())

        other = threading.Thread(target=other_client)
        other.start()
        try:
            # 8 blank 4000x4000 JPEGs, KEEP_SIZE, pooled embedding (a small answer): about 2 MB
            # on the wire, 20+ GB of activations if computed.
            big = blank_jpeg(4000, 4000)
            embed = pb.EmbedRequest(model="tiny", images=[pb.Image(encoded=big)] * 8,
                                    include_embedding=True, resize=pb.KEEP_SIZE)
            e, seconds = self.refused(self.stub.Embed, embed)
            self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
            self.assertIn("max_memory_bytes", e.details())
            print(f"\n8 x 4000x4000 KEEP_SIZE Embed: refused in {seconds * 1000:.1f} ms: "
                  f"{e.details()}")

            # A 1 x 1048576 raw image at size 384: the squash's intermediate would be 1.2 GB.
            thin = pb.Image(raw=pb.RawImage(width=1048576, height=1, channels=1,
                                            pixels=bytes(1048576)))
            e, seconds = self.refused(self.stub.Classify,
                                      pb.ClassifyRequest(model="tiny384", images=[thin]))
            self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
            self.assertIn("max_memory_bytes", e.details())
            print(f"1x1048576 raw at 384: refused in {seconds * 1000:.1f} ms")

            # An answer over the 64 MiB message limit: stage 1 of a 2000x2000 image is 96 MB.
            e, seconds = self.refused(self.stub.Embed, pb.EmbedRequest(
                model="tiny", images=[pb.Image(encoded=blank_jpeg(2000, 2000))], stages=[1],
                resize=pb.KEEP_SIZE))
            self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED, e.details())
            self.assertIn("max_message_bytes", e.details())
            print(f"96 MB answer: refused in {seconds * 1000:.1f} ms")

            # The same image's pooled embedding fits the budget (about 0.8 GB): large images
            # are still computed, within it.
            ok = self.stub.Embed(pb.EmbedRequest(
                model="tiny", images=[pb.Image(encoded=blank_jpeg(2000, 2000))],
                include_embedding=True, resize=pb.KEEP_SIZE), timeout=300)
            self.assertEqual(list(ok.results[0].embedding.shape), [768])
        finally:
            stop.set()
            other.join()
            sampler.stop.set()
            sampler.join()
        print(f"RSS: {baseline:.0f} MB before, peak {sampler.peak:.0f} MB "
              f"(budget {BUDGET_MB} MB + margin {MARGIN_MB} MB); other client: {answered[0]} "
              f"answered, {len(failed)} failed")
        self.assertEqual(failed, [])
        self.assertGreater(answered[0], 0)
        if not os.environ.get("CONVNEXT_SANITIZED"):  # ASan's quarantine and shadow grow RSS.
            self.assertLess(sampler.peak, baseline + BUDGET_MB + MARGIN_MB)


if __name__ == "__main__":
    unittest.main()
