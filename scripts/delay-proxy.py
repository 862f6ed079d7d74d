#!/usr/bin/env python3
"""TCP proxy that delays every chunk by a fixed time in each direction: a broker "far away"
(a round trip of 2 x DELAY) for benchmarks on one machine, e.g. how long sessions wait for
new pooled AMQP connections in a connect burst.

    scripts/delay-proxy.py --listen 127.0.0.1:5673 --target 127.0.0.1:5672 --delay-ms 5
"""
import argparse
import asyncio
import time


async def pump(reader, writer, delay):
    queue = asyncio.Queue()

    async def forward():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(forward())
    try:
        while data := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay, data))
    except ConnectionError:
        pass
    queue.put_nowait((0, None))
    await task


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:5673")
    parser.add_argument("--target", default="127.0.0.1:5672")
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    target_host, target_port = args.target.rsplit(":", 1)
    delay = args.delay_ms / 1000

    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(
                target_host, int(target_port)
            )
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pump(client_reader, server_writer, delay),
            pump(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    host, port = args.listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
