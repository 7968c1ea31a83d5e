#!/usr/bin/env bash
# Issue 7, defect 14: the repository's own docs are enough for a reader of the repository, and
# bench/targets.sh leaves the tracked results alone unless asked.
#  - README.md, docs/ and tools/ never point at documents outside the repository (dsa-spec.md,
#    style.md, cp-design.md); every "dsa-math.md section N" reference names one of its sections;
#  - the README's claims about MPI match the code: context parallelism exists (issue 8), so the
#    README says how to start it and points at docs/context-parallel.md;
#  - bench/targets.sh writes its run JSON to a scratch directory by default, and into
#    bench/results/targets only with --write-results (run on a copy, with a stand-in dsacp).
set -u
. "$(dirname "$0")/lib/common.sh"
src=${DSACP_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}

cd "$src" || { echo "no source dir"; exit 1; }
mapfile -t files < <(git ls-files README.md 'docs/*.md' 'tools/*.c' 'tools/*.h' 'src/*.c' 'src/*.h' 'include/*.h' \
                     'tests/*.c' 'tests/*.h' 'bench/*.c' 'bench/*.sh' 2>/dev/null)
(( ${#files[@]} )) || files=(README.md docs/*.md tools/cli/*.c tools/cli/*.h src/*/*.c src/*/*.h include/*.h)
hits=$(grep -nE 'dsa-spec\.md|style\.md|cp-design\.md|shared/' "${files[@]}" 2>/dev/null)
if [[ -z $hits ]]; then pass "no reference to documents outside the repository"
else fail "references to documents outside the repository:"; echo "$hits"; fi

for n in 1 2 3 4 5 6 7 8; do
  grep -q "^## $n\. " docs/dsa-math.md || fail "docs/dsa-math.md has no section $n"
done
grep -q '^## 9\.' docs/dsa-math.md && fail "docs/dsa-math.md has a section 9 (keep the numbering 1..8)"
bad=$(git -C "$src" grep -nhoE 'dsa-math\.md,? (section|§) ?[0-9]+' 2>/dev/null | grep -oE '[0-9]+$' | sort -u |
      awk '$1 < 1 || $1 > 8')
if [[ -z $bad ]]; then pass "every dsa-math.md section reference is in 1..8"; else fail "dsa-math.md sections $bad do not exist"; fi
[[ -s docs/conventions.md ]] && pass "docs/conventions.md exists" || fail "docs/conventions.md missing"

if grep -q 'mpirun' README.md && grep -q 'docs/context-parallel.md' README.md && [[ -s docs/context-parallel.md ]]; then
  pass "README.md says how to run across MPI ranks and where the design is"
else fail "README.md does not say how context parallelism runs (mpirun, docs/context-parallel.md)"; fi

# bench/targets.sh on a copy, so that even a regression cannot touch the real results.
if command -v jq >/dev/null; then
  mkdir -p "$tmp/bench/results/targets"
  cp bench/targets.sh "$tmp/bench/targets.sh"
  echo sentinel >"$tmp/bench/results/targets/A_r1.json"
  cat >"$tmp/fake-dsacp" <<'EOF'
#!/bin/sh
echo '{"machine":{"cpu":"fake","cores":1,"isa":"scalar","openblas":"none"},"results":[]}'
EOF
  chmod +x "$tmp/fake-dsacp"
  TMPDIR=$tmp bash "$tmp/bench/targets.sh" --dsacp "$tmp/fake-dsacp" --runs 1 >"$tmp/out" 2>"$tmp/err"; rc=$?
  if (( rc == 0 )) && [[ $(cat "$tmp/bench/results/targets/A_r1.json") == sentinel ]] &&
     [[ ! -e $tmp/bench/results/targets/B_r1.json ]]; then pass "targets.sh leaves bench/results/targets alone"
  else fail "targets.sh (rc $rc) rewrote bench/results/targets: $(cat "$tmp/err")"; fi
  scratch=$(sed -n 's/^targets.sh: run JSON in \([^ ]*\) .*/\1/p' "$tmp/err")
  if [[ -n $scratch && -s $scratch/A_r1.json && -s $scratch/C_r1.json ]]; then pass "targets.sh wrote to scratch $scratch"
  else fail "targets.sh names no scratch directory with the runs: $(cat "$tmp/err")"; fi
  grep -q '^| measurement' "$tmp/out" || fail "targets.sh printed no table"
  bash "$tmp/bench/targets.sh" --dsacp "$tmp/fake-dsacp" --runs 1 --write-results >"$tmp/out" 2>"$tmp/err"; rc=$?
  if (( rc == 0 )) && grep -q fake "$tmp/bench/results/targets/A_r1.json" 2>/dev/null; then
    pass "targets.sh --write-results updates bench/results/targets"
  else fail "targets.sh --write-results (rc $rc): $(cat "$tmp/err")"; fi
else
  echo "skip targets.sh checks: no jq"
fi

finish
