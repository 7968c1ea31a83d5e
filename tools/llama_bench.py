#!/usr/bin/env python3
"""Side by side with llama.cpp on the CPU: prefill and decode of the same checkpoint.

Not run in CI. llama.cpp runs DeepSeek-V3.2 (architecture `deepseek32`: a real lightning indexer
and top-k, then masked attention over all keys). This script

  1. takes the llama.cpp that the llama-cpp-python source package on PyPI vendors (downloaded with
     `pip download --no-binary :all: llama-cpp-python`, or --llama-src DIR|TARBALL) and builds its
     `llama-bench` with CMake (Release, GGML_NATIVE, OpenMP) unless --llama-bench is given, and
     tools/llama_greedy.c against its libllama (the greedy tokens, which llama-bench cannot give:
     it feeds random tokens and prints timings only);
  2. converts a dsacp checkpoint (`dsacp init-model --preset P --weights bf16`) to GGUF with the
     vendored gguf-py (needs numpy): tensors named by gguf's own name map for DEEPSEEK32, kv_b
     split into k_b (transposed) and v_b, experts stacked, a placeholder SPM vocabulary of
     vocab_size tokens (no text is tokenized: both sides feed token ids);
  3. times both sides interleaved (dsacp deployed, dsacp exact, llama.cpp, ... --reps times each)
     with the same thread count:
       prefill: `dsacp generate --prompt-len L --chunk L --new-tokens N` (its one L-token prefill
                step) against `llama-bench -p L -n 0 -ub L -b L`;
       decode:  the same dsacp run's ms/token over its N decode steps against
                `llama-bench -p 0 -n N -d L` (N tokens generated after a context of L);
     dsacp runs twice per repetition: deployed (`--numerics deployed --kv-dtype bf16`: the
     bf16-dot chain, docs/numerics.md -- activations rounded to bf16, products of bf16 pairs
     accumulated in f32, bf16 latents) and exact (`--numerics exact`, f32 throughout);
  4. compares greedy tokens: dsacp generate's prompt is --prompt-len ids from its seed (the same
     generator, dsacp_rng, reproduced here and checked against libdsacp by --self-test), which
     llama_greedy prefills in one batch and then decodes greedily; a prefill cell compares the
     first token (the prefill's argmax), a decode cell all N;
     and prints, per cell and per dsacp numerics, the median ratio dsacp / llama.cpp (< 1: dsacp
     faster), the arithmetic each side ran and whether the tokens agree.

llama.cpp's arithmetic on a BF16 GGUF on the CPU: the weights stay bf16, the activations are
rounded to bf16 (BF16's vec_dot_type) and dotted in f32 (`vdpbf16ps` where it was built with
AVX512_BF16, which llama_greedy's system_info line shows), an f16 KV cache, f32 softmax.

Setup (any Python >= 3.10, cmake, a C and C++ compiler):

    python3 -m venv /tmp/lb && /tmp/lb/bin/pip install numpy
    build/dsacp init-model --preset small --weights bf16 --out /tmp/small
    /tmp/lb/bin/python tools/llama_bench.py --model /tmp/small --contexts 1024,4096,8192 --threads 2

`--self-test` checks the name mapping and the vocabulary of a converted tiny model and the prompt
ids against libdsacp's generator, and exits.
"""

import argparse
import glob
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tarfile
import time
import ctypes

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ---------------------------------------------------------------- llama.cpp source and build

def llama_source(arg, cache):
    """The vendored llama.cpp tree of the llama-cpp-python sdist (downloaded when not given)."""
    if arg and os.path.isdir(arg):
        cand = os.path.join(arg, "vendor", "llama.cpp")
        return cand if os.path.isdir(cand) else arg
    os.makedirs(cache, exist_ok=True)
    tarball = arg
    if not tarball:
        found = sorted(glob.glob(os.path.join(cache, "llama_cpp_python-*.tar.gz")))
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "llama-cpp-python", "-d", cache], check=True)
            found = sorted(glob.glob(os.path.join(cache, "llama_cpp_python-*.tar.gz")))
        tarball = found[-1]
    top = os.path.join(cache, os.path.basename(tarball)[:-len(".tar.gz")])
    if not os.path.isdir(top):
        with tarfile.open(tarball) as t:
            t.extractall(cache)
    return os.path.join(top, "vendor", "llama.cpp")


def build_llama_bench(src, jobs):
    build = os.path.join(src, "build")
    exe = os.path.join(build, "bin", "llama-bench")
    if os.path.exists(exe):
        return exe
    subprocess.run(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF",
                    "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF"], check=True)
    subprocess.run(["cmake", "--build", build, "-j", str(jobs), "--target", "llama-bench"], check=True)
    return exe


