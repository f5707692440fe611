#!/usr/bin/env python3
"""SPDK's bdevperf on a thin lvol, for the thin-volume rows of our benches.

bdevperf cannot make an lvol from its JSON config (lvstores are found by
examine, not created at startup), so it starts waiting (-z), and the lvol
is made over its RPC socket: a RAM disk, an lvstore, a thin lvol. A
sequential 1 MiB write pass allocates every cluster, then the timed 4 KiB
random-write run overwrites; prints its IOPS.

    bench/bdevperf-lvol.py BDEVPERF SECONDS [LVOL_MIB]
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def call(sock, method, params):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                              "params": params}).encode())
        buf = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit(f"{method}: bdevperf closed the socket")
            buf += chunk
            try:
                reply = json.loads(buf)
                break
            except ValueError:
                continue
    if "error" in reply:
        raise SystemExit(f"{method}: {reply['error']}")
    return reply["result"]


def main():
    bdevperf, secs = sys.argv[1], int(sys.argv[2])
    mib = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    with tempfile.TemporaryDirectory() as tmp:
        sock = os.path.join(tmp, "bdevperf.sock")
        p = subprocess.Popen(
            [bdevperf, "--no-huge", "-s", "2048", "-m", "0x1", "-r", sock, "-z",
             "-T", "lvs0/lvol0", "-q", "32", "-o", "4096", "-w", "randwrite",
             "-t", str(secs)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    call(sock, "spdk_get_version", None)
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    if time.monotonic() > deadline or p.poll() is not None:
                        raise SystemExit("bdevperf did not start")
                    time.sleep(0.05)
            # The RAM disk holds the lvol whole, with room for the lvstore.
            blocks = (mib + mib // 2) * 256
            call(sock, "bdev_malloc_create",
                 {"name": "Malloc0", "num_blocks": blocks, "block_size": 4096})
            call(sock, "bdev_lvol_create_lvstore",
                 {"bdev_name": "Malloc0", "lvs_name": "lvs0"})
            call(sock, "bdev_lvol_create",
                 {"lvs_name": "lvs0", "lvol_name": "lvol0", "size_in_mib": mib,
                  "thin_provision": True})
            call(sock, "perform_tests",
                 {"workload_type": "write", "io_size": "1048576", "time_in_sec": 2})
            r = call(sock, "perform_tests",
                     {"workload_type": "randwrite", "io_size": "4096",
                      "time_in_sec": secs})
            print(round(sum(j["iops"] for j in r["results"])))
        finally:
            p.terminate()
            p.wait()


if __name__ == "__main__":
    main()
