"""The deployment files agree with the server (the image itself is built and run by
scripts/container_test.sh; no Kubernetes cluster runs on our machines). Every YAML parses; every flag the Dockerfile,
compose file and manifests pass exists in the binaries; ports and paths agree with the server's
defaults and with each other; the metric the autoscaler uses is exported; and the runtime
packages the image installs cover every library the binaries link.
"""
import os
import re
import subprocess
import sys
import unittest

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import BIN, Server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def helpfull(binary):
    r = subprocess.run([os.path.join(BIN, binary), "--helpfull"], capture_output=True, text=True,
                       timeout=60)
    return r.stdout + r.stderr


def flag_names(args):
    return {m.group(1) for a in args for m in [re.match(r"--([a-z_]+)(=|$)", a)] if m}


class DeployTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server_help = helpfull("convnext-server")
        cls.cli_help = helpfull("convnext")
        cls.dockerfile = read("Dockerfile")
        cls.yaml_docs = {}
        for dirpath, _, files in os.walk(DEPLOY):
            for name in files:
                if name.endswith((".yml", ".yaml")):
                    path = os.path.join(dirpath, name)
                    with open(path) as f:
                        cls.yaml_docs[os.path.relpath(path, ROOT)] = list(yaml.safe_load_all(f))

    def assert_server_flags(self, args, where):
        for flag in flag_names(args):
            self.assertIn(f"-{flag} ", self.server_help, f"{where}: --{flag} unknown to the server")

    def default_of(self, flag):
        match = re.search(rf"-{flag} \(.*?\); default: (-?\d+);", self.server_help, re.S)
        self.assertIsNotNone(match, flag)
        return int(match.group(1))

    def test_every_yaml_parses(self):
        expected = {"deploy/prometheus.yml", "deploy/prometheus-rules.yml",
                    "deploy/prometheus-compose.yml", "deploy/docker-compose.yml",
                    "deploy/k8s/deployment.yaml", "deploy/k8s/deployment-gpu.yaml",
                    "deploy/k8s/services.yaml", "deploy/k8s/hpa.yaml", "deploy/k8s/podmonitor.yaml",
                    "deploy/grafana/datasource.yml", "deploy/grafana/dashboards.yml",
                    "deploy/kserve/servingruntime.yaml", "deploy/kserve/inferenceservice.yaml"}
        self.assertTrue(expected <= set(self.yaml_docs), set(self.yaml_docs))
        for path, docs in self.yaml_docs.items():
            self.assertTrue(docs and all(d is not None for d in docs), path)

    def test_dockerfile_ports_flags_paths_and_user(self):
        entry = re.search(r'^ENTRYPOINT (\[.*\])', self.dockerfile, re.M).group(1)
        entry = yaml.safe_load(entry)
        self.assertEqual(entry[0], "convnext-server")
        self.assert_server_flags(entry[1:], "Dockerfile ENTRYPOINT")
        self.assertIn("--port=50051", entry)
        self.assertIn("--metrics_port=9090", entry)
        self.assertIn("--http_port=8000", entry)
        self.assertEqual(self.default_of("http_port"), 8000)
        self.assertEqual(self.default_of("port"), 50051)
        self.assertEqual(self.default_of("metrics_port"), 9090)
        self.assertEqual(re.search(r"^EXPOSE (.*)$", self.dockerfile, re.M).group(1).split(),
                         ["50051", "8000", "9090"])
        health = yaml.safe_load(re.search(r"CMD (\[.*\])\s*$",
                                          self.dockerfile.split("HEALTHCHECK", 1)[1], re.M).group(1))
        self.assertEqual(health[:2], ["convnext", "health"])
        for flag in flag_names(health[2:]):
            self.assertIn(f"-{flag} ", self.cli_help, f"HEALTHCHECK: --{flag}")
        self.assertIn("--target=127.0.0.1:50051", health)
        self.assertRegex(self.dockerfile, r"\nUSER 10001\n")
        # The default model goes where the server looks for it: ../share next to the binary.
        self.assertIn("/usr/local/bin/", self.dockerfile)
        self.assertIn("/usr/local/share/convnext-serve/default_model/", self.dockerfile)
        self.assertIn('"../share/convnext-serve/default_model/server.textproto"',
                      read("server/server_main.cc"))
        for copied in re.findall(r"default_model/[\w.]+", self.dockerfile):
            self.assertTrue(os.path.exists(os.path.join(ROOT, copied)), copied)
        self.assertIn("mkdir -p /models", self.dockerfile)

    def test_compose_and_kubernetes_agree_with_the_server(self):
        compose = self.yaml_docs["deploy/docker-compose.yml"][0]["services"]
        self.assert_server_flags(compose["convnext-serve"]["command"], "docker-compose")
        self.assertEqual(compose["convnext-serve"]["ports"],
                         ["50051:50051", "8000:8000", "9090:9090"])
        targets = self.yaml_docs["deploy/prometheus-compose.yml"][0]["scrape_configs"][0]
        self.assertEqual(targets["static_configs"][0]["targets"], ["convnext-serve:9090"])
        for path in ("deploy/k8s/deployment.yaml", "deploy/k8s/deployment-gpu.yaml"):
            spec = self.yaml_docs[path][0]["spec"]["template"]["spec"]
            self.assertEqual(spec["securityContext"]["runAsUser"], 10001)
            c = spec["containers"][0]
            self.assert_server_flags(c["args"], path)
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            self.assertEqual(ports, {"grpc": 50051, "http": 8000, "metrics": 9090})
            for probe in ("readinessProbe", "livenessProbe"):
                self.assertEqual(c[probe]["grpc"]["port"], 50051, f"{path} {probe}")
            self.assertEqual(c["volumeMounts"][0]["mountPath"], "/models")
            grace = int(re.search(r"--grace_period_s=(\d+)", " ".join(c["args"])).group(1))
            self.assertLess(grace, spec["terminationGracePeriodSeconds"])
        services = self.yaml_docs["deploy/k8s/services.yaml"]
        self.assertEqual(services[0]["spec"]["clusterIP"], "None")
        monitor = self.yaml_docs["deploy/k8s/podmonitor.yaml"][0]
        self.assertEqual(monitor["spec"]["podMetricsEndpoints"][0]["path"], "/metrics")

    def test_cuda_image_agrees_with_the_cpu_image_and_the_gpu_manifest(self):
        cuda = read("Dockerfile.cuda")
        # What a user and an orchestrator see is the CPU image's: entry point, ports, health
        # check, user, default model.
        for pattern in (r"^ENTRYPOINT .*$", r"^EXPOSE .*$", r"^USER .*$",
                        r"^  CMD \[.*\]$", r"^COPY default_model/.*$"):
            self.assertEqual(re.findall(pattern, cuda, re.M),
                             re.findall(pattern, self.dockerfile, re.M), pattern)
        self.assertIn("mkdir -p /models", cuda)
        # Its stages use the install modes and the build script that exist.
        script = read("scripts/install-deps.sh")
        for mode in re.findall(r"install-deps\.sh (--[\w-]+)", cuda):
            self.assertIn(f'"${{1:-}}" == "{mode}"', script, mode)
        self.assertIn("scripts/cuda-build.sh", cuda)
        self.assertTrue(os.path.exists(os.path.join(ROOT, "scripts/cuda-build.sh")))
        # The wheel's libraries are copied from the build stage's Python (Debian's python3).
        python = f"python{sys.version_info.major}.{sys.version_info.minor}"
        for path in re.findall(r"/opt/torch/lib/(python[\d.]+)/", cuda):
            self.assertEqual(path, python)
        # The manifest runs this image with the GPU config, which exists.
        tag = re.search(r"docker build -f Dockerfile.cuda -t (\S+) \.", cuda).group(1)
        spec = self.yaml_docs["deploy/k8s/deployment-gpu.yaml"][0]["spec"]["template"]["spec"]
        c = spec["containers"][0]
        self.assertEqual(c["image"], tag)
        self.assertEqual(c["resources"]["limits"]["nvidia.com/gpu"], 1)
        self.assertIn("--config=/models/server-gpu.textproto", c["args"])
        self.assertIn("--config=/models/server-gpu.textproto", cuda)

    @unittest.skipIf(os.environ.get("CONVNEXT_TEST_DEVICE", "cpu").startswith("cuda"),
                     "a CUDA device is there: the config would serve")
    def test_gpu_config_is_valid_and_asks_for_cuda(self):
        """deploy/server-gpu.textproto passes the server's config checks and loads its checkpoint;
        here the model then stops at the device, with the reason (no CUDA in this build, or no
        GPU)."""
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            config = os.path.join(tmp, "server-gpu.textproto")
            with open(config, "w") as f:
                f.write(read("deploy/server-gpu.textproto"))
            checkpoint = re.search(r'checkpoint: "([^"]+)"', read("deploy/server-gpu.textproto"))
            os.symlink(os.path.join(ROOT, "default_model/convnext_digits.safetensors"),
                       os.path.join(tmp, checkpoint.group(1)))
            r = subprocess.run([os.path.join(BIN, "convnext-server"), "--port", "0",
                                "--metrics_port", "0", "--http_port", "0", "--config", config],
                               capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("model 'convnext_tiny' version 1: ", r.stderr)
        self.assertRegex(r.stderr, r"device 'cuda': (this build has no CUDA|no CUDA device is "
                         r"visible)")

    def test_kserve_runtime_agrees_with_the_server_and_serves_a_mounted_folder(self):
        runtime = self.yaml_docs["deploy/kserve/servingruntime.yaml"][0]
        service = self.yaml_docs["deploy/kserve/inferenceservice.yaml"][0]
        self.assertEqual(service["spec"]["predictor"]["model"]["runtime"],
                         runtime["metadata"]["name"])
        formats = [f["name"] for f in runtime["spec"]["supportedModelFormats"]]
        self.assertIn(service["spec"]["predictor"]["model"]["modelFormat"]["name"], formats)
        self.assertEqual(service["spec"]["predictor"]["model"]["protocolVersion"], "v2")
        c = runtime["spec"]["containers"][0]
        self.assertEqual(c["name"], "kserve-container")
        self.assert_server_flags(c["args"], "ServingRuntime")
        args = dict(a[2:].split("=", 1) for a in c["args"])
        self.assertEqual(args["model"], "{{.Name}}=/mnt/models")
        self.assertEqual([p["containerPort"] for p in c["ports"]], [int(args["http_port"])])
        probe = c["readinessProbe"]["httpGet"]
        self.assertEqual((probe["path"], probe["port"]),
                         ("/v2/health/ready", int(args["http_port"])))
        # As KServe would run it: the storage folder mounted, the model named after the service.
        import shutil
        import tempfile
        import urllib.request
        with tempfile.TemporaryDirectory() as mnt:
            shutil.copy(os.path.join(ROOT, "default_model", "convnext_digits.safetensors"), mnt)
            name = service["metadata"]["name"]
            server = Server("--model", args["model"].replace("{{.Name}}", name).replace(
                "/mnt/models", mnt))
            try:
                base = f"http://127.0.0.1:{server.http_port}"
                self.assertEqual(urllib.request.urlopen(base + probe["path"], timeout=10).status,
                                 200)
                meta = urllib.request.urlopen(f"{base}/v2/models/{name}", timeout=10).read()
                self.assertIn(b'"probabilities"', meta)
            finally:
                self.assertEqual(server.stop(), 0)

    def test_autoscaler_metric_is_exported(self):
        hpa = self.yaml_docs["deploy/k8s/hpa.yaml"][0]
        names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        server = Server()
        try:
            exported = {name for name, _ in server.metrics()}
        finally:
            server.stop()
        for name in names:
            self.assertIn(name, exported)

    def test_runtime_packages_cover_every_linked_library(self):
        script = read("scripts/install-deps.sh")
        block = script[script.index("runtime_pkgs=("):]
        block = block[:block.index("\n)\n")]
        runtime = set(re.sub(r"#.*", "", block.split("(", 1)[1]).split())
        # A LibTorch other than Debian's (a LibTorch 2.x build: README, GPU) travels with its own
        # image (Dockerfile.cuda): its libraries and theirs are not the runtime packages' to give.
        debian_libtorch = os.environ.get("CONVNEXT_DEBIAN_LIBTORCH", "1") == "1"
        needed = set()
        for binary in ("convnext-server", "convnext"):
            out = subprocess.run(["readelf", "-d", os.path.join(BIN, binary)], capture_output=True,
                                 text=True, check=True).stdout
            resolved = dict(re.findall(r"^\s*(\S+) => (\S+)", subprocess.run(
                ["ldd", os.path.join(BIN, binary)], capture_output=True, text=True,
                check=True).stdout, re.M))
            for lib in re.findall(r"\(NEEDED\).*\[(.+)\]", out):
                # Not Debian's LibTorch: what resolves into its tree (LibTorch, the CUDA
                # libraries beside it) comes with it.
                if not debian_libtorch and not re.match(r"/(usr/)?lib/",
                                                        resolved.get(lib, "/usr/lib/")):
                    continue
                owner = subprocess.run(["dpkg", "-S", f"*/{lib}"], capture_output=True,
                                       text=True).stdout.split(":")[0]
                needed.add(owner)
        base = {"libc6", "libgcc-s1", "libstdc++6", "libc6-i386"}  # In every Debian image.
        self.assertEqual(sorted(needed - base - runtime), [])


if __name__ == "__main__":
    unittest.main()
