#!/usr/bin/env bash
# The tables of docs/planning.md: `dsacp plan --json` for the whole DeepSeek-V3.2 (--preset v32:
# 61 layers, 256 routed experts spread over the ranks) on every profile in hardware/, W = 8 and
# 32, 128K and 1M context, batch 1 and 8: predicted time per output token (TPOT, whole model) per
# strategy with what a rank holds (batch x KV + weights, GB; "no fit" beyond its memory), the
# prefill time of a prompt as long as the context (TTFT, attention layers) per split, and a
# chunked-prefill table (a 2048-token chunk after the context, per context path).
#   bench/plan_tables.sh [--batches "1 8"]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
batches="1 8"
[ "${1:-}" = --batches ] && batches=$2
tmp=$(mktemp -d /tmp/dsacp-plan-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for hw in hardware/*.json; do
  for B in $batches; do
    for W in 8 32; do
      for L in 131072 1048576; do
        "$BUILD/dsacp" plan --preset v32 --context "$L" --cp "$W" --batch "$B" --hardware "$hw" \
          --prefill "$L" --json "$tmp/$(basename "$hw" .json)_${B}_${W}_${L}.json" >/dev/null
      done
    done
  done
done
python3 - "$tmp" "$batches" <<'PY'
import glob, json, os, sys
d, batches = sys.argv[1], sys.argv[2].split()
K = ((8, 131072), (8, 1048576), (32, 131072), (32, 1048576))
for hw in sorted({os.path.basename(f).split("_")[0] for f in glob.glob(d + "/*.json")}):
    for B in batches:
        runs = {k: json.load(open("%s/%s_%s_%d_%d.json" % (d, hw, B, k[0], k[1]))) for k in K}
        first = runs[K[0]]
        print("\n**%s**, batch %s: TPOT of the whole model, ms (GB held per rank: batch x KV + weights); bold: the fastest that fits\n" % (first["hardware"], B))
        print("| strategy | W=8 128K | W=8 1M | W=32 128K | W=32 1M |")
        print("|---|---|---|---|---|")
        best = {}
        for k, r in runs.items():
            ok = [x for x in r["strategies"] if x["fits"]]
            best[k] = min(ok, key=lambda x: x["tpot_model"])["strategy"] if ok else None
        for n in [s["strategy"] for s in first["strategies"]]:
            cells = []
            for k in K:
                s = {x["strategy"]: x for x in runs[k]["strategies"]}.get(n)
                if not s:
                    cells.append("-"); continue
                c = "%.2f (%.0f)" % (s["tpot_model"] * 1e3, s["held_per_rank"] / 1e9)
                if not s["fits"]: c += " no fit"
                if best[k] == n: c = "**" + c + "**"
                cells.append(c)
            print("| %s | %s |" % (n, " | ".join(cells)))
        if B != batches[0]:
            continue
        print("\n**%s**: TTFT of a fresh prompt as long as the context, 61 attention layers, s\n" % first["hardware"])
        print("| prefill | W=8 128K | W=8 1M | W=32 128K | W=32 1M |")
        print("|---|---|---|---|---|")
        for i, pv in enumerate(first["prefill"]):
            cells = []
            for k in K:
                x = runs[k]["prefill"][i]
                tp = runs[k]["prefill"][0]["ttft"]
                cells.append("%.2f (%.1fx)" % (x["ttft"], tp / x["ttft"]))
            print("| %s | %s |" % (pv["split"], " | ".join(cells)))
        print("\n**%s**: a %d-token chunk after the context, 61 attention layers, ms: gathered / distributed (the byte rule's pick)\n" % (first["hardware"], first["chunk_tokens"]))
        print("| strategy | W=8 128K | W=8 1M | W=32 128K | W=32 1M |")
        print("|---|---|---|---|---|")
        for i, cv in enumerate(first["chunk"]):
            cells = []
            for k in K:
                x = runs[k]["chunk"][i]
                g, dd = x["gather"]["t_layer"] * 61e3, x["distributed"]["t_layer"] * 61e3
                cells.append("%s / %s (%s)" % (("**%.1f**" if g <= dd else "%.1f") % g, ("**%.1f**" if dd < g else "%.1f") % dd, x["auto"][0]))
            print("| %s | %s |" % (cv["strategy"], " | ".join(cells)))
PY
