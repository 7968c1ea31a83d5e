#!/usr/bin/env python3
"""Generate the tiny Hugging Face reference model and expected outputs for dsacp.

Builds a tiny DeepseekV32ForCausalLM (transformers' DeepSeek-V3.2 / DSA port) from a seed,
rounds every weight to a bf16-representable value, saves it with save_pretrained (bf16),
reloads it in float32 with attn_implementation="eager", runs a few sequences longer than
index_topk (one full forward each, batch 1, no padding, no cache) and writes:

  DIR/config.json, DIR/model.safetensors   (as saved by transformers)
  DIR/expected.safetensors                 (input_ids, logits, topk.<layer>, tie.<layer>)

It also re-implements the whole forward in float64 numpy (from the facts written in
docs/reference-notes.md) and checks it against transformers as a self-test.

Not run in CI. The generated files are committed under tests/data/hf_tiny.

Setup and run (from the repository root):
    python3 -m venv tools/.venv
    tools/.venv/bin/pip install torch transformers safetensors numpy
    tools/.venv/bin/python tools/hf_reference.py --out tests/data/hf_tiny --seed 6

Written against torch 2.x and transformers 5.x (DeepseekV32ForCausalLM, rope_parameters).
"""

import argparse
import json
import math
import os
import sys
import tempfile

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import DeepseekV32Config, DeepseekV32ForCausalLM
from transformers.models.deepseek_v32 import modeling_deepseek_v32 as hfmod

SEQ_LENS = (20, 35, 48)
TIE_REL = 1e-5


def make_config():
    return DeepseekV32Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        routed_scaling_factor=2.5,
        kv_lora_rank=32,
        q_lora_rank=32,
        qk_rope_head_dim=16,
        v_head_dim=16,
        qk_nope_head_dim=16,
        n_group=2,
        topk_group=1,
        num_experts_per_tok=2,
        norm_topk_prob=True,
        first_k_dense_replace=1,
        hidden_act="silu",
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        index_topk=16,
        index_head_dim=32,
        index_n_heads=4,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 64,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    )


def bf16_round(t):
    return t.to(torch.bfloat16).to(torch.float32)


@torch.no_grad()
def init_weights(model, seed):
    """Deterministic O(1)-activation init; every value bf16-representable."""
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name]
        if name.endswith("inv_freq"):  # rotary buffers, not weights
            continue
        if name.endswith("embed_tokens.weight"):
            v = normal(t.shape, 1.0)
        elif name.endswith("k_norm.bias") or name.endswith("e_score_correction_bias"):
            v = normal(t.shape, 0.1)
        elif t.dim() == 1:  # RMSNorm / LayerNorm weights
            v = normal(t.shape, 0.1, 1.0)
        elif t.dim() == 2:  # nn.Linear [out, in] and the router [E, D]
            v = normal(t.shape, 1.0 / math.sqrt(t.shape[1]))
        elif t.dim() == 3:  # packed experts [E, out, in]
            v = normal(t.shape, 1.0 / math.sqrt(t.shape[2]))
        else:
            raise RuntimeError(f"unexpected tensor {name} {tuple(t.shape)}")
        t.copy_(bf16_round(v))


class IndexerRecorder:
    """Wraps DeepseekV32Indexer.forward to record its inputs and returned top-k indices."""

    def __init__(self):
        self.calls = []
        self.orig = hfmod.DeepseekV32Indexer.forward

    def __enter__(self):
        orig = self.orig
        rec = self

        def wrapped(mod, hidden_states, q_resid, position_embeddings, attention_mask, position_ids, cache=None):
            out = orig(mod, hidden_states, q_resid, position_embeddings, attention_mask, position_ids, cache=cache)
            rec.calls.append(
                dict(
                    layer=mod.layer_idx,
                    module=mod,
                    hidden_states=hidden_states.detach().clone(),
                    q_resid=q_resid.detach().clone(),
                    cos=position_embeddings[0].detach().clone(),
                    sin=position_embeddings[1].detach().clone(),
                    topk=out.detach().clone(),
                )
            )
            return out

        hfmod.DeepseekV32Indexer.forward = wrapped
        return self

    def __exit__(self, *a):
        hfmod.DeepseekV32Indexer.forward = self.orig


