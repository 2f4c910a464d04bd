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
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "python"))
import checkpoint_bombs  # noqa: E402
from server_e2e_test import BIN, DATA, Server, grpc, pb  # noqa: E402

BUDGET_MB = 1024
# Beyond the budget: what a loaded server holds outside admitted work (weights, allocator caches,
# gRPC buffers of requests being read); measured here well below this.
MARGIN_MB = 600
# gRPC's resource quota for the transport (buffers of requests still being read).
TRANSPORT_MB = 256


def tiff_with_duplicated_width():
    """A little-endian TIFF whose IFD names ImageWidth twice: 16 and then 100000. libtiff keeps
    the first, a reader that kept the last would check the wrong size; it is refused outright."""
    tags = [(256, 3, 1, 16), (256, 4, 1, 100000), (257, 3, 1, 16), (258, 3, 1, 8),
            (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 12 * 9 + 4),
            (277, 3, 1, 1), (279, 4, 1, 256)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, count, value in tags:
        ifd += struct.pack("<HHI", tag, kind, count) + (
            struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(256)


# Formats OpenCV decodes but the API does not accept: each header claims 30000 x 30000.
UNREAD_FORMATS = {
    "Sun raster": struct.pack(">8I", 0x59a66a95, 30000, 30000, 24, 0, 1, 0, 0),
    "PFM": b"PF\n30000 30000\n-1.0\n",
    "PAM": b"P7\nWIDTH 30000\nHEIGHT 30000\nDEPTH 3\nMAXVAL 255\nTUPLTYPE RGB\nENDHDR\n",
    "Radiance HDR": b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 30000 +X 30000\n",
    "JPEG 2000": b"\x00\x00\x00\x0cjP  \r\n\x87\n" + bytes(64),
    "DICOM": bytes(128) + b"DICM" + bytes(64),
}


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


class Watch:
    """While open: the server's resident memory is sampled and another client calls Classify
    throughout; check() then asserts that it was always answered and that the peak stayed within
    the budget plus the margin."""

    def __init__(self, test):
        self.test, self.server = test, test.server

    def __enter__(self):
        small = pb.ClassifyRequest(model="tiny", images=[pb.Image(encoded=blank_jpeg(64, 64))])
        self.baseline = self.server.rss_mb()
        self.sampler = RssSampler(self.server)
        self.sampler.start()
        self.answered, self.failed, self.stop = 0, [], threading.Event()

        def other_client():
            while not self.stop.is_set():
                try:
                    self.test.stub.Classify(small, timeout=60)
                    self.answered += 1
                except grpc.RpcError as e:
                    self.failed.append(e.code())

        self.other = threading.Thread(target=other_client)
        self.other.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.other.join()
        self.sampler.stop.set()
        self.sampler.join()
        return False

    def check(self):
        print(f"RSS: {self.baseline:.0f} MB before, peak {self.sampler.peak:.0f} MB (budget "
              f"{BUDGET_MB} MB + margin {MARGIN_MB} MB); other client: {self.answered} "
              f"answered, {len(self.failed)} failed")
        self.test.assertEqual(self.failed, [])
        self.test.assertGreater(self.answered, 0)
        if not os.environ.get("CONVNEXT_SANITIZED"):  # ASan's quarantine and shadow grow RSS.
            self.test.assertLess(self.sampler.peak, self.baseline + BUDGET_MB + MARGIN_MB)


class BudgetTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        tiny = os.path.join(DATA, "tiny.safetensors")
        cls.config = tempfile.NamedTemporaryFile("w", suffix=".textproto", delete=False)
        cls.config.write(f"""
            max_memory_bytes: {BUDGET_MB << 20}
            transport_memory_bytes: {TRANSPORT_MB << 20}
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
        with Watch(self) as watch:
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
        watch.check()

    def test_hostile_files_and_clients(self):
        """Unread formats, TIFF tag tricks, concurrent large messages and a slow metrics client,
        while another client is answered and the server's RSS is sampled."""
        stop = threading.Event()
        # A metrics client that sends one byte of its request every second: it must not hold the
        # endpoint (every connection has an absolute deadline, several are served at once).
        slow = socket.create_connection(("127.0.0.1", self.server.metrics_port), timeout=30)
        slow_stop = threading.Event()

        def trickle():
            try:
                for byte in b"GET /metrics HTTP/1.1\r\n":
                    if slow_stop.wait(1.0):
                        return
                    slow.sendall(bytes([byte]))
            except OSError:
                pass  # The server closed it: what its deadline is for.

        trickler = threading.Thread(target=trickle)
        trickler.start()
        # Meanwhile the metrics endpoint answers, slow client or not.
        metrics_seconds, metrics_errors = [], []

        def scrape():
            while not stop.is_set():
                t = time.monotonic()
                try:
                    page = urllib.request.urlopen(
                        f"http://127.0.0.1:{self.server.metrics_port}/metrics",
                        timeout=10).read().decode()
                    if "convnext_requests_total" not in page:
                        metrics_errors.append("no convnext_requests_total")
                except OSError as e:
                    metrics_errors.append(str(e))
                metrics_seconds.append(time.monotonic() - t)
                time.sleep(0.2)

        scraper = threading.Thread(target=scrape)
        scraper.start()
        with Watch(self) as watch:
            try:
                for name, data in UNREAD_FORMATS.items():
                    e, _ = self.refused(self.stub.Classify,
                                        pb.ClassifyRequest(model="tiny",
                                                           images=[pb.Image(encoded=data)]))
                    self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT, name)
                    self.assertIn("accepted: JPEG, PNG, WebP, BMP, TIFF, PNM", e.details(), name)
                e, _ = self.refused(self.stub.Classify, pb.ClassifyRequest(
                    model="tiny", images=[pb.Image(encoded=tiff_with_duplicated_width())]))
                self.assertEqual(e.code(), grpc.StatusCode.INVALID_ARGUMENT)
                self.assertIn("tag 256 appears twice", e.details())

                # Sixteen 48 MB requests at once (768 MB on the wire, three times the transport
                # quota): each is read, refused as undecodable, and its buffers are freed.
                junk = b"\xff\xd8\xff" + bytes(48 << 20)
                big = pb.ClassifyRequest(model="tiny", images=[pb.Image(encoded=junk)])
                start = time.monotonic()
                futures = [self.stub.Classify.future(big, timeout=300) for _ in range(16)]
                for f in futures:
                    f.exception()  # Waits for it.
                codes = {}
                for f in futures:
                    code = f.exception().code() if f.exception() else grpc.StatusCode.OK
                    codes[code.name] = codes.get(code.name, 0) + 1
                print(f"\n16 x 48 MB concurrent requests: {codes} in {time.monotonic() - start:.1f} s")
                # Undecodable images are INVALID_ARGUMENT; the transport may refuse what its quota
                # cannot hold (RESOURCE_EXHAUSTED) but never loses or crashes.
                self.assertLessEqual(set(codes), {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"})
                self.assertGreater(codes.get("INVALID_ARGUMENT", 0), 0)
            finally:
                slow_stop.set()
                trickler.join()
                slow.close()
                stop.set()
                scraper.join()
        print(f"/metrics answered {len(metrics_seconds)} times beside the slow client, slowest "
              f"{max(metrics_seconds, default=0) * 1000:.0f} ms")
        self.assertEqual(metrics_errors, [])
        self.assertGreater(len(metrics_seconds), 0)
        self.assertLess(max(metrics_seconds), 5)
        watch.check()
        self.assertEqual(self.server.health(), "SERVING")


class CheckpointBombTest(unittest.TestCase):
    def test_server_refuses_checkpoint_bombs_at_start_with_one_line(self):
        with tempfile.TemporaryDirectory() as tmp:
            for path, message in checkpoint_bombs.write(tmp):
                with self.subTest(os.path.basename(path)):
                    config = os.path.join(tmp, "bomb.textproto")
                    with open(config, "w") as f:
                        f.write(f'model {{ name: "bomb" checkpoint: "{path}" '
                                f'max_checkpoint_bytes: {checkpoint_bombs.CAP_BYTES} }}')
                    code, stderr, peak_mb = checkpoint_bombs.run_measured(
                        [os.path.join(BIN, "convnext-server"), "--port", "0", "--config", config])
                    print(f"\n{os.path.basename(path)}: exit {code}, peak RSS {peak_mb:.0f} MB")
                    self.assertEqual(code, 1, stderr)
                    lines = [line for line in stderr.splitlines() if message in line]
                    self.assertEqual(len(lines), 1, stderr)
                    self.assertIn("model 'bomb'", lines[0])
                    self.assertLess(peak_mb, 1024)

if __name__ == "__main__":
    unittest.main()
