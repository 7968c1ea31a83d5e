#!/usr/bin/env python3
"""Generate the tiny Hugging Face reference model WITH an MTP layer, and the MTP layer's expected
outputs, for dsacp (docs/mtp.md).

The target model is tools/hf_reference.py's tiny DeepseekV32ForCausalLM (same config and weight
init). The checkpoint gains the MTP layer at index M = num_hidden_layers, under DeepSeek's names:
model.layers.M.{enorm,hnorm,eh_proj,shared_head.norm,shared_head.head} and an ordinary decoder
layer (MLA + indexer, MoE by the first_k_dense_replace / moe_layer_freq rule). It has its own
shared_head.head (different from lm_head, so a head mix-up shows) and no embed_tokens of its own
(so the target's embedding is used, as allowed). config.json gains num_nextn_predict_layers = 1.

transformers has no MTP module (it ignores model.layers.61.*), so the layer is assembled here:
the decoder block is transformers' own DeepseekV32DecoderLayer (eager attention, the indexer,
DeepseekV32MoE) loaded with layer M's weights; enorm / hnorm / eh_proj / shared_head follow the
public model code (vLLM deepseek_mtp.py, SGLang deepseek_nextn.py):

    e_p   = embed(token_{p+1}), zeroed at position 0 (vLLM)
    x_p   = eh_proj([RMSNorm(e_p; enorm) ; RMSNorm(h_p; hnorm)])      (embedding half first)
    out_p = DecoderLayer_M(x)_p                                         (pre-norm output)
    logits_p = shared_head.head(RMSNorm(out_p; shared_head.norm))

with h_p the target's final-normed hidden row p (DeepseekV32Model's last_hidden_state). For each
sequence of S tokens t_0..t_{S-1}: the catch-up rows p = 0..S-1 take token t_{p+1}, the last row
(p = S-1) the target's argmax at S-1 ("next"); then one chained draft row at position S takes
token d = argmax of the MTP's row S-1 and hidden out_{S-1}. Everything is also recomputed by an
independent float64 numpy implementation (tools/hf_reference.py's np_layer) as a self-test.

Written files:
  DIR/config.json, DIR/model.safetensors     (bf16 weights, target + MTP layer)
  DIR/expected.safetensors:
    input_ids    I32 [R][Lmax]            target tokens, -1 padded
    next_ids     I32 [R]                  the token of the last catch-up row (target argmax)
    logits       F32 [R][Lmax][V]         target logits
    topk.<L>     I32 [R][Lmax][K], tie.<L> U8 [R][Lmax]   target selections / near-tie rows
    hidden       F32 [R][Lmax][D]         target final-normed hidden rows h_p
    mtp.logits   F32 [R][Lmax][V]         the MTP layer's logits of row p
    mtp.hidden   F32 [R][Lmax][D]         the MTP layer's pre-norm output out_p
    mtp.topk     I32 [R][Lmax][K], mtp.tie U8 [R][Lmax]   the MTP layer's selections / near ties
    chain.ids    I32 [R]                  the chained row's token d
    chain.logits F32 [R][V], chain.topk I32 [R][K], chain.tie U8 [R]

Not run in CI; the files are committed under tests/data/hf_tiny_mtp. Setup as hf_reference.py:
    tools/.venv/bin/python tools/hf_mtp_reference.py --out tests/data/hf_tiny_mtp --seed 19
"""

import copy
import json
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch
from torch import nn
from transformers import DeepseekV32ForCausalLM
from transformers.masking_utils import create_causal_mask
from transformers.models.deepseek_v32 import modeling_deepseek_v32 as hfmod

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_reference as hfr  # noqa: E402

SEQ_LENS = (18, 29, 40)


def mtp_is_moe(cfg):
    """The MTP layer's MLP by the rule vLLM's decoder layer applies to index M (transformers 5's
    mlp_layer_types lists the target layers only)."""
    M = cfg.num_hidden_layers
    freq = getattr(cfg, "moe_layer_freq", 1) or 1
    return bool(cfg.n_routed_experts) and M >= cfg.first_k_dense_replace and M % freq == 0


class SharedHead(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = hfmod.DeepseekV32RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)


