"""The tokens a server generates for a fixed set of requests (tests/cli/server_mpi.sh):
    tokens.py URL > OUT.json
Greedy and seeded completions of text and of ids (one prompt longer than several KV blocks),
streamed and not, chat in both thinking modes, eight more of other lengths; all sent at once
(batched together), each with return_token_ids and ignore_eos. Prints {name: {"ids": [...], "text": ...}} (sorted
keys), so two servers compare by their output alone."""
import json
import sys
import threading

from oaitest import Stream, collect, post_json

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}]


def requests():
    base = {"max_tokens": 12, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
    rq = {
        "text": ("/v1/completions", dict(base, prompt="The capital of France is")),
        "ids-long": ("/v1/completions", dict(base, prompt=[(7 * k) % 500 + 3 for k in range(150)])),
        "sampled": ("/v1/completions", dict(base, prompt="Once upon a time", temperature=0.8, top_p=0.9, seed=5)),
        "chat": ("/v1/chat/completions", dict(base, messages=MSGS)),
        "chat-thinking": ("/v1/chat/completions", dict(base, messages=MSGS, chat_template_kwargs={"thinking": True})),
    }
    for name in list(rq):
        path, b = rq[name]
        rq[name + "-stream"] = (path, dict(b, stream=True))
    for i in range(8):
        rq["batch-%d" % i] = ("/v1/completions", dict(base, prompt="word " * (5 + 9 * i), max_tokens=10 + i))
    return rq


def one(url, path, b):
    kind = "chat" if "chat" in path else "completion"
    if b.get("stream"):
        s = Stream(url, path, b)
        r = collect(s, kind)
        s.close()
        text = r["text"] if kind == "completion" else r["reasoning"] + "|" + r["text"]
        return {"ids": r["ids"], "text": text, "status": s.status}
    status, r = post_json(url, path, b)
    if status != 200:
        return {"status": status, "error": r}
    c = r["choices"][0]
    text = c["text"] if kind == "completion" else (c["message"].get("reasoning_content") or "") + "|" + \
        (c["message"].get("content") or "")
    return {"ids": c.get("token_ids"), "text": text, "status": status}


def main():
    url = sys.argv[1]
    out = {}
    # All at once: greedy and seeded tokens do not depend on the batch, and one batch is quick.
    threads = [threading.Thread(target=lambda n=n, rq=rq: out.__setitem__(n, one(url, *rq)))
               for n, rq in requests().items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.dump(out, sys.stdout, sort_keys=True, indent=0, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main()
