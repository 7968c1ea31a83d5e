#!/usr/bin/env bash
# The tables of docs/planning.md: `dsacp plan --json` for DeepSeek-V3.2 (the v32-layer preset's
# attention, 61 layers) on every profile in hardware/, W = 8 and 32, 128K and 1M context, batch
# 1 and 8: predicted attention time per output token (TPOT, attention layers only) per strategy,
# the prefill time of a prompt as long as the context (TTFT) per split,
# and the KV bytes per rank for the whole model; "no fit" where batch x that KV exceeds the
# device memory left after V3.2's FP8 weights (about 690 GB) spread over the W ranks.
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
        "$BUILD/dsacp" plan --preset v32-layer --layers 61 --context "$L" --cp "$W" --batch "$B" --hardware "$hw" \
          --prefill "$L" --json "$tmp/$(basename "$hw" .json)_${B}_${W}_${L}.json" >/dev/null
      done
    done
  done
done
python3 - "$tmp" "$batches" <<'PY'
import glob, json, os, sys
d, batches = sys.argv[1], sys.argv[2].split()
for hw in sorted({os.path.basename(f).split("_")[0] for f in glob.glob(d + "/*.json")}):
    for B in batches:
        runs = {}
        for W in (8, 32):
            for L in (131072, 1048576):
                runs[(W, L)] = json.load(open("%s/%s_%s_%d_%d.json" % (d, hw, B, W, L)))
        first = runs[(8, 131072)]
        print("\n**%s**, batch %s: TPOT of the 61 attention layers, ms (KV GB per rank at 1M); bold: the fastest that fits\n" % (first["hardware"], B))
        print("| strategy | W=8 128K | W=8 1M | W=32 128K | W=32 1M |")
        print("|---|---|---|---|---|")
        names = [s["strategy"] for s in first["strategies"]]
        fits = lambda k, x: int(B) * x["kv_bytes_per_rank"] * 61 <= runs[k]["mem_bytes"] - 690e9 / k[0]
        best = {}
        for k, r in runs.items():  # the fastest strategy that fits
            ok = [x for x in r["strategies"] if fits(k, x)]
            best[k] = min(ok, key=lambda x: x["tpot"])["strategy"] if ok else None
        for n in names:
            cells = []
            for k in ((8, 131072), (8, 1048576), (32, 131072), (32, 1048576)):
                s = {x["strategy"]: x for x in runs[k]["strategies"]}.get(n)
                if not s:
                    cells.append("-"); continue
                c = "%.2f" % (s["tpot"] * 1e3)
                kv = s["kv_bytes_per_rank"] * 61
                if k[1] == 1048576: c += " (%.1f)" % (kv / 1e9)
                if int(B) * kv > runs[k]["mem_bytes"] - 690e9 / k[0]: c += " no fit"
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
            for k in ((8, 131072), (8, 1048576), (32, 131072), (32, 1048576)):
                x = runs[k]["prefill"][i]
                tp = runs[k]["prefill"][0]["ttft"]
                cells.append("%.2f (%.1fx)" % (x["ttft"], tp / x["ttft"]))
            print("| %s | %s |" % (pv["split"], " | ".join(cells)))
PY
