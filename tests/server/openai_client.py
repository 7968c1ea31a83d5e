"""The official openai client against `dsacp serve` (tests/cli/server_openai.sh):
    openai_client.py URL MODEL_NAME DSACP TOKENIZER PROMPT PROMPT_TOKENS
/v1/models, completions (text and ids prompts, usage, token ids that decode to the text), streamed
completions and chat completions equal to the non-streamed ones for greedy requests (with the
include_usage chunk), thinking mode's reasoning_content, stop strings across token boundaries and
stop_token_ids, max_tokens -> "length", seeded sampling, and errors as the client's exceptions."""
import concurrent.futures
import json

import openai

from oaitest import Report, collect, detokenize, main_guard

GREEDY = {"temperature": 0}
EXACT = {"ignore_eos": True}  # random weights may draw EOS any time: lengths are what we ask


def stream_dict(chunks):
    """The openai client's chunk objects as plain dicts for oaitest.collect."""
    return (c.model_dump(exclude_unset=False) for c in chunks)


def check_models(rep, client, name):
    models = client.models.list()
    rep.equal([m.id for m in models.data], [name], "/v1/models lists the served model")


def check_completion(rep, client, name, ctx):
    r = client.completions.create(model=name, prompt=ctx["prompt"], max_tokens=12, **GREEDY,
                                  extra_body=dict(EXACT, return_token_ids=True))
    c = r.choices[0]
    rep.check(r.id.startswith("cmpl-") and r.object == "text_completion" and r.model == name,
              "completion: id, object, model", r)
    rep.equal(c.finish_reason, "length", "completion: max_tokens -> finish_reason length")
    rep.equal((r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens),
              (ctx["prompt_tokens"], 12, ctx["prompt_tokens"] + 12), "completion: usage counts")
    ids = getattr(c, "token_ids", None) or []
    rep.equal(len(ids), 12, "completion: return_token_ids gives 12 ids")
    if ids:
        # ids past the tokenizer's (the vocabulary's padding rows: random weights draw them) have no text
        known = [i for i in ids if i < ctx["tokenizer_ids"]]
        rep.equal(c.text, detokenize(ctx["dsacp"], ctx["tokenizer"], known), "completion: the text is the ids' text")
    r2 = client.completions.create(model=name, prompt=[5, 6, 7, 8, 9], max_tokens=3, **GREEDY, extra_body=EXACT)
    rep.equal((r2.usage.prompt_tokens, r2.usage.completion_tokens), (5, 3), "completion of token ids: usage")
    r3 = client.completions.create(prompt=ctx["prompt"], model=name, max_tokens=1, **GREEDY, extra_body=EXACT)
    rep.equal(r3.usage.completion_tokens, 1, "completion: max_tokens 1")
    r4 = client.completions.create(model=name, prompt=ctx["prompt"], max_tokens=12, echo=True, **GREEDY, extra_body=EXACT)
    rep.equal(r4.choices[0].text, ctx["prompt"] + c.text, "completion with echo: the prompt, then the completion")

    s = collect(stream_dict(client.completions.create(
        model=name, prompt=ctx["prompt"], max_tokens=12, stream=True, stream_options={"include_usage": True},
        **GREEDY, extra_body=dict(EXACT, return_token_ids=True))), "completion")
    rep.equal(s["text"], c.text, "streamed completion: chunks concatenate to the non-streamed text")
    rep.equal(s["ids"], ids, "streamed completion: the same token ids")
    rep.equal(s["finish"], "length", "streamed completion: finish_reason length")
    rep.equal(s["usage"] and s["usage"]["completion_tokens"], 12, "streamed completion: include_usage chunk")
    return c.text, s["pieces"], ids


