#!/usr/bin/env python3
"""Plain STOMP-over-TCP smoke check with stomp.py 8 (STOMP 1.2).

    stomp_tcp_check.py --host 127.0.0.1 --port P [--login guest --passcode guest --vhost /]
                       [--timeout 10]

Steps (each one asserted):
  1. CONNECT (login/passcode/host=vhost, heart-beat 0,0) -> CONNECTED version 1.2
  2. SUBSCRIBE id=q to /queue/stompgate-check-<uuid> (durable:false, auto-delete:true so
     nothing is left on the broker), SUBSCRIBE id=x to /exchange/amq.topic/stompgate.check.<uuid>
     (both with a receipt, awaited, so the bindings exist before the SENDs)
  3. SEND to the queue (custom header, incl. characters that need STOMP 1.2 escaping) and
     SEND to the exchange with a receipt -> both MESSAGEs arrive with the right body, subscription,
     destination (/queue/<q> and /topic/<key>, as RabbitMQ rebuilds it), message-id,
     content-type and custom headers; the RECEIPT arrives
  4. UNSUBSCRIBE both (with receipts), SEND again to the exchange with a receipt -> the RECEIPT
     arrives (unroutable messages are confirmed and dropped, as RabbitMQ does), nothing is delivered
  5. DISCONNECT with a receipt -> RECEIPT arrives
Exit 0 on success; 1 on a failed assertion, 2 on connection trouble. The last stdout line is
a JSON summary: {"ok":true|false,"check":"stomp_tcp",...,"reason":...}.
"""
import argparse
import json
import sys
import threading
import time
import uuid

try:
    import stomp
    import stomp.exception
except ImportError as e:  # pragma: no cover
    print(json.dumps({"ok": False, "check": "stomp_tcp", "reason": f"cannot import stomp.py ({e}); "
                      "run scripts/ensure-test-deps.sh"}))
    sys.exit(2)


class CheckFailed(Exception):
    pass


class Recorder(stomp.ConnectionListener):
    def __init__(self):
        self.cv = threading.Condition()
        self.messages = []
        self.receipts = []
        self.errors = []
        self.connected = None
        self.disconnected = False

    def _add(self, lst, item):
        with self.cv:
            lst.append(item)
            self.cv.notify_all()

    def on_connected(self, frame):
        with self.cv:
            self.connected = frame
            self.cv.notify_all()

    def on_message(self, frame):
        self._add(self.messages, frame)

    def on_receipt(self, frame):
        self._add(self.receipts, frame.headers.get("receipt-id"))

    def on_error(self, frame):
        self._add(self.errors, frame)

    def on_disconnected(self):
        with self.cv:
            self.disconnected = True
            self.cv.notify_all()

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                if self.errors:
                    e = self.errors[0]
                    raise CheckFailed(f"ERROR frame while waiting for {what}: "
                                      f"message={e.headers.get('message')!r} body={e.body!r}")
                r = pred()
                if r:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(f"timeout after {timeout}s waiting for {what}")
                self.cv.wait(left)

    def wait_receipt(self, rid, timeout, what):
        return self.wait_for(lambda: rid in self.receipts, timeout, f"RECEIPT {rid} ({what})")

    def message_with_body(self, body):
        for m in self.messages:
            if m.body == body:
                return m
        return None


def expect(cond, msg):
    if not cond:
        raise CheckFailed(msg)


