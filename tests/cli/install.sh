#!/usr/bin/env bash
# The installed library is usable on its own (issue 21, item 6): `cmake --install` of the build
# into a scratch DESTDIR + prefix, then tests/cli/install_app.c is compiled and run twice against
# the installed files only:
#  - with `pkg-config --cflags --libs dsacp` and nothing else on the compile line (no jansson,
#    OpenMP, MPI or BLAS flags: they are private to libdsacp.so);
#  - through CMake's find_package(dsacp) and the imported target dsacp::dsacp.
# Also checks the SONAME, the version, that dsacp-mpi.pc gives MPI's include directory (the one
# header that needs mpi.h), and that the library does not link BLAS. Seconds.
set -u
. "$(dirname "$0")/lib/common.sh"
SRC=${DSACP_SOURCE_DIR:?set by CTest}
BUILD=${DSACP_BUILD_DIR:?set by CTest}
for tool in pkg-config cc cmake; do
  command -v "$tool" >/dev/null || { echo "SKIP: needs $tool"; exit 77; }
done
# A sanitizer build's library needs the sanitizer runtime on the program's link line too.
[[ ${DSACP_SANITIZE:-0} == 1 ]] && { echo "SKIP: sanitizer build"; exit 77; }

prefix=/opt/dsacp-test
root="$tmp/dest$prefix"
if DESTDIR="$tmp/dest" cmake --install "$BUILD" --prefix "$prefix" >"$tmp/install.log" 2>&1; then
  pass "cmake --install with DESTDIR and --prefix"
else
  fail "cmake --install: $(tail -n 5 "$tmp/install.log")"; finish; exit 1
fi
pcdir=$(dirname "$(find "$root" -name dsacp.pc | head -n 1)")
libdir=$(dirname "$pcdir")
for f in include/dsacp.h include/dsacp_version.h include/dsacp_serve.h include/dsacp_util.h include/dsacp_io.h bin/dsacp; do
  [[ -e "$root/$f" ]] && pass "installed $f" || fail "missing $f"
done
soname=$(objdump -p "$libdir/libdsacp.so" 2>/dev/null | awk '/SONAME/ {print $2}')
[[ $soname == libdsacp.so.* ]] && pass "SONAME $soname" || fail "SONAME '$soname'"
if objdump -p "$libdir/libdsacp.so" | grep NEEDED | grep -qi blas; then
  fail "libdsacp.so links BLAS"
else
  pass "libdsacp.so does not link BLAS"
fi

export PKG_CONFIG_PATH="$pcdir"
flags=$(pkg-config --cflags --libs dsacp) || { fail "pkg-config dsacp"; finish; exit 1; }
if grep -qE -- '-l(jansson|gomp|mpi|openblas|blas)|-fopenmp|openmpi' <<<"$flags"; then fail "private dependency on the line: $flags"; else pass "pkg-config dsacp: $flags"; fi
pkg-config --cflags dsacp-mpi | grep -q -- '-I' && pass "dsacp-mpi.pc gives MPI's include directory" || fail "dsacp-mpi.pc"
# shellcheck disable=SC2086
if cc -std=c11 -Wall -Werror "$SRC/tests/cli/install_app.c" -o "$tmp/app" $flags -lm 2>"$tmp/cc.log"; then
  pass "compiled with pkg-config's flags only"
else
  fail "compile: $(head -c 2000 "$tmp/cc.log")"
fi
if out=$(LD_LIBRARY_PATH="$libdir" OMP_NUM_THREADS=1 "$tmp/app" "$tmp/model1" 2>&1) && [[ $out == "ok "* ]]; then
  pass "pkg-config program: $out"
else
  fail "pkg-config program: $out"
fi

mkdir -p "$tmp/proj"
cat >"$tmp/proj/CMakeLists.txt" <<CMAKE
cmake_minimum_required(VERSION 3.20)
project(install_app C)
find_package(dsacp 0.1 REQUIRED)
add_executable(install_app "$SRC/tests/cli/install_app.c")
target_link_libraries(install_app PRIVATE dsacp::dsacp m)
CMAKE
if cmake -S "$tmp/proj" -B "$tmp/proj/b" -DCMAKE_PREFIX_PATH="$root" >"$tmp/cm.log" 2>&1 &&
   cmake --build "$tmp/proj/b" >>"$tmp/cm.log" 2>&1; then
  pass "find_package(dsacp) build"
else
  fail "find_package(dsacp): $(tail -n 20 "$tmp/cm.log")"
fi
if out=$(OMP_NUM_THREADS=1 "$tmp/proj/b/install_app" "$tmp/model2" 2>&1) && [[ $out == "ok "* ]]; then
  pass "find_package program: $out"
else
  fail "find_package program: $out"
fi
finish
