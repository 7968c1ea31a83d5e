#!/usr/bin/env python3
"""Side-by-side CPU decode benchmark: Hugging Face DeepseekV32Attention vs `dsacp bench`.

Not run in CI. Setup (any Python >= 3.10):

    python3 -m venv tools/.venv && tools/.venv/bin/pip install torch transformers
    tools/.venv/bin/python tools/hf_bench.py --context 4096,8192,16384,32768 --threads 2

What is timed on the Hugging Face side: ONE DECODE STEP (one new token) of one
`DeepseekV32Attention` module (MLA + DSA indexer, the real module forward) at DeepSeek-V3.2's
attention dimensions (hidden 7168, 128 heads, q_lora 1536, kv_lora 512, qk_nope 128, qk_rope 64,
v 128, indexer 64 heads x 128, index_topk 2048, YaRN factor 40 / original 4096, mscale 1 / 1),
random weights, with a DynamicCache that already holds L previous tokens. The cache tensors are
filled directly with random values of the right shapes (a real prefill at L = 32K would take far
longer than the decode step being measured); the decode forward itself is unmodified
transformers code. Before every timed step the cache is put back to exactly L tokens, so each rep
measures the step at context L (including transformers' torch.cat cache append).
`--hf-module decoder-layer` times the whole `DeepseekV32DecoderLayer` (norms + attention + dense
MLP, intermediate 18432) instead. Mask creation and RoPE cos/sin (done once per model step in
`DeepseekV32Model.forward`, not per layer) are outside the timed region.

Each (context, dtype, attn_implementation) point runs in its own child process so that its peak
RSS can be reported and an out-of-memory kill only loses that point. transformers expands kv_b
over the whole cache on every step (kv_b output [1, L, 128*256] plus key_states [1,128,L,192]),
about 0.23 MB per context token in float32, so memory grows linearly with L.

dsacp side: `DSACP bench --preset v32-layer --context L --threads T --kernel layer --json`,
reading the result named `decode_layer_time` (ms) from the JSON "results" array. If the binary or
the `bench` command is missing the table says so and the HF numbers are still printed.

`--self-test` checks the dsacp JSON parsing against a hand-written sample and exits.
"""

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import time

# V3.2 attention dimensions (the `v32-layer` preset of dsacp uses the same).
V32 = dict(
    hidden_size=7168,
    num_attention_heads=128,
    num_key_value_heads=128,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_head_dim=128,
    qk_rope_head_dim=64,
    v_head_dim=128,
    index_n_heads=64,
    index_head_dim=128,
    index_topk=2048,
    intermediate_size=18432,
    max_position_embeddings=163840,
    num_hidden_layers=1,
    first_k_dense_replace=1,
    vocab_size=4096,
    rope_parameters=dict(
        rope_type="yarn",
        rope_theta=10000.0,
        factor=40.0,
        original_max_position_embeddings=4096,
        beta_fast=32.0,
        beta_slow=1.0,
        mscale=1.0,
        mscale_all_dim=1.0,
    ),
)

SAMPLE_JSON = (
    '{"results":[{"name":"decode_layer_time","value":12.3,"unit":"ms",'
    '"ceiling_name":null,"ceiling_value":null,"ratio":null}]}'
)


# ----------------------------------------------------------------------------------------------
# Hugging Face worker (runs in a child process)
# ----------------------------------------------------------------------------------------------