class MtpLayer(nn.Module):
    """enorm, hnorm, eh_proj, shared_head and transformers' decoder layer M (as `block`)."""

    def __init__(self, cfg):
        super().__init__()
        M, D = cfg.num_hidden_layers, cfg.hidden_size
        bcfg = copy.deepcopy(cfg)
        bcfg.mlp_layer_types = list(cfg.mlp_layer_types) + ["sparse" if mtp_is_moe(cfg) else "dense"]
        self.enorm = hfmod.DeepseekV32RMSNorm(D, cfg.rms_norm_eps)
        self.hnorm = hfmod.DeepseekV32RMSNorm(D, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * D, D, bias=False)
        self.shared_head = SharedHead(cfg)
        self.block = hfmod.DeepseekV32DecoderLayer(bcfg, M)

    def forward(self, embed, rotary, config, ids, pos, hidden):
        """ids, pos: [S] tensors; hidden [S, D] -> (pre-norm output [S, D], logits [S, V])."""
        e = embed(ids[None])
        e = torch.where((pos == 0)[None, :, None], torch.zeros_like(e), e)
        x = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(hidden[None])], dim=-1))
        pos_ids = pos[None]
        mask = create_causal_mask(config=config, inputs_embeds=x, attention_mask=None, cache=None,
                                  position_ids=pos_ids, allow_is_causal_skip=False)
        out = self.block(x, attention_mask=mask, position_ids=pos_ids,
                         position_embeddings=rotary(x, position_ids=pos_ids), use_cache=False)
        return out[0], self.shared_head.head(self.shared_head.norm(out))[0]


