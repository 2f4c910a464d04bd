"""TLS and mutual TLS end to end: certificates made with the openssl CLI; convnext-server with
--tls_cert/--tls_key (and --tls_client_ca); Debian's python3-grpcio and the C++ client (through
the `convnext` CLI) as clients, over loopback.
"""
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import BIN, Server, grpc, pb, pb_grpc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGIT = os.path.join(ROOT, "samples", "digit_3_heldout_23.png")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d):
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a
    self-signed (untrusted) client certificate."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    with open(os.path.join(d, "san.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                f"{name}.key", "-out", f"{name}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem",
                cwd=d)
    # A client certificate that no trusted CA signed.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rogue",
            "-keyout", "rogue.key", "-out", "rogue.pem", cwd=d)


def read(d, name):
    with open(os.path.join(d, name), "rb") as f:
        return f.read()


class TlsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp()
        make_certificates(cls.dir)
        with open(DIGIT, "rb") as f:
            cls.request = pb.ClassifyRequest(images=[pb.Image(encoded=f.read())], top_k=1)

    def classify(self, port, credentials=None):
        target = f"localhost:{port}"
        channel = (grpc.secure_channel(target, credentials) if credentials
                   else grpc.insecure_channel(target))
        with channel:
            return pb_grpc.ImageModelServiceStub(channel).Classify(self.request, timeout=20)

    def cli_health(self, port, *tls):
        return subprocess.run([os.path.join(BIN, "convnext"), "health", f"--target=localhost:{port}",
                               "--retries=0", "--timeout_s=10", *tls], capture_output=True,
                              text=True, timeout=60)

    def test_tls(self):
        p = lambda n: os.path.join(self.dir, n)
        server = Server("--tls_cert", p("server.pem"), "--tls_key", p("server.key"))
        try:
            creds = grpc.ssl_channel_credentials(root_certificates=read(self.dir, "ca.pem"))
            reply = self.classify(server.port, creds)
            self.assertEqual(reply.results[0].classes[0].label, "digit 3")
            with self.assertRaises(grpc.RpcError) as plain:
                self.classify(server.port)  # Plaintext to a TLS server.
            self.assertEqual(plain.exception.code(), grpc.StatusCode.UNAVAILABLE)
            r = self.cli_health(server.port, f"--tls_ca={p('ca.pem')}")
            self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)
            self.assertNotEqual(self.cli_health(server.port).returncode, 0)
            # The Open Inference Protocol's HTTP endpoint is HTTPS with the same certificate.
            import ssl
            import urllib.request
            context = ssl.create_default_context(cafile=p("ca.pem"))
            url = f"https://127.0.0.1:{server.http_port}/v2/health/ready"
            self.assertEqual(urllib.request.urlopen(url, context=context, timeout=10).status, 200)
            import http.client
            with self.assertRaises((OSError, http.client.HTTPException)):  # Plain HTTP to it.
                urllib.request.urlopen(url.replace("https", "http"), timeout=10)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_mutual_tls(self):
        p = lambda n: os.path.join(self.dir, n)
        server = Server("--tls_cert", p("server.pem"), "--tls_key", p("server.key"),
                        "--tls_client_ca", p("ca.pem"))
        try:
            with_cert = grpc.ssl_channel_credentials(
                root_certificates=read(self.dir, "ca.pem"),
                private_key=read(self.dir, "client.key"),
                certificate_chain=read(self.dir, "client.pem"))
            self.assertEqual(self.classify(server.port, with_cert).results[0].classes[0].index, 3)
            without = grpc.ssl_channel_credentials(root_certificates=read(self.dir, "ca.pem"))
            with self.assertRaises(grpc.RpcError) as refused:
                self.classify(server.port, without)
            self.assertEqual(refused.exception.code(), grpc.StatusCode.UNAVAILABLE)
            r = self.cli_health(server.port, f"--tls_ca={p('ca.pem')}",
                                f"--tls_cert={p('client.pem')}", f"--tls_key={p('client.key')}")
            self.assertEqual((r.returncode, r.stdout.strip()), (0, "SERVING"), r.stderr)
            self.assertNotEqual(self.cli_health(server.port, f"--tls_ca={p('ca.pem')}").returncode, 0)
            # The HTTP endpoint asks for the same client certificates: 403 without one.
            import ssl
            import urllib.error
            import urllib.request
            url = f"https://127.0.0.1:{server.http_port}/v2/health/ready"
            with_cert = ssl.create_default_context(cafile=p("ca.pem"))
            with_cert.load_cert_chain(p("client.pem"), p("client.key"))
            self.assertEqual(urllib.request.urlopen(url, context=with_cert, timeout=10).status, 200)
            without = ssl.create_default_context(cafile=p("ca.pem"))
            with self.assertRaises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, context=without, timeout=10)
            self.assertEqual(refused.exception.code, 403)
            self.assertIn(b"client certificate", refused.exception.read())
            # A certificate from another CA does not do either.
            other = ssl.create_default_context(cafile=p("ca.pem"))
            other.load_cert_chain(p("rogue.pem"), p("rogue.key"))
            with self.assertRaises(urllib.error.HTTPError) as rogue:
                urllib.request.urlopen(url, context=other, timeout=10)
            self.assertEqual(rogue.exception.code, 403)
        finally:
            self.assertEqual(server.stop(), 0)

    def test_bad_tls_flags_are_startup_errors(self):
        r = subprocess.run([os.path.join(BIN, "convnext-server"), "--port=0", "--metrics_port=-1",
                            "--http_port=-1", f"--tls_cert={os.path.join(self.dir, 'server.pem')}"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("needs both --tls_cert and --tls_key", r.stderr)
        r = subprocess.run([os.path.join(BIN, "convnext-server"), "--port=0", "--metrics_port=-1",
                            "--http_port=-1", "--tls_cert=/nonexistent.pem",
                            "--tls_key=/nonexistent.key"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1)
        self.assertIn("--tls_cert '/nonexistent.pem' cannot be read", r.stderr)


if __name__ == "__main__":
    unittest.main()