def hf_worker(args):
    import torch
    import transformers
    from transformers import DynamicCache
    from transformers.masking_utils import create_causal_mask
    from transformers.models.deepseek_v32.configuration_deepseek_v32 import DeepseekV32Config
    from transformers.models.deepseek_v32.modeling_deepseek_v32 import (
        DeepseekV32Attention,
        DeepseekV32DecoderLayer,
        DeepseekV32RotaryEmbedding,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    L = args.context

    config = DeepseekV32Config(**V32)
    config._attn_implementation = args.attn

    t0 = time.perf_counter()
    with torch.no_grad():
        if args.hf_module == "decoder-layer":
            module = DeepseekV32DecoderLayer(config, layer_idx=0)
            attn = module.self_attn
        else:
            module = DeepseekV32Attention(config, layer_idx=0)
            attn = module
        # Random weights of a sensible scale (the default nn.Linear init is fine for timing);
        # norm weights are 1 already. Make RMSNorm/LayerNorm weights non-trivial anyway.
        for name, p in module.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
        module = module.to(dtype)
        # transformers keeps indexer.weights_proj in fp32 when loading (_keep_in_fp32_modules).
        attn.indexer.weights_proj.to(torch.float32)
        module.eval()
        rotary = DeepseekV32RotaryEmbedding(config=config)

        # Cache holding L previous tokens: MLA latent (normed c_kv) [1,1,L,512], RoPE'd k_pe
        # [1,1,L,64], indexer keys [1,L,128] (what cache.update / cache.update_indexer store).
        cache = DynamicCache(config=config)
        kv = torch.randn(1, 1, L, V32["kv_lora_rank"], dtype=dtype)
        kpe = torch.randn(1, 1, L, V32["qk_rope_head_dim"], dtype=dtype)
        idxk = torch.randn(1, L, V32["index_head_dim"], dtype=dtype)
        cache.update(kv, kpe, 0)
        cache.update_indexer(idxk, 0)
        layer = cache.layers[0]
        saved = (layer.keys, layer.values, layer.indexer_keys)

        def reset_cache():
            layer.keys, layer.values, layer.indexer_keys = saved

        assert cache.get_seq_length() == L
        hidden = torch.randn(1, 1, V32["hidden_size"], dtype=dtype)
        position_ids = torch.tensor([[L]], dtype=torch.long)
        pos_emb = rotary(hidden, position_ids=position_ids)
        mask = create_causal_mask(
            config=config,
            inputs_embeds=hidden,
            attention_mask=None,
            cache=cache,
            position_ids=position_ids,
            allow_is_causal_skip=False,
        )
        setup_s = time.perf_counter() - t0

        def step():
            reset_cache()
            if args.hf_module == "decoder-layer":
                out = module(
                    hidden,
                    attention_mask=mask,
                    position_ids=position_ids,
                    cache=cache,
                    use_cache=True,
                    position_embeddings=pos_emb,
                )
            else:
                out, _ = module(
                    hidden,
                    position_embeddings=pos_emb,
                    attention_mask=mask,
                    cache=cache,
                    position_ids=position_ids,
                )
            return out

        t = time.perf_counter()
        out = step()  # warm-up
        warm_ms = (time.perf_counter() - t) * 1e3
        assert cache.get_seq_length() == L + 1, cache.get_seq_length()
        assert out.shape == (1, 1, V32["hidden_size"]) and torch.isfinite(out.float()).all()
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)

    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            dict(
                context=L,
                dtype=args.dtype,
                attn=args.attn,
                module=args.hf_module,
                threads=torch.get_num_threads(),
                median_ms=statistics.median(times),
                times_ms=times,
                warmup_ms=warm_ms,
                setup_s=setup_s,
                peak_rss_gb=rss_kb / 1024 / 1024,
                torch=torch.__version__,
                transformers=transformers.__version__,
            )
        )
    )


def run_hf_point(args, L, dtype, attn):
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_worker",
        "--context", str(L),
        "--dtype", dtype,
        "--attn", attn,
        "--threads", str(args.threads),
        "--reps", str(args.reps),
        "--seed", str(args.seed),
        "--hf-module", args.hf_module,
    ]
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(error=f"timed out after {args.timeout} s")
    if p.returncode != 0:
        if p.returncode in (-9, 137):
            why = "killed (SIGKILL; most likely out of memory)"
        else:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            why = f"exit {p.returncode}: " + " | ".join(tail)
        return dict(error=why)
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return dict(error="no result line from worker")


# ----------------------------------------------------------------------------------------------
# dsacp side
# ----------------------------------------------------------------------------------------------


def parse_dsacp_json(text, name="decode_layer_time"):
    """Return (value_ms, None) or (None, reason) from `dsacp bench --json` output."""
    start = text.find("{")
    if start < 0:
        return None, "no JSON object in dsacp output"
    try:
        doc, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        return None, f"bad JSON from dsacp: {e}"
    results = doc.get("results") if isinstance(doc, dict) else None
    if not isinstance(results, list):
        return None, 'dsacp JSON has no "results" array'
    for r in results:
        if isinstance(r, dict) and r.get("name") == name:
            v, unit = r.get("value"), r.get("unit", "ms")
            if not isinstance(v, (int, float)):
                return None, f"{name} has no numeric value"
            scale = {"ms": 1.0, "s": 1e3, "us": 1e-3, "ns": 1e-6}.get(unit)
            if scale is None:
                return None, f"{name} has unknown unit {unit!r}"
            return float(v) * scale, None
    return None, f'no result named "{name}" in dsacp JSON'