def build_llama_greedy(src, bench):
    """tools/llama_greedy.c against the libllama next to llama-bench (built once)."""
    bindir = os.path.dirname(bench)
    exe = os.path.join(bindir, "llama_greedy")
    c_src = os.path.join(HERE, "llama_greedy.c")
    if os.path.exists(exe) and os.path.getmtime(exe) >= os.path.getmtime(c_src):
        return exe
    libs = glob.glob(os.path.join(bindir, "libllama.so*")) + glob.glob(os.path.join(src, "build", "**", "libllama.so"),
                                                                     recursive=True)
    if not libs:
        raise SystemExit(f"no libllama.so near {bench}: build llama.cpp with BUILD_SHARED_LIBS=ON")
    libdir = os.path.dirname(libs[0])
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-std=c11", c_src, "-I", os.path.join(src, "include"),
                    "-I", os.path.join(src, "ggml", "include"), "-L", libdir, "-lllama",
                    "-Wl,-rpath," + libdir, "-o", exe], check=True)
    return exe


# ---------------------------------------------------------------- dsacp's prompt ids

MASK = (1 << 64) - 1


def prompt_ids(seed, n, vocab):
    """dsacp generate's prompt: n ids dsacp_rng_u64 % vocab from dsacp_rng_seed(seed) (core.c:
    four splitmix64 outputs seed xoshiro256**)."""
    x, s = seed & MASK, []
    for _ in range(4):
        x = (x + 0x9E3779B97F4A7C15) & MASK
        z = x
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        s.append(z ^ (z >> 31))
    out = []
    for _ in range(n):
        r = (s[1] * 5) & MASK
        r = (((r << 7) | (r >> 57)) & MASK) * 9 & MASK
        t = (s[1] << 17) & MASK
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = ((s[3] << 45) | (s[3] >> 19)) & MASK
        out.append(r % vocab)
    return out


def check_prompt_ids(dsacp):
    """prompt_ids against libdsacp's dsacp_rng (the library beside the dsacp binary)."""
    lib = None
    for name in ("libdsacp.so", "libdsacp.so.0"):
        path = os.path.join(os.path.dirname(os.path.abspath(dsacp)), name)
        if os.path.exists(path):
            lib = ctypes.CDLL(path)
            break
    if lib is None:
        return "not checked (no libdsacp.so beside " + dsacp + ")"
    state = (ctypes.c_uint64 * 4)()
    lib.dsacp_rng_u64.restype = ctypes.c_uint64
    for seed in (0, 7, 2**63 + 5):
        lib.dsacp_rng_seed(state, ctypes.c_uint64(seed))
        want = [lib.dsacp_rng_u64(state) % 129280 for _ in range(50)]
        assert prompt_ids(seed, 50, 129280) == want, (seed, want[:4])
    return "equal to libdsacp's for 3 seeds"


def tokens_of(text):
    m = re.search(r"^generated:((?: -?\d+)*)\s*$", text, re.M)
    return [int(v) for v in m.group(1).split()] if m else None


def agreement(a, b):
    """'agree (n/n)', 'differ from token k (m/n equal)' or 'not compared (why)'."""
    if a is None or b is None:
        return "not compared (no tokens from " + ("dsacp" if a is None else "llama.cpp") + ")"
    n = min(len(a), len(b))
    if n == 0:
        return "not compared (no tokens)"
    same = sum(x == y for x, y in zip(a, b))
    first = next((i for i in range(n) if a[i] != b[i]), None)
    return f"agree ({n}/{n})" if first is None else f"differ from token {first} ({same}/{n} equal)"


# ---------------------------------------------------------------- safetensors (numpy)

