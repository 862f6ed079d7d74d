#!/usr/bin/env python3
"""Load reproduction of the pooled-connection isolation report (issue 15): erroring and healthy
STOMP sessions side by side against a running gateway, over TCP and WebSocket.

  scripts/repro-pooled-errors.py --ws-url ws://127.0.0.1:25061/ws --stomp 127.0.0.1:25062 \
      [--erroring 50] [--healthy 50] [--seconds 30]

Erroring sessions log in, then either SUBSCRIBE to an exchange that does not exist (and read
the ERROR) or SEND to one without a receipt and drop the socket at once. Healthy sessions log
in, subscribe to amq.topic with their own key, SEND with a receipt, read their MESSAGE and
DISCONNECT. Prints one JSON line of counts: healthy sessions that got an ERROR or were closed,
ERRORs naming a destination their session never used, and sessions completed. Needs the
`websocket-client` package (tests/python/requirements.txt).
"""
import argparse
import json
import random
import socket
import threading
import time
import uuid

import websocket  # websocket-client

LOCK = threading.Lock()
COUNTS = {
    "healthy_sessions": 0,
    "healthy_failed": 0,
    "healthy_got_error": 0,
    "healthy_closed": 0,
    "erroring_sessions": 0,
    "foreign_errors": 0,
    "examples": [],
}


def count(key, example=None):
    with LOCK:
        COUNTS[key] += 1
        if example and len(COUNTS["examples"]) < 5:
            COUNTS["examples"].append(example)


def frame(command, headers, body=""):
    lines = [command] + [f"{k}:{v}" for k, v in headers.items()]
    return ("\n".join(lines) + "\n\n" + body + "\x00").encode()


class Conn:
    """One STOMP connection over TCP or WebSocket; recv() yields parsed frames."""

    def __init__(self, args, wire):
        self.buf = b""
        self.wire = wire
        if wire == "ws":
            self.ws = websocket.create_connection(args.ws_url, timeout=10, subprotocols=["v12.stomp"])
        else:
            host, port = args.stomp.rsplit(":", 1)
            self.sock = socket.create_connection((host, int(port)), timeout=10)

    def send(self, data):
        if self.wire == "ws":
            self.ws.send(data.decode(), opcode=websocket.ABNF.OPCODE_TEXT)
        else:
            self.sock.sendall(data)

    def _read(self):
        if self.wire == "ws":
            op, data = self.ws.recv_data(control_frame=False)
            if op == websocket.ABNF.OPCODE_CLOSE:
                return b""
            return data if isinstance(data, bytes) else data.encode()
        return self.sock.recv(65536)

    def recv(self):
        """The next frame as (command, headers, body); None when the server closed."""
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\x00")
            if end >= 0:
                raw, self.buf = self.buf[:end], self.buf[end + 1:]
                head, _, body = raw.partition(b"\n\n")
                lines = head.decode(errors="replace").split("\n")
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers.setdefault(k, v)
                return lines[0], headers, body.decode(errors="replace")
            try:
                chunk = self._read()
            except (OSError, websocket.WebSocketException):
                return None
            if not chunk:
                return None
            self.buf += chunk

    def close(self):
        try:
            (self.ws if self.wire == "ws" else self.sock).close()
        except Exception:
            pass


def login(args, wire):
    c = Conn(args, wire)
    c.send(frame("CONNECT", {"accept-version": "1.2", "host": "/", "login": args.login,
                             "passcode": args.passcode, "heart-beat": "0,0"}))
    reply = c.recv()
    if not reply or reply[0] != "CONNECTED":
        raise RuntimeError(f"CONNECT failed: {reply}")
    return c


def foreign(text, own):
    """Quoted names in an error text that this session never used."""
    parts = text.split("'")
    return [p for i, p in enumerate(parts) if i % 2 == 1 and p != "/" and p not in own]


def erroring(args, worker, stop):
    n = 0
    while not stop.is_set():
        n += 1
        wire = "ws" if (worker + n) % 2 else "tcp"
        name = f"missing-{worker}-{n}-{uuid.uuid4().hex[:8]}"
        try:
            c = login(args, wire)
        except Exception:
            continue
        if random.random() >= args.send_drop_share:
            c.send(frame("SUBSCRIBE", {"id": "b", "destination": f"/exchange/{name}", "receipt": "rb"}))
            reply = c.recv()
            if reply and reply[0] == "ERROR" and foreign(reply[2], {name}):
                count("foreign_errors", f"erroring session for '{name}' got: {reply[2].strip()}")
        else:
            c.send(frame("SEND", {"destination": f"/exchange/{name}/k"}, "x"))
        c.close()
        count("erroring_sessions")


def healthy(args, worker, stop):
    n = 0
    while not stop.is_set():
        n += 1
        wire = "tcp" if (worker + n) % 2 else "ws"
        key = f"h{worker}-{n}-{uuid.uuid4().hex[:8]}"
        try:
            c = login(args, wire)
        except Exception as e:
            count("healthy_failed", f"healthy CONNECT failed: {e}")
            continue
        own = {key, "amq.topic"}
        c.send(frame("SUBSCRIBE", {"id": "h", "destination": f"/exchange/amq.topic/{key}", "receipt": "rs"}))
        c.send(frame("SEND", {"destination": f"/exchange/amq.topic/{key}", "receipt": "rp"}, key))
        want = {"rs", "rp", "message"}
        ok = True
        while want:
            reply = c.recv()
            if reply is None:
                count("healthy_closed", f"healthy session {key} closed while waiting for {want}")
                ok = False
                break
            command, headers, body = reply
            if command == "ERROR":
                count("healthy_got_error", f"healthy session {key} got ERROR {headers.get('message')}: {body.strip()}")
                if foreign(body, own):
                    count("foreign_errors", f"healthy session {key} got: {body.strip()}")
                ok = False
                break
            if command == "RECEIPT":
                want.discard(headers.get("receipt-id"))
            elif command == "MESSAGE" and body == key:
                want.discard("message")
        if ok:
            c.send(frame("DISCONNECT", {"receipt": "bye"}))
            c.recv()
            count("healthy_sessions")
        else:
            count("healthy_failed")
        c.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ws-url", required=True)
    p.add_argument("--stomp", required=True, help="host:port of the gateway's STOMP listener")
    p.add_argument("--erroring", type=int, default=50)
    p.add_argument("--healthy", type=int, default=50)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--send-drop-share", type=float, default=0.5,
                   help="share of erroring sessions that SEND and drop (the rest SUBSCRIBE)")
    p.add_argument("--login", default="guest")
    p.add_argument("--passcode", default="guest")
    args = p.parse_args()
    stop = threading.Event()
    threads = [threading.Thread(target=erroring, args=(args, i, stop)) for i in range(args.erroring)]
    threads += [threading.Thread(target=healthy, args=(args, i, stop)) for i in range(args.healthy)]
    for t in threads:
        t.daemon = True
        t.start()
    time.sleep(args.seconds)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    print(json.dumps(COUNTS))


if __name__ == "__main__":
    main()