def run_dsacp(args, L):
    if not os.path.exists(args.dsacp):
        return None, f"dsacp binary not found at {args.dsacp}"
    cmd = [args.dsacp, "bench", "--preset", "v32-layer", "--context", str(L),
           "--threads", str(args.threads), "--kernel", "layer", "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return None, f"dsacp bench timed out after {args.timeout} s"
    if p.returncode != 0:
        err = (p.stderr or p.stdout).strip().splitlines()
        msg = err[0] if err else ""
        if "bench" in msg or "unknown command" in msg.lower() or "usage" in msg.lower():
            return None, f"`dsacp bench` not available in this binary (exit {p.returncode}: {msg})"
        return None, f"dsacp bench failed (exit {p.returncode}): {' | '.join(err[-3:])}"
    return parse_dsacp_json(p.stdout)


# ----------------------------------------------------------------------------------------------


def self_test():
    v, err = parse_dsacp_json(SAMPLE_JSON)
    assert err is None and abs(v - 12.3) < 1e-12, (v, err)
    v, err = parse_dsacp_json("dsacp bench v32-layer\n" + SAMPLE_JSON + "\n")
    assert err is None and abs(v - 12.3) < 1e-12, (v, err)
    v, err = parse_dsacp_json(SAMPLE_JSON.replace('"ms"', '"s"'))
    assert err is None and abs(v - 12300.0) < 1e-9, (v, err)
    v, err = parse_dsacp_json('{"results":[{"name":"other","value":1,"unit":"ms"}]}')
    assert v is None and "decode_layer_time" in err, err
    v, err = parse_dsacp_json("usage: dsacp <command>")
    assert v is None, err
    v, err = parse_dsacp_json('{"foo":1}')
    assert v is None and "results" in err, err
    print("self-test OK: parsed decode_layer_time = 12.3 ms from the sample JSON")


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", default="32768",
                    help="context length(s) L, comma-separated (default 32768)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16",
                    help="HF dtypes to time (default float32,bfloat16)")
    ap.add_argument("--attn-impls", default="eager,sdpa",
                    help="attn_implementation values to try; the faster is reported (default eager,sdpa)")
    ap.add_argument("--hf-module", choices=["attention", "decoder-layer"], default="attention")
    ap.add_argument("--dsacp", default="build/dsacp")
    ap.add_argument("--no-dsacp", action="store_true", help="skip the dsacp side")
    ap.add_argument("--csv", help="write the table to this CSV file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=1800, help="per-point timeout in seconds")
    ap.add_argument("--self-test", action="store_true")
    # internal: one HF measurement in this process
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--attn", default="eager", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.self_test:
        self_test()
        return
    if args._worker:
        args.context = int(args.context)
        hf_worker(args)
        return

    contexts = [int(c) for c in args.context.split(",") if c.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    impls = [a.strip() for a in args.attn_impls.split(",") if a.strip()]

    def load():
        try:
            return os.getloadavg()
        except OSError:
            return None

    print(f"# hf_bench: module={args.hf_module} threads={args.threads} reps={args.reps} "
          f"(median of reps after 1 warm-up), contexts={contexts}")
    print(f"# load average at start: {load()}")
    versions = None
    rows = []
    for L in contexts:
        row = dict(context=L)
        for dt in dtypes:
            best = None
            for impl in impls:
                r = run_hf_point(args, L, dt, impl)
                if "error" in r:
                    print(f"  L={L} {dt} {impl}: FAILED: {r['error']}", flush=True)
                    row[f"hf_{dt}_{impl}_ms"] = None
                    continue
                versions = (r["torch"], r["transformers"])
                row[f"hf_{dt}_{impl}_ms"] = r["median_ms"]
                print(f"  L={L} {dt} {impl}: median {r['median_ms']:.1f} ms "
                      f"(reps {', '.join(f'{t:.1f}' for t in r['times_ms'])}; warm-up "
                      f"{r['warmup_ms']:.1f}; peak RSS {r['peak_rss_gb']:.2f} GB; load {load()})",
                      flush=True)
                if best is None or r["median_ms"] < best[1]:
                    best = (impl, r["median_ms"])
            row[f"hf_{dt}_ms"] = best[1] if best else None
            row[f"hf_{dt}_impl"] = best[0] if best else None
        if args.no_dsacp:
            row["dsacp_ms"], row["dsacp_note"] = None, "skipped (--no-dsacp)"
        else:
            row["dsacp_ms"], row["dsacp_note"] = run_dsacp(args, L)
            if row["dsacp_note"]:
                print(f"  L={L} dsacp: {row['dsacp_note']}", flush=True)
            else:
                print(f"  L={L} dsacp: decode_layer_time {row['dsacp_ms']:.3f} ms", flush=True)
        rows.append(row)

    ref = dtypes[0]
    print()
    if versions:
        print(f"# torch {versions[0]}, transformers {versions[1]}")
    print(f"# load average at end: {load()}")
    hdr = ["context"] + [f"HF {d} ms (impl)" for d in dtypes] + ["dsacp ms", f"speed-up (HF {ref} / dsacp)"]
    table = []
    for row in rows:
        cells = [str(row["context"])]
        for d in dtypes:
            v = row.get(f"hf_{d}_ms")
            cells.append("-" if v is None else f"{v:.1f} ({row[f'hf_{d}_impl']})")
        cells.append(fmt(row["dsacp_ms"], ".2f"))
        hf = row.get(f"hf_{ref}_ms")
        ratio = hf / row["dsacp_ms"] if hf and row["dsacp_ms"] else None
        row["speedup"] = ratio
        cells.append("-" if ratio is None else f"{ratio:.1f}x")
        table.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in table)) for i, h in enumerate(hdr)]
    print("  ".join(h.rjust(w) for h, w in zip(hdr, widths)))
    for c in table:
        print("  ".join(x.rjust(w) for x, w in zip(c, widths)))
    notes = {row["dsacp_note"] for row in rows if row["dsacp_note"]}
    for n in sorted(notes):
        print(f"# dsacp: {n}")

    if args.csv:
        fields = ["context"]
        for d in dtypes:
            fields += [f"hf_{d}_ms", f"hf_{d}_impl"] + [f"hf_{d}_{i}_ms" for i in impls]
        fields += ["dsacp_ms", "speedup", "dsacp_note"]
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow(row)
        print(f"# wrote {args.csv}")


if __name__ == "__main__":
    main()