def read_safetensors(path, np):
    """{name: numpy array}; BF16 comes back as uint16 bit patterns (GGUF stores them as is)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    dt = {"F32": np.float32, "BF16": np.uint16, "F16": np.float16}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dt:
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}; convert a --weights bf16 or f32 "
                             "checkpoint (llama.cpp's deepseek32 takes no FP8 block scales)")
        a, b = info["data_offsets"]
        out[name] = (mm[base + a:base + b].view(dt[info["dtype"]]).reshape(info["shape"]), info["dtype"])
    return out


def load_checkpoint(d, np):
    tensors = {}
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        tensors.update(read_safetensors(p, np))
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    return cfg, tensors


# ---------------------------------------------------------------- GGUF conversion

def convert(model_dir, out, gguf_py, np):
    sys.path.insert(0, gguf_py)
    import gguf  # noqa: E402  (the vendored gguf-py matches the llama.cpp being built)

    cfg, tensors = load_checkpoint(model_dir, np)
    L = cfg["num_hidden_layers"]
    H = cfg["num_attention_heads"]
    nope, rope, dv, dc = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    V = cfg["vocab_size"]
    arch = gguf.MODEL_ARCH.DEEPSEEK32
    w = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[arch])
    w.add_block_count(L)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(1)  # MLA as MQA over the latent, as the official converter writes it
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    rs = cfg.get("rope_scaling") or {}
    if rs.get("type", rs.get("rope_type")) == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        if "beta_fast" in rs:
            w.add_rope_scaling_yarn_beta_fast(rs["beta_fast"])
        if "beta_slow" in rs:
            w.add_rope_scaling_yarn_beta_slow(rs["beta_slow"])
        if "mscale_all_dim" in rs:
            w.add_rope_scaling_yarn_log_mul(0.1 * rs["mscale_all_dim"])
    n_exp = cfg.get("n_routed_experts") or 0
    dense = cfg.get("first_k_dense_replace", L if not n_exp else 0)
    w.add_leading_dense_block_count(min(dense, L) if n_exp else L)
    w.add_vocab_size(V)
    w.add_q_lora_rank(cfg["q_lora_rank"])
    w.add_kv_lora_rank(dc)
    w.add_key_length(dc + rope)
    w.add_value_length(dc)
    w.add_key_length_mla(nope + rope)
    w.add_value_length_mla(dv)
    w.add_expert_feed_forward_length(cfg.get("moe_intermediate_size") or cfg["intermediate_size"])
    w.add_expert_shared_count(cfg.get("n_shared_experts") or 0)
    if n_exp:
        w.add_expert_count(n_exp)
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        if cfg.get("n_group"):
            w.add_expert_group_count(cfg["n_group"])
            w.add_expert_group_used_count(cfg["topk_group"])
        if cfg.get("routed_scaling_factor") is not None:
            w.add_expert_weights_scale(cfg["routed_scaling_factor"])
        if cfg.get("norm_topk_prob"):
            w.add_expert_weights_norm(True)
    w.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    w.add_rope_dimension_count(rope)
    w.add_indexer_head_count(cfg["index_n_heads"])
    w.add_indexer_key_length(cfg["index_head_dim"])
    w.add_indexer_top_k(cfg["index_topk"])
    # Placeholder vocabulary: the 256 byte tokens SPM expects, then <t{i}>; ids are fed directly.
    toks, types = [], []
    for i in range(V):
        if 3 <= i < 259:
            toks.append(f"<0x{i - 3:02X}>".encode())
            types.append(gguf.TokenType.BYTE)
        elif i < 3:
            toks.append(["<unk>", "<s>", "</s>"][i].encode())
            types.append(gguf.TokenType.UNKNOWN if i == 0 else gguf.TokenType.CONTROL)
        else:
            toks.append(f"<t{i}>".encode())
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * V)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)

    names = gguf.get_tensor_name_map(arch, L)

    def put(hf_name, arr, dtype):
        hf_name = hf_name.replace("e_score_correction_bias", "e_score_correction.bias")
        g = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise SystemExit(f"no GGUF name for {hf_name}")
        raw = gguf.GGMLQuantizationType.BF16 if dtype == "BF16" else None
        if dtype == "F32" or arr.ndim == 1:
            if dtype == "BF16":  # norms and biases as f32
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            arr = np.ascontiguousarray(arr, dtype=np.float32)
            raw = None
        w.add_tensor(g, np.ascontiguousarray(arr), raw_dtype=raw)
        return g

    experts = {}
    written = []
    for name, (arr, dtype) in tensors.items():
        layer = re.match(r"model\.layers\.(\d+)\.", name)
        if layer and int(layer.group(1)) >= L:
            continue  # the MTP module (layers past num_hidden_layers): dsacp generate does not run it
        m = re.match(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$", name)
        if m:
            experts.setdefault((int(m.group(1)), m.group(3)), {})[int(m.group(2))] = (arr, dtype)
            continue
        if name.endswith("kv_b_proj.weight"):
            kv = np.asarray(arr).reshape(H, nope + dv, dc)
            k_b = np.ascontiguousarray(kv[:, :nope, :].transpose(0, 2, 1))  # [H][dc][nope]
            v_b = np.ascontiguousarray(kv[:, nope:, :])                     # [H][dv][dc]
            written.append(put(name.replace("kv_b_proj", "k_b_proj"), k_b, dtype))
            written.append(put(name.replace("kv_b_proj", "v_b_proj"), v_b, dtype))
            continue
        written.append(put(name, np.asarray(arr), dtype))
    for (layer, kind), parts in sorted(experts.items()):
        stack = np.stack([np.asarray(parts[i][0]) for i in range(len(parts))])
        written.append(put(f"model.layers.{layer}.mlp.experts.{kind}_proj.weight", stack, parts[0][1]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


# ---------------------------------------------------------------- timing

def run(cmd, env):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return p.stdout, time.perf_counter() - t0


NUMERICS = {
    "deployed": ["--numerics", "deployed", "--kv-dtype", "bf16"],
    "exact": ["--numerics", "exact"],
}
ARITH = {
    "deployed": "bf16-dot chain (bf16 activations x bf16 weights, f32 accumulation), bf16 latents",
    "exact": "f32 (bf16 weights widened), f32 latents",
}


def dsacp_run(dsacp, model, L, n, numerics, env):
    """(prefill seconds of one L-token step, seconds per decode token after it, generated ids)."""
    out, _ = run([dsacp, "generate", "--model", model, "--prompt-len", str(L), "--chunk", str(L),
                  "--new-tokens", str(n)] + NUMERICS[numerics], env)
    p = re.search(r"prefill in chunks of \d+: ([0-9.]+) s", out)
    d = re.search(r"decode: \d+ tokens in [0-9.]+ s \(([0-9.]+) ms/token\)", out)
    return float(p.group(1)), float(d.group(1)) * 1e-3, tokens_of(out)


def llama(bench, gguf_path, args, threads, env):
    out, _ = run([bench, "-m", gguf_path, "-t", str(threads), "-r", "1", "-o", "json"] + args, env)
    rows = json.loads(out)
    return rows[0]["avg_ns"] * 1e-9, rows[0]


def llama_tokens(greedy, gguf_path, ids, n, threads, env):
    """llama.cpp's greedy tokens after the prompt ids and its arithmetic, or (None, why)."""
    p = subprocess.run([greedy, gguf_path, str(threads), str(n)], input=" ".join(map(str, ids)),
                       capture_output=True, text=True, env=env)
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or ["no message"])[-1]
        return None, f"llama_greedy failed: {why}"
    bf16 = re.search(r"AVX512_BF16 = 1", p.stderr) is not None
    return tokens_of(p.stdout), ("bf16 activations x bf16 weights, f32 accumulation (" +
                                 ("vdpbf16ps" if bf16 else "no AVX512_BF16 kernel: f32 FMAs") +
                                 "), f16 KV cache")


