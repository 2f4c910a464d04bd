"""Soak: 100,000 small Classify calls (digit PNGs, the default digits model) through the `convnext`
CLI's bench against a real convnext-server, with the server's resident memory sampled throughout.

Asserts that every call succeeds, that resident memory stops growing once warmed up (the second
half of the run stays within a small margin of the level reached at the end of the first
quarter), and that the server then exits 0 on SIGTERM: in the sanitizer build that exit status
includes LeakSanitizer's verdict (it fails the exit on a leak), and the RSS bound is not checked
there (ASan's quarantine of freed memory grows by design). The RSS curve is printed.

Run by ctest, which sets CONVNEXT_BIN, CONVNEXT_TESTDATA and CONVNEXT_PYGEN.
"""
import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server_e2e_test import BIN, Server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = [os.path.join(ROOT, "samples", n) for n in
          ("digit_3_heldout_23.png", "digit_7_heldout_44.png", "digit_9_heldout_73.png")]
CALLS = int(os.environ.get("CONVNEXT_SOAK_CALLS", "100000"))
# Growth allowed after warm-up. A leak of even 100 bytes per call is 10 MB over 100,000 calls.
MARGIN_MB = 8


class SoakTest(unittest.TestCase):
    def test_hundred_thousand_calls_hold_memory_flat(self):
        server = Server("--config", os.path.join(ROOT, "default_model", "server.textproto"))
        samples = []  # (seconds since start, RSS MB)
        done = threading.Event()
        start = time.monotonic()

        def sample():
            while not done.is_set():
                samples.append((time.monotonic() - start, server.rss_mb()))
                done.wait(0.25)
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            r = subprocess.run(
                [os.path.join(BIN, "convnext"), "bench", *DIGITS, "--concurrency", "8", "--requests", str(CALLS), "--json",
                 f"--target=127.0.0.1:{server.port}"],
                capture_output=True, text=True, timeout=1800)
        finally:
            done.set()
            sampler.join()
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        elapsed = samples[-1][0]
        quarter = [m for t, m in samples if t <= elapsed / 4]
        second_half = [m for t, m in samples if t >= elapsed / 2]
        deciles = [samples[min(len(samples) - 1, int(i * (len(samples) - 1) / 10))][1]
                   for i in range(11)]
        print(f"\nsoak: {out['calls']} calls in {elapsed:.0f} s, codes {out['codes']}; RSS MB at "
              f"0%, 10%, ..., 100% of the run: {', '.join(f'{m:.0f}' for m in deciles)}",
              flush=True)
        self.assertEqual(out["calls"], CALLS)
        self.assertEqual(out["codes"], {"OK": CALLS})
        if not os.environ.get("CONVNEXT_SANITIZED"):
            # Under AddressSanitizer resident memory also holds its quarantine of freed blocks
            # (up to 256 MB, by design): there the leak check is LeakSanitizer's, at exit.
            self.assertLessEqual(max(second_half), quarter[-1] + MARGIN_MB, deciles)
        self.assertEqual(server.stop(), 0, "".join(server.lines[-20:]))


if __name__ == "__main__":
    unittest.main()
