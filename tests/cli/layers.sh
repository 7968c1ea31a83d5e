#!/bin/bash
# The layering of src/ (docs/architecture.md, "Layers") checked against the code, two ways:
#  1. includes: a file of src/M includes headers of M, of modules below M, and public headers
#     (include/dsacp*.h, which declare what the modules below define; dsacp_plan.h counts as
#     src/plan's, dsacp_bench.h as src/bench's);
#  2. calls: every dsacp_* symbol an object file of src/M uses and another module defines
#     (`nm` over the library's objects) is defined below M;
# and tools/cli includes only public headers and its own. The order is the drawing in
# docs/architecture.md (top to bottom); README.md's module table lists the same modules
# bottom to top. A strict order has no circle and nothing running upward.
set -u
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:?}
BUILD=${DSACP_BUILD_DIR:?}

# The drawing: the first fenced block after "## Layers", one module per line ("  src/M ...").
mapfile -t order < <(awk '/^## Layers/{s=1} s && /^```/{f++; next} s && f==1 && match($0, /^ *src\/[a-z]+/){
    m=substr($0, RSTART, RLENGTH); sub(/^ *src\//, "", m); print m} f>=2{exit}' "$SRC/docs/architecture.md")
[ "${#order[@]}" -ge 5 ] || { fail "docs/architecture.md: no layer drawing under '## Layers'"; finish; }
declare -A rank
for i in "${!order[@]}"; do rank[${order[$i]}]=$i; done # 0 = top
for d in "$SRC"/src/*/; do
    m=$(basename "$d")
    [ -n "${rank[$m]:-}" ] || fail "src/$m is not in docs/architecture.md's layer drawing"
done

below() { # below A B: B is A itself or a module under A in the drawing
    [ "$1" = "$2" ] && return 0
    [ -n "${rank[$1]:-}" ] && [ -n "${rank[$2]:-}" ] && [ "${rank[$2]}" -gt "${rank[$1]}" ]
}

# 1. includes
bad=0
for f in "$SRC"/src/*/*.[ch]; do
    m=$(basename "$(dirname "$f")")
    while read -r inc; do
        case "$inc" in
            dsacp_plan.h) d=plan ;;
            dsacp_bench.h) d=bench ;;
            dsacp*.h) continue ;;
            */*) d=${inc%%/*} ;;
            *) continue ;; # a header of the same folder, or a generated include
        esac
        if ! below "$m" "$d"; then
            echo "upward include: ${f#"$SRC"/} includes \"$inc\" (src/$d is not below src/$m)"
            bad=1
        fi
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done
[ $bad = 0 ] && pass "every include of src/ runs down the layers" || fail "includes run upward (above)"

# tools/cli: a client of the public API
bad=0
for f in "$SRC"/tools/cli/*.[ch]; do
    while read -r inc; do
        case "$inc" in dsacp*.h | cli*.h | plot.h | *.inc) ;; *)
            echo "tools/cli includes an internal header: ${f#"$SRC"/}: \"$inc\""
            bad=1 ;;
        esac
    done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
done
[ $bad = 0 ] && pass "tools/cli includes only public headers" || fail "tools/cli includes internal headers (above)"

# 2. calls, from the library's object files
objs=$(find "$BUILD/CMakeFiles" -path '*/src/*' -name '*.c.o' -path '*dsacp*.dir*' 2>/dev/null | grep -v -e testsupport -e fuzz | sort)
# the library's objects: the target folder with the newest object (a reconfigured build tree
# may keep an old target's folder beside it)
objdir=$(ls -t $objs 2>/dev/null | head -1 | sed 's#/src/.*##')
objs=$(echo "$objs" | grep "^$objdir/")
if [ -z "$objs" ] || ! command -v nm >/dev/null; then
    fail "no library objects under $BUILD/CMakeFiles (or no nm)"
else
    declare -A def
    for o in $objs; do
        m=$(echo "$o" | sed 's#.*/src/\([a-z]*\)/.*#\1#')
        while read -r s; do def[$s]=$m; done < <(nm --defined-only -g "$o" | awk '$2 ~ /[TDBR]/ {print $3}')
    done
    bad=0
    for o in $objs; do
        m=$(echo "$o" | sed 's#.*/src/\([a-z]*\)/.*#\1#')
        while read -r s; do
            d=${def[$s]:-}
            [ -z "$d" ] && continue # libc, MPI, jansson...
            if ! below "$m" "$d"; then
                echo "upward call: src/$m (${o##*/src/}) uses $s, defined in src/$d"
                bad=1
            fi
        done < <(nm -u "$o" | awk '{print $2}')
    done
    [ $bad = 0 ] && pass "every call between src/ modules runs down the layers" || fail "calls run upward (above)"

    # Inside a module, the files' calls form no circle either (a dispatcher and its ISA files,
    # a planner and its cost model): tsort finds a loop in "caller callee" pairs.
    declare -A deffile
    for o in $objs; do
        while read -r s; do deffile[$s]=${o##*/src/}; done < <(nm --defined-only -g "$o" | awk '$2 ~ /[TDBR]/ {print $3}')
    done
    edges=$(for o in $objs; do
        f=${o##*/src/}
        echo "$f $f"
        nm -u "$o" | awk '{print $2}' | while read -r s; do
            g=${deffile[$s]:-}
            [ -n "$g" ] && [ "$g" != "$f" ] && [ "${g%%/*}" = "${f%%/*}" ] && echo "$f $g"
        done
    done | sort -u)
    loops=$(echo "$edges" | tsort 2>&1 >/dev/null | grep -v 'input contains a loop' | sed 's/^tsort: */  /')
    [ -z "$loops" ] && pass "no circle between the files of a module" || { echo "a circle of calls:"; echo "$loops"; fail "files of a module call each other in a circle (above)"; }
fi

# README's module table: the same modules, bottom to top.
mapfile -t readme < <(sed -n 's/^| `src\/\([a-z]*\)\/`.*/\1/p' "$SRC/README.md")
want=$(for ((i = ${#order[@]} - 1; i >= 0; i--)); do echo "${order[$i]}"; done | tr '\n' ' ')
got=$(printf '%s ' "${readme[@]}")
[ "$got" = "$want" ] && pass "README's module table lists the layers in the drawing's order" ||
    fail "README's module table (bottom to top: $got) differs from docs/architecture.md's drawing ($want)"
finish
