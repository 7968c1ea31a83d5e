#!/usr/bin/env bash
# File safety of every CLI reader and writer (issue 7, defects 4-7 and 16):
#  - a symlink planted at the predictable temporary names (<out>.tmp.<pid>) is never followed;
#  - an existing output that is a FIFO, directory, symlink or (as root) a device node is refused
#    with a message naming it, and stays what it was;
#  - a FIFO as config.json, as the weights file or as --input fails at once with a message;
#  - init-model that fails (file size limit: EFBIG, as a full disk) leaves no directory behind.
# Every command that could hang runs under `timeout 10`, so a regression fails instead.
set -u
. "$(dirname "$0")/lib/common.sh"

"$DSACP" init-model --preset tiny --out "$tmp/m" --seed 3 >/dev/null || { echo "init-model failed"; exit 1; }
"$DSACP" make-input --out "$tmp/in.safetensors" --requests 2 --length 12 --vocab 512 --chunk 5 --seed 4 >/dev/null \
  || { echo "make-input failed"; exit 1; }
echo "precious" >"$tmp/victim"

victim_ok() { echo precious | cmp -s - "$tmp/victim"; }

# expect_refusal NAME PATTERN CMD...: non-zero exit (not a timeout or a signal), the message has
# PATTERN, the victim is untouched.
expect_refusal() {
  local name=$1 pat=$2; shift 2
  timeout 10 "$@" >"$tmp/out" 2>"$tmp/err"; local rc=$?
  if (( rc != 0 && rc != 124 && rc < 128 )) && grep -qF -- "$pat" "$tmp/err" && victim_ok; then
    pass "$name: $(head -n1 "$tmp/err")"
  else
    fail "$name (rc $rc, victim $(victim_ok && echo intact || echo CHANGED)): $(cat "$tmp/err")"
  fi
}

# ---- defect 4: planted symlinks at the old predictable temporary name ----
# `exec` keeps the shell's pid, so $$ inside bash -c is the writer's pid (timeout goes outside).
planted() { # OUT CMD...: plants OUT.tmp.<pid> -> victim, then runs CMD as that pid
  local out=$1; shift
  timeout 10 bash -c 'ln -s "$1" "$2.tmp.$$" && shift 2 && exec "$@"' _ "$tmp/victim" "$out" "$@"
}
if planted "$tmp/p_in.safetensors" "$DSACP" make-input --out "$tmp/p_in.safetensors" --requests 1 \
     --length 4 --vocab 512 --seed 1 >/dev/null 2>"$tmp/err" && victim_ok && [[ -f $tmp/p_in.safetensors ]]; then
  pass "make-input ignores a symlink planted at its temporary name"
else
  fail "make-input followed a planted symlink (victim changed): $(cat "$tmp/err")"
fi
echo precious >"$tmp/victim"
if planted "$tmp/p_out.safetensors" "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" \
     --output "$tmp/p_out.safetensors" >/dev/null 2>"$tmp/err" && victim_ok && [[ -f $tmp/p_out.safetensors ]]; then
  pass "forward --output ignores a symlink planted at its temporary name"
else
  fail "forward followed a planted symlink (victim changed): $(cat "$tmp/err")"
fi
echo precious >"$tmp/victim"
mkdir "$tmp/pm"
if timeout 10 bash -c 'ln -s "$1" "$2/model.safetensors.tmp.$$" && ln -s "$1" "$2/config.json.tmp.$$" && shift 2 && exec "$@"' _ \
     "$tmp/victim" "$tmp/pm" "$DSACP" init-model --preset tiny --out "$tmp/pm" >/dev/null 2>"$tmp/err" \
   && victim_ok && [[ -f $tmp/pm/model.safetensors && -f $tmp/pm/config.json ]]; then
  pass "init-model ignores symlinks planted at its temporary names"
else
  fail "init-model followed a planted symlink (victim changed): $(cat "$tmp/err")"
fi
echo precious >"$tmp/victim"

