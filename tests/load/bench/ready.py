#!/usr/bin/env python3
"""Time from process start to the first 200 from /readyz, and the idle RSS.

    ready.py ROUNDS ADMIN_HOST:PORT -- COMMAND...

Starts COMMAND (its environment is inherited) ROUNDS times. Each time it
polls GET /readyz every 0.2 ms from just before the fork until it answers
200, then waits 1 s and reads VmRSS. Prints one CSV line per round:
round,ready_ms,idle_rss_kib
"""
import os
import signal
import socket
import subprocess
import sys
import time


def readyz(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = s.recv(64)
            return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def vm(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    rounds = int(sys.argv[1])
    host, port = sys.argv[2].rsplit(":", 1)
    port = int(port)
    cmd = sys.argv[sys.argv.index("--") + 1:]
    for r in range(1, rounds + 1):
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok = False
        while time.monotonic() - t0 < 10:
            if readyz(host, port):
                ok = True
                break
            if p.poll() is not None:
                break
            time.sleep(0.0002)
        ms = (time.monotonic() - t0) * 1000 if ok else -1
        time.sleep(1.0)
        rss = vm(p.pid, "VmRSS") if p.poll() is None else -1
        print(f"{r},{ms:.1f},{rss}", flush=True)
        p.send_signal(signal.SIGKILL)
        p.wait()
        time.sleep(0.2)


main()
