"""Stalled clients (tests/cli/server_errors.sh): stall.py URL TIMEOUT_S MODEL
Three connections that stall -- one sends half a body, one only part of its headers, one nothing
-- while a normal request is served; each is closed by the server after about TIMEOUT_S seconds
(--timeout), never held forever."""
import socket
import time

from oaitest import Report, main_guard, post_json, split_url


def stalled(url, data):
    host, port = split_url(url)
    s = socket.create_connection((host, port), timeout=30)
    if data:
        s.sendall(data)
    return s


def closed_after(s, limit):
    """Seconds until the server closed the connection (it may answer first, e.g. 408), or None
    when it is still open after `limit` seconds."""
    t0 = time.monotonic()
    s.settimeout(0.5)
    while time.monotonic() - t0 < limit:
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - t0
        except socket.timeout:
            continue
        except OSError:  # reset by the server: closed too
            return time.monotonic() - t0
    return None


def run(argv):
    url, timeout_s, model = argv[0], float(argv[1]), argv[2]
    rep = Report()
    body = b'{"model": "%s", "prompt": "Hello", "max_tokens": 4}' % model.encode()
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    t0 = time.monotonic()
    socks = {"half a body": stalled(url, head + body[:len(body) // 2]),
             "half the headers": stalled(url, head[:30]),
             "nothing sent": stalled(url, b"")}
    status, r = post_json(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 4, "ignore_eos": True})
    rep.check(status == 200 and r["usage"]["completion_tokens"] == 4,
              "a request is served while three clients stall", (status, r))
    for name, s in socks.items():
        dt = closed_after(s, timeout_s * 4 + 8 - (time.monotonic() - t0))
        waited = time.monotonic() - t0
        rep.check(dt is not None and waited >= timeout_s * 0.5,
                  "stalled client (%s) closed after %.1f s (--timeout %g)" % (name, waited, timeout_s),
                  "still open" if dt is None else "closed too early")
        s.close()
    status, _ = post_json(url, "/v1/completions", {"prompt": "Hello", "max_tokens": 2})
    rep.equal(status, 200, "served after the stalled clients")
    return rep


if __name__ == "__main__":
    main_guard(run)