def rotate_half64(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def index_scores64(call):
    """Index scores [S, S] in float64 from the recorded fp32 inputs (causal: -inf for s > p)."""
    m = call["module"]
    f = lambda t: t.detach().double().numpy()
    x = f(call["hidden_states"])[0]  # [S, D]
    qr = f(call["q_resid"])[0]  # [S, q_lora]
    cos = f(call["cos"])[0]  # [S, rope] (cat(freqs, freqs) * attention_scaling)
    sin = f(call["sin"])[0]
    S = x.shape[0]
    H, d, r = m.n_heads, m.head_dim, m.qk_rope_head_dim
    q = (qr @ f(m.wq_b.weight).T).reshape(S, H, d)
    k = x @ f(m.wk.weight).T
    mu = k.mean(-1, keepdims=True)
    var = ((k - mu) ** 2).mean(-1, keepdims=True)
    k = (k - mu) / np.sqrt(var + m.k_norm.eps) * f(m.k_norm.weight) + f(m.k_norm.bias)
    q[..., :r] = q[..., :r] * cos[:, None, :] + rotate_half64(q[..., :r]) * sin[:, None, :]
    k[..., :r] = k[..., :r] * cos + rotate_half64(k[..., :r]) * sin
    w = (x @ f(m.weights_proj.weight).T) * H**-0.5  # [S, H]
    dots = np.maximum(np.einsum("phd,sd->phs", q, k) * d**-0.5, 0.0)  # [S, H, S]
    I = np.einsum("ph,phs->ps", w, dots)
    I[np.triu(np.ones((S, S), dtype=bool), 1)] = -np.inf
    return I


def topk_and_ties(call, topk_n):
    """Returns (sorted valid top-k [S, topk] -1 padded, tie flags [S])."""
    I = index_scores64(call)
    S = I.shape[0]
    ref = call["topk"][0].numpy()  # [S, min(topk, S)]
    sel = np.full((S, topk_n), -1, dtype=np.int32)
    tie = np.zeros(S, dtype=np.uint8)
    for p in range(S):
        valid = np.sort(ref[p][ref[p] <= p])
        n = min(topk_n, p + 1)
        assert len(valid) == n, (p, ref[p])
        sel[p, :n] = valid
        if p + 1 <= topk_n:
            continue
        row = I[p, : p + 1]
        order = np.argsort(-row, kind="stable")  # ties: lower position first
        a, b = row[order[topk_n - 1]], row[order[topk_n]]
        near = abs(a - b) <= TIE_REL * max(abs(a), abs(b))
        differs = set(order[:topk_n].tolist()) != set(valid.tolist())
        tie[p] = 1 if (near or differs) else 0
    return sel, tie


# ---------------------------------------------------------------------------------------------
# Independent float64 numpy forward, written from docs/reference-notes.md (self-check only).
# Uses the reference's own top-k selection so near-ties cannot make it diverge.
# ---------------------------------------------------------------------------------------------
def np_rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_rope_tables(cfg, S):
    """YaRN cos/sin [S, rope/2] (times the attention factor) and the softmax scale, in float64
    (modeling_rope_utils._compute_yarn_parameters)."""
    rp, rope = cfg.rope_parameters, cfg.qk_rope_head_dim
    base, factor, orig = rp["rope_theta"], rp["factor"], rp["original_max_position_embeddings"]
    corr = lambda nrot: rope * math.log(orig / (nrot * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(corr(rp["beta_fast"])), 0)
    high = min(math.ceil(corr(rp["beta_slow"])), rope - 1)
    if low == high:
        high += 0.001
    i = np.arange(rope // 2, dtype=np.float64)
    theta = base ** (-2 * i / rope)
    ramp = np.clip((i - low) / (high - low), 0, 1)
    freq = theta / factor * ramp + theta * (1 - ramp)
    m = lambda f, x: 1.0 if f <= 1 else 0.1 * x * math.log(f) + 1.0
    att_factor = m(factor, rp["mscale"]) / m(factor, rp["mscale_all_dim"])
    ang = np.arange(S)[:, None] * freq[None, :]
    scale = (cfg.qk_nope_head_dim + rope) ** -0.5 * m(factor, rp["mscale_all_dim"]) ** 2
    return np.cos(ang) * att_factor, np.sin(ang) * att_factor, scale


def np_layer(sd, cfg, P, h, sel, tables, moe):
    """One decoder layer (prefix P, e.g. "model.layers.1.") over rows h [S, D] at positions 0..S-1,
    attention restricted to the given selections sel [S, topk] (-1 padded). Returns the layer's
    output (the residual stream) and the layer's own float64 top-k selection."""
    g = lambda n: sd[n].astype(np.float64)
    D, H = cfg.hidden_size, cfg.num_attention_heads
    nope, rope, vd, kvl = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    Hi, di = cfg.index_n_heads, cfg.index_head_dim
    eps = cfg.rms_norm_eps
    S = h.shape[0]
    cos, sin, scale = tables
    cos, sin = cos[:S], sin[:S]

    def rope_interleaved(x, c_, s_):  # rotate pairs (2i, 2i+1) in place, angle p * freq_i
        y = x.copy()
        a, b = x[..., 0::2], x[..., 1::2]
        y[..., 0::2] = a * c_ - b * s_
        y[..., 1::2] = b * c_ + a * s_
        return y

    def rope_half(x, c_, s_):  # rotate pairs (i, i + rope/2), angle p * freq_i
        hh = rope // 2
        a, b = x[..., :hh], x[..., hh:]
        return np.concatenate([a * c_ - b * s_, b * c_ + a * s_], axis=-1)

    cos_h, sin_h = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    A = P + "self_attn."
    x = np_rms(h, g(P + "input_layernorm.weight"), eps)
    qr = np_rms(x @ g(A + "q_a_proj.weight").T, g(A + "q_a_layernorm.weight"), 1e-6)
    q = (qr @ g(A + "q_b_proj.weight").T).reshape(S, H, nope + rope)
    kv = x @ g(A + "kv_a_proj_with_mqa.weight").T
    c = np_rms(kv[:, :kvl], g(A + "kv_a_layernorm.weight"), 1e-6)
    q_pe = rope_interleaved(q[..., nope:], cos_h, sin_h)
    k_pe = rope_interleaved(kv[:, kvl:], cos, sin)
    wkv = g(A + "kv_b_proj.weight").reshape(H, nope + vd, kvl)
    q_abs = np.einsum("phn,hnc->phc", q[..., :nope], wkv[:, :nope, :])
    logit = (np.einsum("phc,sc->phs", q_abs, c) + np.einsum("phr,sr->phs", q_pe, k_pe)) * scale
    mask = np.full((S, S), -np.inf)
    for p in range(S):
        mask[p, sel[p][sel[p] >= 0]] = 0.0
    logit = logit + mask[:, None, :]
    logit -= logit.max(-1, keepdims=True)
    pr = np.exp(logit)
    pr /= pr.sum(-1, keepdims=True)
    o = np.einsum("phs,sc->phc", pr, c)
    v = np.einsum("phc,hvc->phv", o, wkv[:, nope:, :]).reshape(S, H * vd)
    h = h + v @ g(A + "o_proj.weight").T

    # indexer (own float64 selection, compared with the reference's outside ties)
    I_ = A + "indexer."
    qi = (qr @ g(I_ + "wq_b.weight").T).reshape(S, Hi, di)
    ki = x @ g(I_ + "wk.weight").T
    mu = ki.mean(-1, keepdims=True)
    ki = (ki - mu) / np.sqrt(((ki - mu) ** 2).mean(-1, keepdims=True) + 1e-6)
    ki = ki * g(I_ + "k_norm.weight") + g(I_ + "k_norm.bias")
    qi[..., :rope] = rope_half(qi[..., :rope], cos_h, sin_h)
    ki[..., :rope] = rope_half(ki[..., :rope], cos, sin)
    w = (x @ g(I_ + "weights_proj.weight").T) * Hi**-0.5
    Isc = np.einsum("ph,phs->ps", w, np.maximum(np.einsum("phd,sd->phs", qi, ki), 0) * di**-0.5)
    own = np.full((S, cfg.index_topk), -1, dtype=np.int32)
    for p in range(S):
        n = min(cfg.index_topk, p + 1)
        own[p, :n] = np.sort(np.argsort(-Isc[p, : p + 1], kind="stable")[:n])

    x = np_rms(h, g(P + "post_attention_layernorm.weight"), eps)
    return h + np_mlp(sd, cfg, P + "mlp.", x, moe), own


def np_mlp(sd, cfg, M, x, moe):
    g = lambda n: sd[n].astype(np.float64)
    if not moe:
        return (np_silu(x @ g(M + "gate_proj.weight").T) * (x @ g(M + "up_proj.weight").T)) @ g(M + "down_proj.weight").T
    S = x.shape[0]
    E, ng, tg, K = cfg.n_routed_experts, cfg.n_group, cfg.topk_group, cfg.num_experts_per_tok
    s = 1 / (1 + np.exp(-(x @ g(M + "gate.weight").T)))
    b = s + g(M + "gate.e_score_correction_bias")
    gs = np.sort(b.reshape(S, ng, E // ng), -1)[..., -2:].sum(-1)
    y = np.zeros_like(x)
    gu, dn = get_experts(sd, M)
    for t in range(S):
        keep = np.argsort(-gs[t], kind="stable")[:tg]
        bm = np.full(E, -np.inf)
        for grp in keep:
            bm[grp * (E // ng) : (grp + 1) * (E // ng)] = b[t, grp * (E // ng) : (grp + 1) * (E // ng)]
        ex = np.argsort(-bm, kind="stable")[:K]
        wt = s[t, ex]
        if cfg.norm_topk_prob:
            wt = wt / (wt.sum() + 1e-20)
        wt = wt * cfg.routed_scaling_factor
        for e, we in zip(ex, wt):
            I2 = gu[e].shape[0] // 2
            a = gu[e] @ x[t]
            y[t] += we * (dn[e] @ (np_silu(a[:I2]) * a[I2:]))
    S_ = M + "shared_experts."
    return y + (np_silu(x @ g(S_ + "gate_proj.weight").T) * (x @ g(S_ + "up_proj.weight").T)) @ g(S_ + "down_proj.weight").T


def np_forward(sd, cfg, ids, selections):
    """The target model in float64: (logits [S, V], own selections per layer, final-normed
    hidden rows [S, D])."""
    tables = np_rope_tables(cfg, len(ids))
    h = sd["model.embed_tokens.weight"].astype(np.float64)[ids]
    own_sel = []
    for L in range(cfg.num_hidden_layers):
        h, own = np_layer(sd, cfg, f"model.layers.{L}.", h, selections[L], tables, cfg.mlp_layer_types[L] != "dense")
        own_sel.append(own)
    h = np_rms(h, sd["model.norm.weight"].astype(np.float64), cfg.rms_norm_eps)
    return h @ sd["lm_head.weight"].astype(np.float64).T, own_sel, h


def get_experts(sd, M):
    if M + "experts.gate_up_proj" in sd:
        return sd[M + "experts.gate_up_proj"].astype(np.float64), sd[M + "experts.down_proj"].astype(np.float64)
    E = len({k[len(M + "experts.") :].split(".")[0] for k in sd if k.startswith(M + "experts.")})
    gu = np.stack(
        [np.concatenate([sd[f"{M}experts.{e}.gate_proj.weight"], sd[f"{M}experts.{e}.up_proj.weight"]], 0) for e in range(E)]
    ).astype(np.float64)
    dn = np.stack([sd[f"{M}experts.{e}.down_proj.weight"] for e in range(E)]).astype(np.float64)
    return gu, dn


def parse_args(doc, out, seed):
    """--out DIR and --seed N (the defaults are the committed data's)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--out", default=out)
    ap.add_argument("--seed", type=int, default=seed)
    return ap.parse_args()


def seeded_model(seed):
    """The tiny target model with the seeded weights, and a copy of its state."""
    torch.manual_seed(seed)
    model = DeepseekV32ForCausalLM(make_config()).to(torch.float32)
    init_weights(model, seed)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_bf16(model, out):
    """save_pretrained in bf16 into out, keeping only what dsacp reads (and expected.safetensors)."""
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    for f in os.listdir(out):
        if f not in ("config.json", "model.safetensors", "expected.safetensors"):
            os.remove(os.path.join(out, f))


def main():
    args = parse_args(__doc__, "tests/data/hf_tiny", 6)
    model, src = seeded_model(args.seed)

    save_bf16(model, args.out)

    model = DeepseekV32ForCausalLM.from_pretrained(
        args.out, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32, k
        assert torch.equal(v, src[k]), f"reloaded tensor differs: {k}"
    cfg = model.config

    with safe_open(os.path.join(args.out, "model.safetensors"), framework="pt") as fh:
        sd = {k: fh.get_tensor(k).float().numpy() for k in fh.keys()}

    g = torch.Generator().manual_seed(args.seed + 1)
    R, Lmax, V, K = len(SEQ_LENS), max(SEQ_LENS), cfg.vocab_size, cfg.index_topk
    NL = cfg.num_hidden_layers
    exp = {
        "input_ids": np.full((R, Lmax), -1, dtype=np.int32),
        "logits": np.zeros((R, Lmax, V), dtype=np.float32),
    }
    for L in range(NL):
        exp[f"topk.{L}"] = np.full((R, Lmax, K), -1, dtype=np.int32)
        exp[f"tie.{L}"] = np.zeros((R, Lmax), dtype=np.uint8)

    worst = 0.0
    mism = 0
    for r, S in enumerate(SEQ_LENS):
        ids = torch.randint(0, V, (1, S), generator=g)
        with IndexerRecorder() as rec, torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits[0].float().numpy()
        assert [c["layer"] for c in rec.calls] == list(range(NL))
        exp["input_ids"][r, :S] = ids[0].numpy()
        exp["logits"][r, :S] = logits
        sels = []
        for c in rec.calls:
            sel, tie = topk_and_ties(c, K)
            exp[f"topk.{c['layer']}"][r, :S] = sel
            exp[f"tie.{c['layer']}"][r, :S] = tie
            sels.append(sel)
        ref64, own, _ = np_forward(sd, cfg, ids[0].numpy(), sels)
        for L in range(NL):
            t = exp[f"tie.{L}"][r, :S]
            mism += int(((own[L] != sels[L]).any(-1) & (t == 0)).sum())
        err = np.abs(ref64 - logits).max() / max(1.0, np.abs(ref64).max())
        worst = max(worst, err)

    save_file(exp, os.path.join(args.out, "expected.safetensors"))

    # reload check: a plain from_pretrained (default experts implementation) gives the same logits
    m2 = DeepseekV32ForCausalLM.from_pretrained(args.out, dtype=torch.float32, attn_implementation="eager").eval()
    reload_diff = 0.0
    with torch.no_grad():
        for r, S in enumerate(SEQ_LENS):
            ids = torch.from_numpy(exp["input_ids"][r : r + 1, :S].astype(np.int64))
            l2 = m2(input_ids=ids, use_cache=False).logits[0].numpy()
            reload_diff = max(reload_diff, float(np.abs(l2 - exp["logits"][r, :S]).max()))
    assert reload_diff < 1e-5, f"reload mismatch {reload_diff}"

    for f in os.listdir(args.out):
        os.chmod(os.path.join(args.out, f), 0o644)
    sizes = {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}
    print("files:", ", ".join(f"{f} {n} B" for f, n in sizes.items()), f"(total {sum(sizes.values())} B)")
    print("sequences:", SEQ_LENS, "seed:", args.seed)
    print("tie flags:", {L: int(exp[f"tie.{L}"].sum()) for L in range(NL)},
          "at (layer, seq, pos):", [(L, *map(int, rp)) for L in range(NL) for rp in np.argwhere(exp[f"tie.{L}"])])
    print(f"reloaded model max |dlogit| = {reload_diff:.3e}")
    print(f"float64 numpy re-implementation vs transformers: max |dlogit| / max(1,|logit|) = {worst:.3e}")
    print("float64 numpy top-k sets differing from transformers outside tie rows:", mism)
    if worst > 1e-4 or mism:
        print("SELF-CHECK FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
