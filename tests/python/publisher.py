#!/usr/bin/env python3
"""Backend of the founding tutorial: publish a text body to a topic exchange with pika.

    publisher.py --amqp-url URL --exchange rabbitmq --routing-key zjj --body TEXT
                 [--interval 0.2] [--count N] [--exit-with-parent]

Uses the exchange as it is when it exists (the tutorial's send.py and `stompgate demo` declare
it non-durable, the operator tests durable), else declares it (EXCHANGE_TYPE, durable); then
publishes BODY every INTERVAL seconds until killed (SIGTERM/SIGINT: clean exit 0) or COUNT
messages were sent.
`{n}` in BODY is replaced by the message counter (1, 2, ...).
Prints one JSON line per publish, flushed:
    {"event":"published","n":1,"t":1700000000123.456,"body":"..."}   (t = epoch ms just before basic_publish)
Errors go to stderr with exit code 2 (connection/declare) or 3 (publish).
"""
import argparse
import json
import os
import signal
import sys
import time

try:
    import pika
    import pika.exceptions
except ImportError as e:  # pragma: no cover
    sys.stderr.write(f"publisher.py: cannot import pika ({e}); run scripts/ensure-test-deps.sh\n")
    sys.exit(2)


class Stop(Exception):
    pass


def _stop(signum, _frame):
    raise Stop(signum)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2f")
    ap.add_argument("--exchange", default="rabbitmq")
    ap.add_argument("--exchange-type", default="topic")
    ap.add_argument("--routing-key", default="zjj")
    ap.add_argument("--body", required=True, help="message body; '{n}' is replaced by the counter")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between publishes (default 0.2)")
    ap.add_argument("--count", type=int, default=0, help="stop after N messages (default 0: until killed)")
    ap.add_argument("--content-type", default="text/plain")
    ap.add_argument("--exit-with-parent", action="store_true",
                    help="exit when the parent process dies (used by test runners)")
    args = ap.parse_args()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parent = os.getppid()

    conn = None
    try:
        try:
            params = pika.URLParameters(args.amqp_url)
            params.connection_attempts = 3
            params.retry_delay = 0.5
            params.socket_timeout = 5
            conn = pika.BlockingConnection(params)
            ch = conn.channel()
            try:
                ch.exchange_declare(exchange=args.exchange, passive=True)
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code != 404:
                    raise
                # The failed passive declare closed that channel.
                ch = conn.channel()
                ch.exchange_declare(exchange=args.exchange, exchange_type=args.exchange_type, durable=True)
        except Stop:
            raise
        except Exception as e:
            sys.stderr.write(f"publisher.py: cannot connect/declare exchange '{args.exchange}' "
                             f"({args.exchange_type}) at {args.amqp_url}: {e!r}\n")
            return 2
        props = pika.BasicProperties(content_type=args.content_type)
        n = 0
        while args.count <= 0 or n < args.count:
            n += 1
            body = args.body.replace("{n}", str(n))
            t = time.time() * 1000.0
            try:
                ch.basic_publish(exchange=args.exchange, routing_key=args.routing_key,
                                 body=body.encode("utf-8"), properties=props)
            except Stop:
                raise
            except Exception as e:
                sys.stderr.write(f"publisher.py: publish #{n} failed: {e!r}\n")
                return 3
            sys.stdout.write(json.dumps({"event": "published", "n": n, "t": round(t, 3), "body": body}) + "\n")
            sys.stdout.flush()
            if args.count > 0 and n >= args.count:
                break
            # conn.sleep keeps pika's I/O (heartbeats, blocked notices) running while waiting.
            conn.sleep(args.interval)
            if args.exit_with_parent and os.getppid() != parent:
                sys.stderr.write("publisher.py: parent process is gone; exiting\n")
                return 0
        return 0
    except Stop:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                pass


if __name__ == "__main__":
    sys.exit(main())
