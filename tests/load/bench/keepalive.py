#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections, sends one request on each and
reads its response, then holds them all open.

    keepalive.py HOST PORT N HOLD_SECONDS [COOKIE]

Prints "open N" (flushed) once every connection has had its response, then
holds the connections for HOLD_SECONDS and exits. Standard library only.
"""
import asyncio
import sys


async def one(host, port, request, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        if length:
            await reader.readexactly(length)
        status = head.split(b" ", 2)[1]
        return reader, writer, status


async def main():
    host, port, n, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    cookie = sys.argv[5] if len(sys.argv) > 5 else ""
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n"
    if cookie:
        req += b"Cookie: " + cookie.encode() + b"\r\n"
    req += b"\r\n"
    sem = asyncio.Semaphore(100)  # open at most 100 at a time
    conns = await asyncio.gather(*(one(host, port, req, sem) for _ in range(n)))
    bad = sum(1 for c in conns if c[2] != b"200")
    print(f"open {len(conns)} non200={bad}", flush=True)
    await asyncio.sleep(hold)
    for _, w, _ in conns:
        w.close()


asyncio.run(main())
