# Thin wrapper over CMake/CTest: the two README commands and a few helpers.
#   make test   configure, build, run the whole test suite (installs missing Debian packages as root)
#   make run    the main job: the "small" model served by `dsacp run` on 2 MPI ranks with a mixed
#               workload, verified against one process (make run ARGS="..." passes more flags)
#   make asan   the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   make fuzz   each libFuzzer target for FUZZ_SECONDS (needs clang; the suite runs a short smoke)
#   make install  build, then install libdsacp.so/.a, the public headers, dsacp, dsacp.pc and the
#               CMake package under PREFIX (default /usr/local), staged under DESTDIR when set
# Warnings: a user's build never stops on a warning (WERROR=OFF, the default). Developers and CI
# build with warnings as errors: `make test WERROR=ON` (what .ci/run runs); `make asan` and
# `make fuzz` always do. Pass extra CMake options in CMAKE_FLAGS.
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
WERROR ?= OFF
CMAKE_FLAGS ?=

PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all deps build test run demo asan fuzz install clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSACP_WERROR=$(WERROR) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

install: build
	@DESTDIR="$(DESTDIR)" cmake --install $(BUILD) --prefix "$(PREFIX)"

# Build quietly (the output of `make run` is the report); the build log is kept for failures.
ARGS ?=
run: deps
	@mkdir -p $(BUILD)
	@{ cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDSACP_WERROR=$(WERROR) $(CMAKE_FLAGS) && \
	   cmake --build $(BUILD) -j $(JOBS) --target dsacp_cli; } >$(BUILD)/build.log 2>&1 || { tail -n 40 $(BUILD)/build.log; exit 1; }
	@bash scripts/run.sh $(BUILD) $(ARGS)

demo: build
	@bash scripts/demo.sh $(BUILD)

# ASan/UBSan build of the whole suite (MPI tests run with leak detection off).
asan:
	@$(MAKE) --no-print-directory test BUILD=build-asan WERROR=ON CMAKE_FLAGS="-DDSACP_SANITIZE=ON $(CMAKE_FLAGS)"

# Longer fuzzing runs than the suite's smoke tests (20000 inputs or 20 s each), with the same
# per-target input length and dictionary. New inputs go to $(BUILD)/fuzz_out, never fuzz/corpus.
FUZZ_SECONDS ?= 60
FUZZERS = $(patsubst fuzz/%.c,%,$(wildcard fuzz/fuzz_*.c))
fuzz_maxlen = $(if $(filter fuzz_config fuzz_shard_index,$(1)),65536,4096)
fuzz:
	@$(MAKE) --no-print-directory build WERROR=ON CMAKE_FLAGS="-DDSACP_FUZZ=ON $(CMAKE_FLAGS)"
	@set -e; $(foreach f,$(FUZZERS),mkdir -p $(BUILD)/fuzz_out/$(f); \
	  $(BUILD)/$(f) -max_total_time=$(FUZZ_SECONDS) -max_len=$(call fuzz_maxlen,$(f)) \
	    $(if $(wildcard fuzz/$(f).dict),-dict=fuzz/$(f).dict) $(BUILD)/fuzz_out/$(f) fuzz/corpus/$(f);)

clean:
	rm -rf build build-asan build-clang build-release
