#!/usr/bin/env bash
# The dsacp tool is a client of the public API (issue 21, item 6): every file of tools/cli
# includes only include/dsacp*.h, tools/cli's own headers and system headers -- never a header
# under src/ (CMake does not put src/ on the tool's include path either).
set -u
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:?set by CTest}
cd "$SRC/tools/cli" || exit 1
public_or_local() { [[ $1 == dsacp*.h || -e $1 ]]; }
for f in *.c *.h; do
  bad=()
  while read -r inc; do
    public_or_local "$inc" || bad+=("$inc")
  done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
  if ((${#bad[@]} == 0)); then
    pass "$f includes public headers only"
  else
    fail "$f includes internal headers: ${bad[*]}"
  fi
done

# Every function a public header declares is defined by the shared library (the declarations of
# dsacp_util.h / dsacp_io.h repeat internal ones until those headers include them: this catches
# a drift). static inline helpers are skipped.
BUILD=${DSACP_BUILD_DIR:-}
lib="$BUILD/libdsacp.so"
if [[ -n $BUILD && -e $lib ]] && command -v nm >/dev/null; then
  defined=$(nm -D --defined-only "$lib" | awk '{sub(/@.*/, "", $3); print $3}')
  for h in "$SRC"/include/dsacp*.h; do
    missing=()
    while read -r fn; do
      grep -qx -- "$fn" <<<"$defined" || missing+=("$fn")
    done < <(grep -v 'static inline' "$h" | grep -oE '^[a-z][a-z0-9_ ]*[ *]dsacp_[a-z0-9_]+\(' | sed -E 's/.*[ *](dsacp_[a-z0-9_]+)[(]$/\1/')
    if ((${#missing[@]} == 0)); then pass "$(basename "$h"): every declared function is in libdsacp.so"
    else fail "$(basename "$h") declares functions libdsacp.so lacks: ${missing[*]}"; fi
  done
else
  echo "note: $lib not built, declarations not checked"
fi
finish