def checkpoint_tensors(mtp, M):
    """The MTP layer's tensors under DeepSeek's checkpoint names (per-expert, as transformers saves
    the target's)."""
    out = {}
    for name, t in mtp.state_dict().items():
        if name.endswith("inv_freq"):
            continue
        key = f"model.layers.{M}." + (name[len("block."):] if name.startswith("block.") else name)
        if key.endswith("mlp.experts.gate_up_proj"):
            base, half = key[: -len("gate_up_proj")], t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = t[e, :half]
                out[f"{base}{e}.up_proj.weight"] = t[e, half:]
        elif key.endswith("mlp.experts.down_proj"):
            base = key[: -len("down_proj")]
            for e in range(t.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = t[e]
        else:
            out[key] = t
    return {k: v.detach().to(torch.bfloat16).contiguous() for k, v in out.items()}


def load_mtp(mtp, path, M):
    """Loads the MTP module's weights back from the saved checkpoint (bf16 -> f32)."""
    pre = f"model.layers.{M}."
    with safe_open(path, framework="pt") as fh:
        sd = {k[len(pre):]: fh.get_tensor(k).float() for k in fh.keys() if k.startswith(pre)}
    want = {}
    for name, t in mtp.state_dict().items():
        key = name[len("block."):] if name.startswith("block.") else name
        if key.endswith("mlp.experts.gate_up_proj"):
            b = key[: -len("gate_up_proj")]
            want[name] = torch.stack([torch.cat([sd[f"{b}{e}.gate_proj.weight"], sd[f"{b}{e}.up_proj.weight"]])
                                      for e in range(t.shape[0])])
        elif key.endswith("mlp.experts.down_proj"):
            b = key[: -len("down_proj")]
            want[name] = torch.stack([sd[f"{b}{e}.down_proj.weight"] for e in range(t.shape[0])])
        else:
            want[name] = sd[key]
    mtp.load_state_dict(want, strict=True)


def write_checkpoint(model, mtp, out, M):
    hfr.save_bf16(model, out)
    path = os.path.join(out, "model.safetensors")
    with safe_open(path, framework="pt") as fh:
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors.update(checkpoint_tensors(mtp, M))
    save_torch(dict(sorted(tensors.items())), path, metadata={"format": "pt"})
    cpath = os.path.join(out, "config.json")
    with open(cpath) as fh:
        conf = json.load(fh)
    conf["num_nextn_predict_layers"] = 1
    with open(cpath, "w") as fh:
        json.dump(conf, fh, indent=2, sort_keys=True)
        fh.write("\n")


def np_mtp(sd, cfg, ids, pos, hidden, sel):
    """The MTP layer in float64 from the checkpoint: (pre-norm output, logits, own selection)."""
    g = lambda n: sd[n].astype(np.float64)
    P, eps = f"model.layers.{cfg.num_hidden_layers}.", cfg.rms_norm_eps
    emb = sd.get(P + "embed_tokens.weight", sd["model.embed_tokens.weight"]).astype(np.float64)[ids]
    emb[pos == 0] = 0.0
    x = np.concatenate([hfr.np_rms(emb, g(P + "enorm.weight"), eps), hfr.np_rms(hidden, g(P + "hnorm.weight"), eps)], -1)
    x = x @ g(P + "eh_proj.weight").T
    out, own = hfr.np_layer(sd, cfg, P, x, sel, hfr.np_rope_tables(cfg, len(ids)), mtp_is_moe(cfg))
    head = sd.get(P + "shared_head.head.weight", sd["lm_head.weight"]).astype(np.float64)
    return out, hfr.np_rms(out, g(P + "shared_head.norm.weight"), eps) @ head.T, own


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


class Check:
    """The float64 re-implementation's worst relative error and top-k disagreements (outside ties)."""

    def __init__(self):
        self.worst, self.sets = {}, 0

    def err(self, what, a, b):
        self.worst[what] = max(self.worst.get(what, 0.0), rel_err(a, b))

    def sel(self, own, ref, tie):
        self.sets += int(((own != ref).any(-1) & (tie == 0)).sum())


def first_tie(res, mtie, S):
    """The first row a near tie (target layers or the MTP layer) may have changed, or S."""
    rows = [np.argmax(t) for k, t in res.items() if k.startswith("tie.") and t.any()]
    return int(min(rows + ([np.argmax(mtie)] if mtie.any() else []) + [S]))


def run_sequence(model, mtp, sd, ids, K, chk):
    """Everything expected of one sequence (a dict of numpy arrays)."""
    cfg, M, S = model.config, model.config.num_hidden_layers, ids.shape[0]
    res = {}
    with hfr.IndexerRecorder() as rec, torch.no_grad():
        hidden = model.model(input_ids=ids[None], use_cache=False).last_hidden_state[0]
        logits = model.lm_head(hidden)
    sels = []
    for c in rec.calls:
        sel, tie = hfr.topk_and_ties(c, K)
        res[f"topk.{c['layer']}"], res[f"tie.{c['layer']}"] = sel, tie
        sels.append(sel)
    nxt = int(logits[-1].argmax())
    mids = torch.cat([ids[1:], torch.tensor([nxt])])
    pos = torch.arange(S)
    with hfr.IndexerRecorder() as rec, torch.no_grad():
        out, mlog = mtp(model.model.embed_tokens, model.model.rotary_emb, cfg, mids, pos, hidden)
    assert [c["layer"] for c in rec.calls] == [M]
    msel, mtie = hfr.topk_and_ties(rec.calls[0], K)
    d = int(mlog[-1].argmax())
    with hfr.IndexerRecorder() as rec, torch.no_grad():
        out2, mlog2 = mtp(model.model.embed_tokens, model.model.rotary_emb, cfg, torch.cat([mids, torch.tensor([d])]),
                          torch.arange(S + 1), torch.cat([hidden, out[-1:]]))
    csel, ctie = hfr.topk_and_ties(rec.calls[0], K)
    # appending a row may break an exact tie of torch.topk differently: compare rows before any tie
    clean = first_tie(res, mtie, S)
    chk.err("catch-up rows recomputed with the chained row appended", out2[:clean].numpy(), out[:clean].numpy())
    res.update({"next_ids": nxt, "logits": logits.numpy(), "hidden": hidden.numpy(), "mtp.logits": mlog.numpy(),
                "mtp.hidden": out.numpy(), "mtp.topk": msel, "mtp.tie": mtie, "chain.ids": d,
                "chain.logits": mlog2[S].numpy(), "chain.topk": csel[S], "chain.tie": ctie[S]})

    # the independent float64 implementation, fed only the reference's selections
    idn = ids.numpy()
    ref64, own, h64 = hfr.np_forward(sd, cfg, idn, sels)
    for L in range(M):
        chk.sel(own[L], sels[L], res[f"tie.{L}"])
    chk.err("target logits", logits.numpy(), ref64)
    chk.err("target hidden", hidden.numpy(), h64)
    o64, l64, own = np_mtp(sd, cfg, mids.numpy(), pos.numpy(), h64, msel)
    chk.sel(own, msel, mtie)
    chk.err("MTP output", out.numpy(), o64)
    chk.err("MTP logits", mlog.numpy(), l64)
    sel2 = np.concatenate([msel, csel[S:]])
    o64b, l64b, own = np_mtp(sd, cfg, np.append(mids.numpy(), d), np.arange(S + 1), np.concatenate([h64, o64[-1:]]), sel2)
    chk.sel(own[S:], csel[S:], ctie[S:])
    chk.err("chained row logits", mlog2[S:].numpy(), l64b[S:])
    return res


def main():
    args = hfr.parse_args(__doc__, "tests/data/hf_tiny_mtp", 19)
    model, src = hfr.seeded_model(args.seed)
    cfg = model.config
    M = cfg.num_hidden_layers
    mtp = MtpLayer(model.config).to(torch.float32)
    hfr.init_weights(mtp, args.seed + 1000)
    msrc = {k: v.detach().clone() for k, v in mtp.state_dict().items()}

    write_checkpoint(model, mtp, args.out, M)
    model = DeepseekV32ForCausalLM.from_pretrained(
        args.out, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    ).eval()
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, src[k]), f"reloaded tensor differs: {k}"
    mtp = MtpLayer(model.config).to(torch.float32).eval()
    load_mtp(mtp, os.path.join(args.out, "model.safetensors"), M)
    for k, v in mtp.state_dict().items():
        assert torch.equal(v, msrc[k]), f"reloaded MTP tensor differs: {k}"
    with safe_open(os.path.join(args.out, "model.safetensors"), framework="pt") as fh:
        sd = {k: fh.get_tensor(k).float().numpy() for k in fh.keys()}

    g = torch.Generator().manual_seed(args.seed + 1)
    R, Lmax, V, K, D = len(SEQ_LENS), max(SEQ_LENS), cfg.vocab_size, cfg.index_topk, cfg.hidden_size
    exp = {"input_ids": np.full((R, Lmax), -1, dtype=np.int32), "next_ids": np.zeros(R, np.int32),
           "logits": np.zeros((R, Lmax, V), np.float32), "hidden": np.zeros((R, Lmax, D), np.float32),
           "mtp.logits": np.zeros((R, Lmax, V), np.float32), "mtp.hidden": np.zeros((R, Lmax, D), np.float32),
           "mtp.topk": np.full((R, Lmax, K), -1, np.int32), "mtp.tie": np.zeros((R, Lmax), np.uint8),
           "chain.ids": np.zeros(R, np.int32), "chain.logits": np.zeros((R, V), np.float32),
           "chain.topk": np.full((R, K), -1, np.int32), "chain.tie": np.zeros(R, np.uint8)}
    for L in range(M):
        exp[f"topk.{L}"] = np.full((R, Lmax, K), -1, dtype=np.int32)
        exp[f"tie.{L}"] = np.zeros((R, Lmax), dtype=np.uint8)
    chk = Check()
    for r, S in enumerate(SEQ_LENS):
        ids = torch.randint(0, V, (S,), generator=g)
        exp["input_ids"][r, :S] = ids.numpy()
        for k, v in run_sequence(model, mtp, sd, ids, K, chk).items():
            if k.startswith("chain.") or k == "next_ids":
                exp[k][r] = v
            else:
                exp[k][r, :S] = v
    save_file(exp, os.path.join(args.out, "expected.safetensors"))

    for f in os.listdir(args.out):
        os.chmod(os.path.join(args.out, f), 0o644)
    sizes = {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}
    print("files:", ", ".join(f"{f} {n} B" for f, n in sizes.items()), f"(total {sum(sizes.values())} B)")
    print("sequences:", SEQ_LENS, "seed:", args.seed, "MTP layer", M, "MoE" if mtp_is_moe(cfg) else "dense")
    ties = {k: [tuple(map(int, x)) for x in np.argwhere(exp[k])] for k in exp if k.startswith("tie.") or k.endswith(".tie")}
    print("tie rows (seq, pos):", {k: v for k, v in ties.items() if v})
    print("next ids:", exp["next_ids"].tolist(), "chained draft ids:", exp["chain.ids"].tolist())
    for what, e in chk.worst.items():
        print(f"float64 numpy vs transformers, {what}: max |d| / max(1, |ref|) = {e:.3e}")
    print("float64 numpy top-k sets differing from transformers outside tie rows:", chk.sets)
    if max(chk.worst.values()) > 1e-4 or chk.sets:
        print("SELF-CHECK FAILED", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