def chat_messages():
    return [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours, please."}]


def check_chat(rep, client, name):
    r = client.chat.completions.create(model=name, messages=chat_messages(), max_tokens=16, **GREEDY,
                                       extra_body=EXACT)
    m = r.choices[0].message
    rep.check(r.id.startswith("chatcmpl-") and r.object == "chat.completion" and m.role == "assistant",
              "chat: id, object, role", r)
    rep.equal((r.choices[0].finish_reason, r.usage.completion_tokens), ("length", 16), "chat: length, usage")
    rep.check(r.usage.prompt_tokens > 10 and r.usage.total_tokens == r.usage.prompt_tokens + 16,
              "chat: prompt_tokens counts the encoded conversation", r.usage)
    rep.check(not getattr(m, "reasoning_content", None), "chat without thinking: no reasoning_content", m)
    chunks = list(stream_dict(client.chat.completions.create(
        model=name, messages=chat_messages(), max_tokens=16, stream=True,
        stream_options={"include_usage": True}, **GREEDY, extra_body=EXACT)))
    s = collect(chunks, "chat")
    rep.equal(s["text"], m.content or "", "streamed chat: deltas concatenate to the non-streamed content")
    rep.equal(chunks[0]["choices"][0]["delta"].get("role"), "assistant", "streamed chat: first delta has the role")
    rep.equal((s["finish"], s["usage"] and s["usage"]["completion_tokens"]), ("length", 16),
              "streamed chat: finish_reason and the usage chunk")

    think = {"chat_template_kwargs": {"thinking": True}, **EXACT}
    t = client.chat.completions.create(model=name, messages=chat_messages(), max_tokens=16, **GREEDY, extra_body=think)
    tm = t.choices[0].message
    reasoning = getattr(tm, "reasoning_content", None) or ""
    rep.check(reasoning != "" and t.usage.prompt_tokens == r.usage.prompt_tokens,
              "chat thinking: reasoning_content (the prompt ends with <think> for </think>)", (t.usage, tm))
    ts = collect(stream_dict(client.chat.completions.create(
        model=name, messages=chat_messages(), max_tokens=16, stream=True, **GREEDY, extra_body=think)), "chat")
    rep.equal((ts["reasoning"], ts["text"]), (reasoning, tm.content or ""),
              "streamed chat thinking: delta.reasoning_content and content as non-streamed")


def plain(ch):
    return ch.isascii() and ch.isprintable() and not ch.isspace()


def check_think_split(rep, client, name, ctx):
    """Thinking mode's split at the "</think>" token: sampled requests until one draws it (random
    weights: about one token in 640), then its reasoning_content is the text before the token and
    content the text after, streamed and not."""
    end = ctx["think_end"]
    base = dict(model=name, messages=chat_messages(), max_tokens=96, temperature=1.0,
                extra_body={"chat_template_kwargs": {"thinking": True}, "return_token_ids": True, **EXACT})
    found = None
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        for first in range(1, 73, 12):  # 12 seeds at a time, batched by the server
            seeds = range(first, first + 12)
            for seed, r in zip(seeds, pool.map(lambda sd: client.chat.completions.create(seed=sd, **base), seeds)):
                ids = getattr(r.choices[0], "token_ids", None) or []
                if end in ids[1:-1]:
                    found = seed, r, ids
                    break
            if found:
                break
    if not rep.check(found is not None, "thinking: a sampled reply with </think> inside", "none in 72 seeds"):
        return
    seed, r, ids = found
    k = ids.index(end)
    known = [i for i in ids if i < ctx["tokenizer_ids"]]
    kk = known.index(end)
    m = r.choices[0].message
    want = (detokenize(ctx["dsacp"], ctx["tokenizer"], known[:kk]), detokenize(ctx["dsacp"], ctx["tokenizer"], known[kk + 1:]))
    rep.equal((getattr(m, "reasoning_content", None) or "", m.content or ""), want,
              "thinking (seed %d, </think> at token %d): reasoning_content before it, content after" % (seed, k))
    s = collect(stream_dict(client.chat.completions.create(stream=True, seed=seed, **base)), "chat")
    rep.equal((s["reasoning"], s["text"]), want, "streamed thinking: delta.reasoning_content, then delta.content")


def stop_across_boundary(pieces):
    """A stop string of two plain ASCII characters, the end of one chunk and the start of the
    next where possible, else any, whose first place in the text is past its start:
    (stop, the text before it), or None. (Random weights also draw bytes of unfinished UTF-8
    characters, whose text depends on what follows: never part of the stop string.)"""
    text = "".join(pieces)
    pos, places = 0, []
    for a, b in zip(pieces, pieces[1:]):
        pos += len(a)
        if a and b:
            places.append(pos - 1)
    places += range(1, len(text) - 1)
    for at in places:
        stop = text[at:at + 2]
        if at > 0 and len(stop) == 2 and all(map(plain, stop)) and text.find(stop) == at:
            return stop, text[:at]
    return None


def check_stop(rep, client, name, ctx, text, pieces, ids):
    found = stop_across_boundary(pieces)
    if rep.check(found is not None, "stop: a stop string across a token boundary exists", pieces):
        stop, before = found
        r = client.completions.create(model=name, prompt=ctx["prompt"], max_tokens=12, stop=[stop], **GREEDY,
                                      extra_body=EXACT)
        rep.equal((r.choices[0].text, r.choices[0].finish_reason), (before, "stop"),
                  "stop string %r: the text ends before it, finish_reason stop" % stop)
        rep.check(1 <= r.usage.completion_tokens <= 12, "stop string: usage counts the tokens generated", r.usage)
        s = collect(stream_dict(client.completions.create(
            model=name, prompt=ctx["prompt"], max_tokens=12, stop=["zzzq", stop], stream=True, **GREEDY,
            extra_body=EXACT)), "completion")
        rep.equal((s["text"], s["finish"]), (before, "stop"), "streamed stop string: the same text, finish stop")
    k = next((i for i in range(2, len(ids)) if ids[i] not in ids[:i]), None)
    if k is not None:
        r = client.completions.create(model=name, prompt=ctx["prompt"], max_tokens=12, **GREEDY,
                                      extra_body=dict(EXACT, stop_token_ids=[ids[k]], return_token_ids=True))
        c = r.choices[0]
        rep.equal((c.finish_reason, r.usage.completion_tokens, getattr(c, "token_ids", None)),
                  ("stop", k + 1, ids[:k + 1]), "stop_token_ids: ends with that token, finish_reason stop")


def check_seed(rep, client, name, ctx):
    def draw(seed, stream=False):
        kw = dict(model=name, prompt=ctx["prompt"], max_tokens=16, temperature=0.9, top_p=0.95, seed=seed,
                  extra_body=EXACT)
        if stream:
            return collect(stream_dict(client.completions.create(stream=True, **kw)), "completion")["text"]
        return client.completions.create(**kw).choices[0].text
    a, b, c = draw(11), draw(11), draw(12)
    rep.check(a == b and a != c, "seed: the same seed draws the same text, another seed another", (a, b, c))
    rep.equal(draw(11, stream=True), a, "seed: streamed draws the same text")


def check_errors(rep, client, name, ctx):
    try:
        client.completions.create(model=name, prompt=ctx["prompt"], max_tokens=-1)
        rep.check(False, "max_tokens -1: BadRequestError", "no error")
    except openai.BadRequestError as e:
        rep.check(e.status_code == 400 and (e.param == "max_tokens" or "max_tokens" in str(e)),
                  "max_tokens -1: BadRequestError naming max_tokens", (e.param, str(e)))
    try:
        client.completions.create(model="no-such-model", prompt=ctx["prompt"], max_tokens=2)
        rep.check(False, "another model: NotFoundError", "no error")
    except openai.NotFoundError as e:
        rep.equal(e.status_code, 404, "another model: NotFoundError 404")
    # Still serving.
    rep.equal(client.completions.create(model=name, prompt="a", max_tokens=2, **GREEDY, extra_body=EXACT)
              .usage.completion_tokens, 2, "after the errors: still serving")


def run(argv):
    url, name, dsacp, tokenizer, prompt, prompt_tokens = argv
    with open(tokenizer, encoding="utf-8") as f:
        t = json.load(f)
    n_ids = 1 + max([*t["model"]["vocab"].values(), *(a["id"] for a in t["added_tokens"])])
    think_end = next(a["id"] for a in t["added_tokens"] if a["content"] == "</think>")
    ctx = {"dsacp": dsacp, "tokenizer": tokenizer, "prompt": prompt, "prompt_tokens": int(prompt_tokens),
           "tokenizer_ids": n_ids, "think_end": think_end}
    rep = Report()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    check_models(rep, client, name)
    text, pieces, ids = check_completion(rep, client, name, ctx)
    check_chat(rep, client, name)
    check_think_split(rep, client, name, ctx)
    check_stop(rep, client, name, ctx, text, pieces, ids)
    check_seed(rep, client, name, ctx)
    check_errors(rep, client, name, ctx)
    return rep


if __name__ == "__main__":
    main_guard(run)
