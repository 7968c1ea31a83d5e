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

# clang build: adds the libFuzzer targets and their smoke runs.
fuzz:
	@$(MAKE) --no-print-directory test BUILD=build-clang CMAKE_FLAGS=-DCMAKE_C_COMPILER=clang

clean:
	rm -rf build build-asan build-clang
