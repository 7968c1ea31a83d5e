# Thin wrapper over CMake/CTest: the two README commands and a few helpers.
#   make test   configure, build, run the whole test suite (installs missing Debian packages as root)
#   make run    the demo: create the "small" model, inspect it, run a forward pass
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_FLAGS ?=

.PHONY: all deps build test run asan fuzz clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

run: build
	@bash scripts/demo.sh $(BUILD)

# ASan/UBSan build of the whole suite (MPI tests run with leak detection off).
asan:
	@$(MAKE) --no-print-directory test BUILD=build-asan CMAKE_FLAGS=-DDSACP_SANITIZE=ON

# Longer fuzzing runs (the test suite runs 20000 inputs each; needs clang installed).
FUZZ_SECONDS ?= 60
fuzz: build
	@for f in fuzz_safetensors fuzz_config; do mkdir -p $(BUILD)/fuzz_out/$$f; \
	  $(BUILD)/$$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 $(BUILD)/fuzz_out/$$f fuzz/corpus/$$f || exit 1; done

clean:
	rm -rf build build-asan build-clang