def check_message(m, *, body, sub_id, destination, custom):
    h = m.headers
    expect(m.body == body, f"body {m.body!r} != {body!r}")
    expect(h.get("subscription") == sub_id, f"subscription header {h.get('subscription')!r} != {sub_id!r} "
                                             f"(message {body!r})")
    expect(h.get("destination") == destination,
           f"destination header {h.get('destination')!r} != {destination!r} (message {body!r})")
    expect(h.get("message-id"), f"no message-id header on message {body!r}: {h}")
    expect(h.get("content-type") == "text/plain", f"content-type {h.get('content-type')!r} != 'text/plain'")
    for k, v in custom.items():
        expect(h.get(k) == v, f"custom header {k!r}: got {h.get(k)!r}, want {v!r} (message {body!r})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--login", default="guest")
    ap.add_argument("--passcode", default="guest")
    ap.add_argument("--vhost", default="/")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per wait (default 10)")
    args = ap.parse_args()

    t0 = time.monotonic()
    u = uuid.uuid4().hex[:12]
    queue = f"stompgate-check-{u}"
    key = f"stompgate.check.{u}"
    qdest, xdest = f"/queue/{queue}", f"/exchange/amq.topic/{key}"
    # Queue properties, identical on SUBSCRIBE and SEND (both declare the queue on RabbitMQ).
    qprops = {"durable": "false", "auto-delete": "true"}
    custom = {"x-stompgate-check": f"custom-{u}", "x-escaped": "a:b\\c\nd\re"}
    summary = {"ok": False, "check": "stomp_tcp", "host": args.host, "port": args.port, "vhost": args.vhost}
    steps = []
    rec = Recorder()
    conn = stomp.Connection12([(args.host, args.port)], heartbeats=(0, 0), vhost=args.vhost,
                              reconnect_attempts_max=1, timeout=args.timeout, auto_content_length=True)
    conn.set_listener("rec", rec)
    code = 1
    try:
        try:
            conn.connect(args.login, args.passcode, wait=True, headers={"host": args.vhost})
        except stomp.exception.ConnectFailedException as e:
            if rec.errors:
                e0 = rec.errors[0]
                raise CheckFailed(f"CONNECT refused: message={e0.headers.get('message')!r} body={e0.body!r}")
            code = 2
            raise CheckFailed(f"cannot connect to {args.host}:{args.port}: {e!r}")
        cf = rec.wait_for(lambda: rec.connected, args.timeout, "CONNECTED")
        summary.update(server=cf.headers.get("server"), version=cf.headers.get("version"),
                       session=cf.headers.get("session"), heartBeat=cf.headers.get("heart-beat"))
        expect(cf.headers.get("version") == "1.2", f"CONNECTED version {cf.headers.get('version')!r} != '1.2'")
        steps.append("connect")

        conn.subscribe(qdest, id="q", ack="auto", headers=dict(qprops, receipt=f"sub-q-{u}"))
        conn.subscribe(xdest, id="x", ack="auto", headers={"receipt": f"sub-x-{u}"})
        rec.wait_receipt(f"sub-q-{u}", args.timeout, f"SUBSCRIBE {qdest}")
        rec.wait_receipt(f"sub-x-{u}", args.timeout, f"SUBSCRIBE {xdest}")
        steps.append("subscribe")

        qbody, xbody = f"queue message {u}", f"exchange message {u} \u2713"
        conn.send(qdest, qbody, content_type="text/plain", headers=dict(qprops, **custom))
        conn.send(xdest, xbody, content_type="text/plain", headers=dict(custom, receipt=f"send-x-{u}"))
        rec.wait_receipt(f"send-x-{u}", args.timeout, f"SEND {xdest}")
        steps.append("send-receipt")
        qm = rec.wait_for(lambda: rec.message_with_body(qbody), args.timeout, f"MESSAGE on {qdest}")
        xm = rec.wait_for(lambda: rec.message_with_body(xbody), args.timeout, f"MESSAGE on {xdest}")
        check_message(qm, body=qbody, sub_id="q", destination=qdest, custom=custom)
        check_message(xm, body=xbody, sub_id="x", destination=f"/topic/{key}", custom=custom)
        expect(len(rec.messages) == 2, f"expected exactly 2 MESSAGEs, got {len(rec.messages)}: "
                                       f"{[m.body for m in rec.messages]}")
        summary["messageHeaders"] = {"queue": dict(qm.headers), "exchange": dict(xm.headers)}
        steps.append("messages")

        conn.unsubscribe("q", headers={"receipt": f"unsub-q-{u}"})
        conn.unsubscribe("x", headers={"receipt": f"unsub-x-{u}"})
        rec.wait_receipt(f"unsub-q-{u}", args.timeout, "UNSUBSCRIBE q")
        rec.wait_receipt(f"unsub-x-{u}", args.timeout, "UNSUBSCRIBE x")
        conn.send(xdest, f"after unsubscribe {u}", content_type="text/plain", headers={"receipt": f"send-x2-{u}"})
        # Nothing is bound any more: RabbitMQ answers this receipt anyway (and drops the
        # message), and so does stompgate unless started with --error-on-unroutable.
        rid = f"send-x2-{u}"
        rec.wait_receipt(rid, args.timeout, f"second SEND {xdest} (unroutable)")
        summary["unroutableReceipt"] = "receipt"
        time.sleep(0.3)
        expect(len(rec.messages) == 2, f"message delivered after UNSUBSCRIBE: {[m.body for m in rec.messages[2:]]}")
        steps.append("unsubscribe")

        conn.disconnect(receipt=f"disc-{u}")
        rec.wait_receipt(f"disc-{u}", args.timeout, "DISCONNECT")
        steps.append("disconnect-receipt")
        summary["ok"] = True
        code = 0
    except CheckFailed as e:
        summary["reason"] = str(e)
    except Exception as e:  # unexpected: still a clear line
        summary["reason"] = f"unexpected {e!r}"
    finally:
        try:
            if conn.is_connected():
                conn.disconnect()
        except Exception:
            pass
        summary["steps"] = steps
        summary["elapsedMs"] = round((time.monotonic() - t0) * 1000, 1)
        if not summary["ok"]:
            sys.stderr.write(f"stomp_tcp_check: FAILED at step {len(steps) + 1}: {summary.get('reason')}\n")
        print(json.dumps(summary), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
