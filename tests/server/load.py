"""One round of concurrent streaming clients (tests/cli/server_load.sh):
    load.py URL CLIENTS MAX_TOKENS ROUND
CLIENTS threads start together, each streaming a completion or (every fourth) a chat completion
of MAX_TOKENS tokens (ignore_eos, return_token_ids, include_usage); every third one drops its
connection after three chunks. Every other request must end with "data: [DONE]", MAX_TOKENS ids in
its chunks, finish_reason "length" and a usage chunk that counts them."""
import threading

from oaitest import Report, Stream, collect, main_guard

WORDS = "the quick brown fox jumps over the lazy dog and then 你好 again".split()


def body(i, max_tokens, rnd):
    prompt = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + (i * 7 + rnd) % 40))
    b = {"max_tokens": max_tokens, "temperature": 0.7 if i % 2 else 0, "seed": i, "stream": True,
         "stream_options": {"include_usage": True}, "ignore_eos": True, "return_token_ids": True}
    if i % 4 == 3:
        return "/v1/chat/completions", "chat", dict(b, messages=[{"role": "user", "content": prompt}])
    return "/v1/completions", "completion", dict(b, prompt=prompt)


def client(url, i, max_tokens, rnd, start, results):
    path, kind, b = body(i, max_tokens, rnd)
    start.wait()
    try:
        s = Stream(url, path, b, timeout=120)
        if s.status != 200:
            results[i] = {"error": "status %d" % s.status}
            return
        if i % 3 == 2:  # goes away mid-stream
            events = iter(s)
            for _ in range(3):
                next(events)
            s.close()
            results[i] = {"dropped": True}
            return
        r = collect(s, kind)
        r["done"] = s.done
        results[i] = r
        s.close()
    except Exception as e:  # noqa: BLE001 -- reported per client
        results[i] = {"error": "%s: %s" % (type(e).__name__, e)}


def run(argv):
    url, clients, max_tokens, rnd = argv[0], int(argv[1]), int(argv[2]), int(argv[3])
    rep = Report()
    start = threading.Barrier(clients)
    results = [None] * clients
    threads = [threading.Thread(target=client, args=(url, i, max_tokens, rnd, start, results)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    bad = []
    complete = dropped = 0
    for i, r in enumerate(results):
        if r is None or "error" in r:
            bad.append((i, r and r["error"]))
        elif r.get("dropped"):
            dropped += 1
        elif not (r["done"] and len(r["ids"]) == max_tokens and r["finish"] == "length" and r["usage"]
                  and r["usage"]["completion_tokens"] == max_tokens):
            bad.append((i, {k: r[k] for k in ("done", "finish", "usage", "chunks")}, len(r["ids"])))
        else:
            complete += 1
    rep.check(not bad, "round %d: %d streams complete with %d tokens each, %d dropped mid-stream"
              % (rnd, complete, max_tokens, dropped), bad[:5])
    return rep


if __name__ == "__main__":
    main_guard(run)
