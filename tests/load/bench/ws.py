#!/usr/bin/env python3
"""WebSockets for the memory benchmark (tests/load/bench/memory.sh, WS=1).

    ws.py serve PORT
        An echo server on 127.0.0.1 and 127.0.0.2:PORT: the RFC 6455 handshake
        (Sec-WebSocket-Accept), then every frame back, unmasked.
    ws.py hold PORT N COOKIE SECONDS
        Opens N WebSockets to 127.0.0.1:PORT with that Cookie header, each with
        a real handshake (the accept value checked) and one echo (a masked text
        frame, its echo checked). Prints "open N" once all are open, holds them
        SECONDS, closes them, and prints "ok OK failed FAILED" (exit 1 if any
        failed).
"""
import asyncio
import base64
import hashlib
import os
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_of(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


async def read_frame(reader: asyncio.StreamReader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else None
    data = await reader.readexactly(n)
    if mask:
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
    return b0 & 0x0F, data


def frame(opcode: int, data: bytes, masked: bool) -> bytes:
    head = bytes([0x80 | opcode])
    n = len(data)
    length = bytes([n]) if n < 126 else bytes([126]) + struct.pack("!H", n)
    if not masked:
        return head + length + data
    mask = os.urandom(4)
    length = bytes([length[0] | 0x80]) + length[1:]
    return head + length + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data))


async def echo(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_of(key) + b"\r\n\r\n"
        )
        while True:
            op, data = await read_frame(reader)
            if op == 8:
                writer.write(frame(8, data, False))
                break
            writer.write(frame(op, data, False))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
        pass
    finally:
        writer.close()


async def serve(port: int):
    servers = [await asyncio.start_server(echo, host, port, backlog=4096) for host in ("127.0.0.1", "127.0.0.2")]
    print("serving", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def one(port: int, cookie: str, i: int, opened: list, release: asyncio.Event, gate: asyncio.Semaphore):
    async with gate:  # at most this many handshakes at once
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await handshake(reader, writer, cookie, i)
    opened.append(i)
    try:
        await release.wait()
        writer.write(frame(8, b"", True))
        await writer.drain()
        return True
    finally:
        writer.close()


async def handshake(reader, writer, cookie: str, i: int):
    try:
        key = base64.b64encode(os.urandom(16))
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
            + (b"Cookie: " + cookie.encode() + b"\r\n" if cookie else b"")
            + b"\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101") or accept_of(key) not in head:
            raise RuntimeError(f"no 101 with the accept value: {head[:200]!r}")
        msg = f"hello {i}".encode()
        writer.write(frame(1, msg, True))
        op, data = await read_frame(reader)
        if (op, data) != (1, msg):
            raise RuntimeError(f"echo {op} {data!r}")
    except BaseException:
        writer.close()
        raise


async def hold(port: int, n: int, cookie: str, seconds: float):
    opened: list = []
    release = asyncio.Event()
    gate = asyncio.Semaphore(200)
    tasks = [asyncio.ensure_future(one(port, cookie, i, opened, release, gate)) for i in range(n)]
    while len(opened) < n and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    print(f"open {len(opened)}", flush=True)
    await asyncio.sleep(seconds)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    ok = sum(1 for r in results if r is True)
    errors = [r for r in results if r is not True]
    print(f"ok {ok} failed {len(errors)}" + (f" first: {errors[0]!r}" if errors else ""), flush=True)
    return 0 if ok == n else 1


def main():
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    elif sys.argv[1] == "hold":
        sys.exit(asyncio.run(hold(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
