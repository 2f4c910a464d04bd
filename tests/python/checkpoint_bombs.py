"""Checkpoint files that claim far more memory than they take on disk, for the bomb tests of
convnext-run (tests/convnext_run_test.py) and convnext-server (tests/budget_test.py).

Each must be refused with one line naming the problem, before the memory is spent.
"""
import json
import os
import struct
import zipfile

import torch

# What the tests pass as the checkpoint cap (convnext-run --max_checkpoint_bytes, the server's
# max_checkpoint_bytes) so that the deflated bomb is over it.
CAP_BYTES = 32 << 20


def pickle_bomb():
    """0.2 MB of protocol-2 pickle: a tuple of 100,000 references to one memoized int, then
    set(tuple) 10,000 times; 8 GB of item lists if it were built."""
    p = b"\x80\x02K\x07q\x000("
    p += b"h\x00" * 100000
    p += b"tq\x010c__builtin__\nset\nq\x020"
    p += b"h\x02h\x01\x85R0" * 10000
    return p + b"N."


def write(out_dir):
    """Writes the bombs into `out_dir`; returns [(path, expected message)]."""
    bombs = []

    def path(name):
        return os.path.join(out_dir, name)

    # A stride-0 view: one stored float standing for 2^31 of them (8 GB if materialised).
    torch.save({"stem.0.weight": torch.zeros(1).expand(2 ** 31)}, path("expanded.pth"))
    bombs.append((path("expanded.pth"), "its view repeats its storage"))

    # safetensors entries sharing bytes.
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    with open(path("overlap.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + bytes(8))
    bombs.append((path("overlap.safetensors"), "tensors a and b overlap"))

    # A torch.save zip re-written with deflate: 64 MiB of zeros in 65 KB of file. Reading a
    # record allocates its declared size, so that is what counts against the cap.
    plain = path("plain.pth")
    torch.save({"stem.0.weight": torch.zeros(16 << 20)}, plain)
    with zipfile.ZipFile(plain) as src, \
            zipfile.ZipFile(path("deflated.pth"), "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    os.unlink(plain)
    bombs.append((path("deflated.pth"),
                  f"its tensors hold 67108864 bytes, more than the limit of {CAP_BYTES}"))

    # data.pkl that copies one large list over and over.
    with zipfile.ZipFile(path("pickle_bomb.pth"), "w", zipfile.ZIP_STORED) as z:
        z.writestr("bomb/data.pkl", pickle_bomb())
        z.writestr("bomb/version", "3\n")
    bombs.append((path("pickle_bomb.pth"), "bytes of memory (the unpickler's limit)"))
    return bombs


# Runs argv[1:] in a forked child and reports that child's peak RSS. The measured program must
# not be a direct child of the test: Linux counts a process's peak RSS across exec, so a child
# forked from a test that holds gigabytes would report the test's memory, not its own.
_MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, flush=True)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(args, timeout=120):
    """Runs `args`; returns (exit code, stderr text, peak RSS of that process alone in MB)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True,
                       timeout=timeout)
    return r.returncode, r.stderr, int(r.stdout.strip().splitlines()[-1]) / 1024
