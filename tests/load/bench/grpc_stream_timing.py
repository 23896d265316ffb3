"""One long server stream through TARGET, with a real gRPC client (grpcio).

    grpc_stream_timing.py TARGET COOKIE COUNT INTERVAL_MS

Calls bench.Echo/Stream (grpcapp) for COUNT messages INTERVAL_MS apart and
prints one JSON line: the status, the messages received, when the first
came (ms after the call), and the largest lag of a message behind the app's
schedule (its arrival minus the first's, minus i × INTERVAL_MS). A proxy that
passes the stream through shows lags of a few ms; one that buffers it shows
the whole stream's length.
"""

import json
import sys
import time

import grpc


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def main():
    target, cookie, count, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    msg = b"\x0a\x05hello" + b"\x10" + varint(count) + b"\x18" + varint(interval)
    metadata = [("cookie", cookie)] if cookie else []
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_stream("/bench.Echo/Stream")
        t0 = time.monotonic()
        arrivals = []
        status = "OK"
        try:
            for _ in call(msg, metadata=metadata, timeout=count * interval / 1000 + 20):
                arrivals.append(time.monotonic())
        except grpc.RpcError as e:
            status = e.code().name
    first = (arrivals[0] - t0) * 1000 if arrivals else None
    lag = max(((a - arrivals[0]) * 1000 - i * interval for i, a in enumerate(arrivals)), default=None)
    print(json.dumps({"status": status, "messages": len(arrivals), "first_ms": first, "max_lag_ms": lag}))


if __name__ == "__main__":
    main()