def cell(L, what, numerics, ds, ll, agree):
    """One row: context, prefill/decode, dsacp numerics, medians and ratio, arithmetic, tokens."""
    return dict(context=L, phase=what, dsacp=numerics, dsacp_s=statistics.median(ds),
                llama_s=statistics.median(ll), ratio=statistics.median([x / y for x, y in zip(ds, ll)]),
                tokens=agree)


def measure(a, bench, greedy, gg, L, vocab, env):
    """The cells of context L: prefill and decode, each numerics against llama.cpp."""
    t = {(k, ph): [] for k in NUMERICS for ph in ("prefill", "decode")}
    pl, dl, toks = [], [], {}
    for _ in range(a.reps):
        for k in NUMERICS:
            p, d, ids = dsacp_run(a.dsacp, a.model, L, a.decode_tokens, k, env)
            t[(k, "prefill")].append(p)
            t[(k, "decode")].append(d)
            toks.setdefault(k, ids)
        pl.append(llama(bench, gg, ["-p", str(L), "-n", "0", "-b", str(L), "-ub", str(L)], a.threads, env)[0])
        tl, _ = llama(bench, gg, ["-p", "0", "-n", str(a.decode_tokens), "-d", str(L)], a.threads, env)
        dl.append(tl / a.decode_tokens)
    lt, larith = llama_tokens(greedy, gg, prompt_ids(0, L, vocab), a.decode_tokens, a.threads, env) if greedy \
        else (None, "--no-tokens given")
    rows = []
    for k in NUMERICS:
        for ph, ll in (("prefill", pl), ("decode", dl)):
            n = 1 if ph == "prefill" else None  # a prefill cell: its argmax, the first token
            ds_tok = toks.get(k)
            agree = f"not compared ({larith})" if lt is None else agreement(ds_tok and ds_tok[:n], lt[:n])
            r = cell(L, ph, k, t[(k, ph)], ll, agree)
            r.update(dsacp_arith=ARITH[k], llama_arith=larith if lt is not None else "bf16 weights (kernels unknown)")
            rows.append(r)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="dsacp checkpoint directory (bf16 or f32 weights)")
    ap.add_argument("--dsacp", default=os.path.join(ROOT, "build", "dsacp"))
    ap.add_argument("--contexts", default="1024,4096,8192")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--llama-src", help="llama-cpp-python sdist (.tar.gz) or its unpacked directory")
    ap.add_argument("--llama-bench", help="a built llama-bench (skips the build)")
    ap.add_argument("--cache", default=os.path.join("/tmp", "dsacp-llama"))
    ap.add_argument("--gguf", help="where to write the GGUF (default: CACHE/<model>.gguf)")
    ap.add_argument("--csv", help="also write the rows here")
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--no-tokens", action="store_true", help="skip llama_greedy (timings only)")
    ap.add_argument("--omp-wait-policy", choices=["inherit", "passive", "active"], default="inherit",
                    help="OMP_WAIT_POLICY for both sides (both use libgomp; on a machine shared with other "
                         "work libgomp's default spin-wait costs each side a scheduler slice per parallel region, "
                         "passive avoids that)")
    a = ap.parse_args()
    try:
        import numpy as np
    except ImportError:
        raise SystemExit("tools/llama_bench.py: numpy is needed to write the GGUF; run it from a venv that has it:\n"
                         "  python3 -m venv /tmp/lb && /tmp/lb/bin/pip install numpy && /tmp/lb/bin/python "
                         + " ".join(sys.argv))

    src = llama_source(a.llama_src, a.cache)
    gguf_py = os.path.join(src, "gguf-py")
    if a.self_test:
        import tempfile
        print(f"self-test: prompt ids {check_prompt_ids(a.dsacp)}")
        assert agreement([1, 2, 3], [1, 2, 3]) == "agree (3/3)" and agreement([1, 2], [1, 5]).startswith("differ from token 1")
        assert tokens_of("x\ngenerated: 5 7 11\ndecode: ...") == [5, 7, 11]
        with tempfile.TemporaryDirectory() as d:
            subprocess.run([a.dsacp, "init-model", "--preset", "tiny-moe", "--weights", "bf16", "--out",
                            os.path.join(d, "m")], check=True, capture_output=True)
            names = convert(os.path.join(d, "m"), os.path.join(d, "m.gguf"), gguf_py, np)
            assert "blk.0.attn_k_b.weight" in names and "blk.1.ffn_gate_exps.weight" in names, names
            assert "blk.0.indexer.attn_q_b.weight" in names, names
            print(f"self-test: {len(names)} tensors mapped")
        return
    if not a.model:
        ap.error("--model is required")
    bench = a.llama_bench or build_llama_bench(src, a.threads)
    greedy = None if a.no_tokens else build_llama_greedy(src, bench)
    gg = a.gguf or os.path.join(a.cache, os.path.basename(os.path.normpath(a.model)) + ".gguf")
    if not os.path.exists(gg) or os.path.getmtime(gg) < os.path.getmtime(os.path.join(a.model, "config.json")):
        convert(a.model, gg, gguf_py, np)
    with open(os.path.join(a.model, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    if a.omp_wait_policy != "inherit":
        env["OMP_WAIT_POLICY"] = a.omp_wait_policy.upper()
    rows = []
    print(f"model {a.model}, {a.threads} threads, OMP_WAIT_POLICY {env.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {os.getloadavg()[0]:.2f} at start, {a.reps} interleaved reps, median ratio dsacp / llama.cpp "
          "(prefill: s per step; decode: ms per token)")
    print(f"{'context':>8} {'phase':>8} {'dsacp':>9} {'dsacp':>10} {'llama.cpp':>10} {'ratio':>6}  tokens")
    for L in [int(x) for x in a.contexts.split(",")]:
        for r in measure(a, bench, greedy, gg, L, vocab, env):
            rows.append(r)
            k = 1 if r["phase"] == "prefill" else 1e3
            print(f"{L:>8} {r['phase']:>8} {r['dsacp']:>9} {k * r['dsacp_s']:>10.3f} {k * r['llama_s']:>10.3f} "
                  f"{r['ratio']:>6.2f}  {r['tokens']}", flush=True)
    if rows:
        print("arithmetic: " + "; ".join(f"dsacp {k}: {ARITH[k]}" for k in NUMERICS) + "; llama.cpp: " +
              rows[0]["llama_arith"])
    if a.csv:
        with open(a.csv, "w") as f:
            f.write(",".join(rows[0].keys()) + "\n")
            for r in rows:
                f.write(",".join(json.dumps(v) if isinstance(v, str) else str(v) for v in r.values()) + "\n")


if __name__ == "__main__":
    main()
