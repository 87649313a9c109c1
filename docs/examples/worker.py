#!/usr/bin/env python3
"""A quorumq worker over the HTTP/JSON API, with the standard library only.

It shows the two guarantees a worker in any language can have:

* exactly-once send: every message carries a dedup ID; a send whose outcome
  is unknown (a timeout, a dropped connection, HTTP 500 with code 2) is sent
  again with the SAME dedup ID, and the queue answers the original message ID
  with "duplicate": true instead of enqueueing a second copy;
* at-least-once consume: receive leases messages; ack deletes one only after
  the work is done; nack hands it back (here: a job that fails once); a worker
  that dies mid-job loses nothing, the lease expires and the job comes back.

Usage: worker.py [BASE_URL] [QUEUE]   (default http://127.0.0.1:7501 demo-py)
Set QUORUMQ_TOKEN to send "Authorization: Bearer <token>". Any node's HTTP
address works: a follower forwards each call to the leader.
"""
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7501"
QUEUE = sys.argv[2] if len(sys.argv) > 2 else "demo-py"
TOKEN = os.environ.get("QUORUMQ_TOKEN", "")

UNAVAILABLE = 14  # gRPC code: no leader right now; nothing was done
UNKNOWN = 2       # gRPC code: outcome unknown; retry with the same IDs


class APIError(Exception):
    def __init__(self, status, body):
        self.status = status
        self.code = body.get("code", 0)
        self.message = body.get("message", "")
        super().__init__(f"HTTP {status}, code {self.code}: {self.message}")


def call(method, path, body=None, timeout=30):
    """One API call; returns the decoded JSON answer or raises APIError."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if TOKEN:
        req.add_header("Authorization", "Bearer " + TOKEN)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        raise APIError(e.code, json.load(e)) from None


def retrying(method, path, body):
    """call, again while the answer is 'try again' (no leader, or an outcome
    unknown). Safe only for calls that carry their dedup/request IDs."""
    for attempt in range(10):
        try:
            return call(method, path, body)
        except APIError as e:
            if e.code not in (UNAVAILABLE, UNKNOWN):
                raise
            print(f"  retrying after {e}")
        except (urllib.error.URLError, TimeoutError) as e:
            print(f"  outcome unknown ({e}); retrying with the same dedup ID")
        time.sleep(0.2 * (attempt + 1))
    raise RuntimeError(f"{method} {path}: gave up after 10 attempts")


def send(job_id, payload):
    """Exactly-once send: the dedup ID is the job's own ID."""
    body = {"messages": [{"body": base64.b64encode(payload.encode()).decode(), "dedupId": job_id}]}
    result = retrying("POST", f"/v1/queues/{QUEUE}/messages", body)["results"][0]
    return result["messageId"], result.get("duplicate", False)


def main():
    try:
        call("POST", "/v1/queues", {"name": QUEUE, "ifNotExists": True})
    except APIError as e:
        sys.exit(f"create queue {QUEUE}: {e}")

    jobs = {"job-1": "resize photo 1", "job-2": "fail-once: resize photo 2", "job-3": "resize photo 3"}
    for job_id, payload in jobs.items():
        msg_id, dup = send(job_id, payload)
        print(f"sent {job_id} as message {msg_id}")
    # A producer that did not hear the answer sends again: nothing doubles.
    msg_id, dup = send("job-1", jobs["job-1"])
    print(f"sent job-1 again: message {msg_id}, duplicate={dup}")

    done = 0
    while done < len(jobs):
        got = call("POST", f"/v1/queues/{QUEUE}/receive",
                   {"max": 10, "visibilityNs": str(30 * 10**9), "waitNs": str(2 * 10**9), "consumer": "worker.py"})
        for d in got.get("deliveries", []):
            receipt = d["receipt"]
            payload = base64.b64decode(d.get("body", "")).decode()
            attempt = receipt.get("attempt", 1)
            if payload.startswith("fail-once") and attempt == 1:
                call("POST", f"/v1/queues/{QUEUE}/nack",
                     {"receipts": [receipt], "delayNs": "0", "reason": "simulated failure"})
                print(f"message {receipt['messageId']} attempt {attempt}: {payload!r} failed, nacked")
                continue
            outcome = call("POST", f"/v1/queues/{QUEUE}/ack", {"receipts": [receipt]})["outcomes"][0]
            print(f"message {receipt['messageId']} attempt {attempt}: {payload!r} done, ack {outcome}")
            done += 1
    stats = call("GET", f"/v1/queues/{QUEUE}")["queue"]["stats"]
    print(f"done: {done} jobs processed; queue {QUEUE}: ready {stats['ready']}, "
          f"enqueued {stats['enqueuedTotal']}, acked {stats['ackedTotal']}, dedup hits {stats['dedupHitsTotal']}")


if __name__ == "__main__":
    main()
