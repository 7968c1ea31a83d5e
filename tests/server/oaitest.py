"""Helpers of the server's Python tests (tests/server/*.py, run by tests/cli/server*.sh): checks
printed as "ok   NAME" / "FAIL NAME: detail" lines that the shell script counts, and plain HTTP
with the standard library (http.client): requests, server-sent event streams, raw sockets."""
import http.client
import json
import subprocess
import sys
import urllib.parse


class Report:
    """Prints one line per check; the calling script counts "ok" and "FAIL" lines."""

    def __init__(self):
        self.fails = 0

    def check(self, cond, name, detail=""):
        if cond:
            print("ok   " + name, flush=True)
        else:
            self.fails += 1
            print("FAIL %s: %s" % (name, str(detail)[:800]), flush=True)
        return cond

    def equal(self, got, want, name):
        return self.check(got == want, name, "got %r, expected %r" % (got, want))


def split_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port


def request(url, method, path, body=None, headers=None, timeout=60):
    """One request on its own connection: (status, headers dict lower-cased, body bytes)."""
    host, port = split_url(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def post_json(url, path, body, timeout=60):
    """POST a JSON body: (status, parsed JSON or None)."""
    status, _, data = request(url, "POST", path, body, timeout=timeout)
    try:
        return status, json.loads(data)
    except ValueError:
        return status, None


class Stream:
    """A streamed request (SSE): iterate for the events' JSON objects; `done` tells whether
    "data: [DONE]" ended it; close() drops the connection (a client going away)."""

    def __init__(self, url, path, body, timeout=60):
        host, port = split_url(url)
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)
        self.conn.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.content_type = self.resp.getheader("Content-Type", "")
        self.done = False

    def __iter__(self):
        for raw in self.resp:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                self.done = True
                return
            yield json.loads(line[6:])

    def close(self):
        self.conn.close()


def collect(events, kind):
    """The text (and for chat the reasoning) of a stream's chunks, the finish reason, the ids of
    return_token_ids, the usage chunk and the number of chunks with a choice."""
    text, reasoning, ids, finish, usage, n = [], [], [], None, None, 0
    for ev in events:
        if ev.get("usage") and not ev.get("choices"):
            usage = ev["usage"]
            continue
        for c in ev.get("choices", []):
            n += 1
            if kind == "chat":
                d = c.get("delta", {})
                text.append(d.get("content") or "")
                reasoning.append(d.get("reasoning_content") or "")
            else:
                text.append(c.get("text") or "")
            ids.extend(c.get("token_ids") or [])
            finish = c.get("finish_reason") or finish
    return {"text": "".join(text), "reasoning": "".join(reasoning), "pieces": text, "ids": ids,
            "finish": finish, "usage": usage, "chunks": n}


def detokenize(dsacp, tokenizer, ids, skip_special=True):
    """The text of ids by `dsacp detokenize` (the server's decoding, outside the server)."""
    cmd = [dsacp, "detokenize", "--tokenizer", tokenizer, "--ids", ",".join(map(str, ids))]
    if skip_special:
        cmd.append("--skip-special")
    out = subprocess.run(cmd, check=True, capture_output=True).stdout.decode("utf-8")
    return out[:-1] if out.endswith("\n") else out  # the one newline the command adds


def main_guard(fn):
    """Runs fn(argv) -> Report; an exception is one FAIL line, never a silent pass."""
    try:
        rep = fn(sys.argv[1:])
    except Exception as e:  # noqa: BLE001 -- reported, the script fails
        import traceback
        traceback.print_exc()
        print("FAIL %s: %s: %s" % (sys.argv[0].rsplit("/", 1)[-1], type(e).__name__, e), flush=True)
        sys.exit(1)
    sys.exit(0 if rep.fails == 0 else 1)
