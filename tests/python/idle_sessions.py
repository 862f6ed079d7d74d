#!/usr/bin/env python3
"""Idle STOMP sessions from Python's `websockets` client, for `stompgate bench connections
--client python` and the idle-memory regression test.

    python3 tests/python/idle_sessions.py --url ws://127.0.0.1:15674/ws --count 1000

Each session: `websockets.connect(url, compression=None)` (no subprotocol), CONNECT with
heart-beat 0,0, SUBSCRIBE without receipt, then a task that reads until the socket closes (the
reproduction of issue 16). When every session is up or failed it prints ONE JSON line
    {"event":"up","sessions":N,"failed":F,"connect_s":S,"connect_us":[...],"errors":{...}}
holds the sessions until its standard input closes (or SIGTERM), closes them, prints
    {"event":"closed","dropped":D,"drop_errors":{...}}
and exits 0.
"""

import argparse
import asyncio
import json
import signal
import sys
import threading
import time

import websockets


def kind(error):
    text = f"{type(error).__name__}: {error}"
    return text[:80]


async def open_session(args, index):
    ws = await websockets.connect(args.url, compression=None, open_timeout=args.timeout)
    await ws.send(
        "CONNECT\naccept-version:1.2,1.1,1.0\n"
        f"host:{args.vhost}\nlogin:{args.login}\npasscode:{args.passcode}\n"
        "heart-beat:0,0\n\n\x00"
    )
    reply = await asyncio.wait_for(ws.recv(), args.timeout)
    if not reply.startswith("CONNECTED"):
        await ws.close()
        raise RuntimeError(reply.split("\n", 2)[:2])
    await ws.send(
        f"SUBSCRIBE\nid:s{index}\ndestination:{args.destination}\nack:auto\n\n\x00"
    )
    return ws


async def drain(ws, state):
    try:
        async for _ in ws:
            pass
    except Exception as e:  # noqa: BLE001 - any end of the socket counts as a drop
        if not state["closing"]:
            state["drop_errors"][kind(e)] = state["drop_errors"].get(kind(e), 0) + 1
            state["dropped"] += 1
        return
    if not state["closing"]:
        state["drop_errors"]["closed"] = state["drop_errors"].get("closed", 0) + 1
        state["dropped"] += 1


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--destination", default="/exchange/amq.topic/bench.idle")
    parser.add_argument("--login", default="guest")
    parser.add_argument("--passcode", default="guest")
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    state = {"closing": False, "dropped": 0, "drop_errors": {}}
    sockets, readers, times, errors = [], [], [], {}
    semaphore = asyncio.Semaphore(max(1, args.concurrency))

    async def one(index):
        async with semaphore:
            started = time.monotonic()
            try:
                ws = await open_session(args, index)
            except Exception as e:  # noqa: BLE001 - counted by kind, like the other drivers
                errors[kind(e)] = errors.get(kind(e), 0) + 1
                return
            times.append((time.monotonic() - started) * 1000)
            sockets.append(ws)
            readers.append(asyncio.create_task(drain(ws, state)))

    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(args.count)))
    connect_s = time.monotonic() - t0
    print(
        json.dumps(
            {
                "event": "up",
                "profile": "python",
                "sessions": len(sockets),
                "failed": args.count - len(sockets),
                "connect_s": round(connect_s, 3),
                "connect_us": [round(t * 1000) for t in times],
                "errors": errors,
            }
        ),
        flush=True,
    )

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def wait_for_stdin_eof():
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    # A daemon thread: a blocked read must not keep the process alive after SIGTERM.
    threading.Thread(target=wait_for_stdin_eof, daemon=True).start()
    await stop.wait()

    state["closing"] = True
    print(
        json.dumps(
            {
                "event": "closed",
                "dropped": state["dropped"],
                "drop_errors": state["drop_errors"],
            }
        ),
        flush=True,
    )
    await asyncio.wait(
        [asyncio.create_task(ws.close()) for ws in sockets] or [asyncio.sleep(0)],
        timeout=3,
    )


if __name__ == "__main__":
    asyncio.run(main())
