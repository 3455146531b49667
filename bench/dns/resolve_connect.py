#!/usr/bin/env python3
"""Resolve, then connect at once: for each of {prefix}0..{prefix}{N-1}.example.test, ask RESOLVER for its
A record over UDP and, as soon as the answer arrives, open a TCP connection to the answered
address on PORT. Through Sluice with a `toFQDNs` egress rule, the connection is allowed only
if the answer's address reached the datapath before the answer reached the client; a SYN
the datapath drops is retransmitted after 1 s, so a connect not established within
--connect-timeout (under that second) counts as failed.
Prints one JSON object: names, resolved, unresolved (no answer, or no A record), connected,
failed, seconds, connect_p50_us/connect_p99_us (successful connects), first_failures.
Usage: resolve_connect.py RESOLVER PORT [--prefix c] [--names N] [--concurrency C]"""
import argparse
import asyncio
import json
import socket
import struct
import time


def query(name, ident):
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", 1, 1)


def skip_name(message, offset):
    while True:
        length = message[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        offset += 1 + length
        if length == 0:
            return offset


def first_address(message, ident):
    """The first A record's address in an answer to query `ident`, or None."""
    if len(message) < 12:
        return None
    answer_id, flags, questions, answers = struct.unpack(">HHHH", message[:8])
    if answer_id != ident or flags & 0xF != 0:
        return None
    offset = 12
    for _ in range(questions):
        offset = skip_name(message, offset) + 4
    for _ in range(answers):
        offset = skip_name(message, offset)
        record_type, record_class, _, length = struct.unpack(">HHIH", message[offset:offset + 10])
        offset += 10
        if record_type == 1 and record_class == 1 and length == 4:
            return socket.inet_ntoa(message[offset:offset + 4])
        offset += length
    return None


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("resolver")
    parser.add_argument("port", type=int)
    parser.add_argument("--prefix", default="c")
    parser.add_argument("--names", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--dns-timeout", type=float, default=2.0)
    parser.add_argument("--connect-timeout", type=float, default=0.5)
    args = parser.parse_args()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(args.concurrency)
    counts = {"resolved": 0, "unresolved": 0, "connected": 0, "failed": 0}
    connect_us, failures = [], []

    async def one(index):
        name = f"{args.prefix}{index}.example.test"
        ident = index & 0xFFFF
        async with gate:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.setblocking(False)
                udp.connect((args.resolver, 53))
                await loop.sock_sendall(udp, query(name, ident))
                try:
                    answer = await asyncio.wait_for(loop.sock_recv(udp, 4096), args.dns_timeout)
                except (asyncio.TimeoutError, OSError):
                    answer = b""
            address = first_address(answer, ident)
            if address is None:
                counts["unresolved"] += 1
                return
            counts["resolved"] += 1
            started = time.monotonic()
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, args.port), args.connect_timeout)
                connect_us.append((time.monotonic() - started) * 1e6)
                counts["connected"] += 1
                writer.close()
            except (asyncio.TimeoutError, OSError):
                counts["failed"] += 1
                if len(failures) < 5:
                    failures.append(f"{name} -> {address}")

    started = time.monotonic()
    await asyncio.gather(*(one(index) for index in range(args.names)))
    connect_us.sort()
    percentile = lambda q: round(connect_us[min(len(connect_us) - 1, int(q * len(connect_us)))]) if connect_us else None
    print(json.dumps({"names": args.names, **counts, "seconds": round(time.monotonic() - started, 2),
                      "connect_p50_us": percentile(0.50), "connect_p99_us": percentile(0.99),
                      "first_failures": failures}))


asyncio.run(main())