# ---- defect 5: outputs that are not regular files are refused and stay as they were ----
mkfifo "$tmp/out.fifo"
expect_refusal "forward --output FIFO" "$tmp/out.fifo" \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$tmp/out.fifo"
[[ -p $tmp/out.fifo ]] && pass "the FIFO is still a FIFO" || fail "the FIFO was replaced"
expect_refusal "make-input --out FIFO" "$tmp/out.fifo" "$DSACP" make-input --out "$tmp/out.fifo"
[[ -p $tmp/out.fifo ]] && pass "the FIFO is still a FIFO after make-input" || fail "make-input replaced the FIFO"
ln -s "$tmp/victim" "$tmp/out.link"
expect_refusal "forward --output symlink" "$tmp/out.link" \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$tmp/out.link"
[[ -L $tmp/out.link ]] && pass "the symlink is still a symlink" || fail "the symlink was replaced"
mkdir "$tmp/out.dir"
expect_refusal "make-input --out directory" "$tmp/out.dir" "$DSACP" make-input --out "$tmp/out.dir"
if mknod "$tmp/full" c 1 7 2>/dev/null; then
  expect_refusal "forward --output device node" "$tmp/full" \
    "$DSACP" forward --model "$tmp/m" --input "$tmp/in.safetensors" --output "$tmp/full"
  [[ -c $tmp/full ]] && pass "the device node is still a device" || fail "the device node became $(stat -c %F "$tmp/full")"
  # A model directory whose config.json is a device: init-model refuses to replace it.
  mkdir "$tmp/devm" && mknod "$tmp/devm/config.json" c 1 7
  expect_refusal "init-model over a device config.json" "config.json" \
    "$DSACP" init-model --preset tiny --out "$tmp/devm"
  [[ -c $tmp/devm/config.json && ! -e $tmp/devm/model.safetensors ]] && pass "init-model left the device and wrote no weights" \
    || fail "init-model replaced the device or left weights: $(ls -l "$tmp/devm")"
else
  echo "skip device-node cases (mknod needs root)"
fi

# ---- defect 6: FIFOs as inputs fail at once, naming the file ----
mkdir "$tmp/fc"
cp "$tmp/m/model.safetensors" "$tmp/fc/" && mkfifo "$tmp/fc/config.json"
expect_refusal "FIFO as config.json (inspect)" "config.json" "$DSACP" inspect --model "$tmp/fc"
expect_refusal "FIFO as config.json (forward)" "config.json" \
  "$DSACP" forward --model "$tmp/fc" --input "$tmp/in.safetensors" --output "$tmp/o1.safetensors"
mkdir "$tmp/fw"
cp "$tmp/m/config.json" "$tmp/fw/" && mkfifo "$tmp/fw/shard-1.safetensors"
echo '{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "shard-1.safetensors"}}' \
  >"$tmp/fw/model.safetensors.index.json"
expect_refusal "FIFO as a weights shard" "shard-1.safetensors: is a FIFO" "$DSACP" inspect --model "$tmp/fw"
mkfifo "$tmp/in.fifo"
expect_refusal "FIFO as --input" "$tmp/in.fifo" \
  "$DSACP" forward --model "$tmp/m" --input "$tmp/in.fifo" --output "$tmp/o2.safetensors"
[[ ! -e $tmp/o1.safetensors && ! -e $tmp/o2.safetensors ]] && pass "no output after refused inputs" \
  || fail "output written after a refused input"

# ---- defect 7: a failed init-model leaves nothing ----
# A 64 KiB file size limit makes the weights' write fail with EFBIG (SIGXFSZ ignored).
( ulimit -f 64; trap '' XFSZ; exec timeout 10 "$DSACP" init-model --preset tiny --out "$tmp/fail_m" ) >/dev/null 2>"$tmp/err"
rc=$?
if (( rc != 0 && rc != 124 && rc < 128 )) && [[ ! -e $tmp/fail_m ]]; then
  pass "failed init-model removed its directory: $(head -n1 "$tmp/err")"
else
  fail "failed init-model (rc $rc) left $(ls -A "$tmp/fail_m" 2>/dev/null | tr '\n' ' ') : $(cat "$tmp/err")"
fi
mkdir "$tmp/keep_m" && echo mine >"$tmp/keep_m/notes"
( ulimit -f 64; trap '' XFSZ; exec timeout 10 "$DSACP" init-model --preset tiny --out "$tmp/keep_m" ) >/dev/null 2>&1
if [[ "$(ls -A "$tmp/keep_m")" == notes ]]; then pass "failed init-model in an existing directory left only its files"
else fail "failed init-model left: $(ls -A "$tmp/keep_m" | tr '\n' ' ')"; fi

# ---- nothing but the expected names: no temporaries anywhere ----
left=$(find "$tmp" -name '*.tmp.*' ! -type l | head -n3)
[[ -z $left ]] && pass "no temporaries left" || fail "temporaries left: $left"

finish
