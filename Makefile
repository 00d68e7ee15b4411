# The two commands the README promises, each doing its own set-up:
#   make test   build from scratch and run every suite
#   make demo   build and run the demonstrations in examples/ (the service
#               model, then a real uvicorn server with clients leaving and a
#               shutdown)
# Build trees live under build/; `make clean` removes them.

PYTHON   ?= python3
# The Python suites run on the oldest and the newest supported CPython found
# on the machine (pyenv's included; support/interpreters.py, nothing
# hard-coded), both from the one cp39-abi3 wheel built from this tree.
# (Probed once per make run, and only if not given on the command line.)
ifeq ($(origin PY_NEWEST),undefined)
PY_NEWEST := $(shell $(PYTHON) support/interpreters.py newest)
endif
ifeq ($(origin PY_OLDEST),undefined)
PY_OLDEST := $(shell $(PYTHON) support/interpreters.py oldest)
endif
VENV        ?= $(BUILD)/venv
VENV_OLDEST ?= $(BUILD)/venv-oldest
WHEELS      ?= $(BUILD)/wheels
CMAKE    ?= cmake
CTEST    ?= ctest
JOBS     ?= 2
BUILD    ?= build
# The stress suite scales its rounds; sanitizers slow it down.
ASAN_SCALE ?= 1.0
TSAN_SCALE ?= 0.5

.PHONY: test test-c test-c-plain test-c-asan test-c-tsan test-py test-py-oldest venv venv-oldest bench bench-c bench-py bench-asgi demo demo-c clean

test: test-c test-py fuzz

# A fresh virtual environment on the newest interpreter, with the wheel built
# from this tree and installed (not an editable install: the tests run what
# users get) plus the `dev` dependency group (pip >= 25.1, hence the upgrade).
venv:
	@test -n "$(PY_NEWEST)" || { echo "no CPython >= 3.9 found" >&2; exit 1; }
	rm -rf $(VENV) $(WHEELS)
	$(PY_NEWEST) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip wheel -q --no-deps . -w $(WHEELS)
	$(VENV)/bin/python -m pip install -q $(WHEELS)/cancelcore-*-abi3-*.whl --group dev

# The same wheel (built by `make venv`) on the oldest interpreter, with the
# `test` group.
venv-oldest:
	@ls $(WHEELS)/cancelcore-*-abi3-*.whl >/dev/null || { echo "no wheel: run make venv first" >&2; exit 1; }
	rm -rf $(VENV_OLDEST)
	$(PY_OLDEST) -m venv $(VENV_OLDEST)
	$(VENV_OLDEST)/bin/python -m pip install -q --upgrade pip
	$(VENV_OLDEST)/bin/python -m pip install -q $(WHEELS)/cancelcore-*-abi3-*.whl --group test

# Everything on the newest interpreter; the Python suites alone again on the
# oldest (skipped, and said so, when only one interpreter is found).
test-py: venv
	@echo "== Python suites on the newest interpreter: $$($(VENV)/bin/python -V) ($(PY_NEWEST)), wheel $$(cd $(WHEELS) && ls cancelcore-*.whl)"
	$(VENV)/bin/python -m mypy --strict python/cancelcore
	MYPYPATH=support $(VENV)/bin/python -m mypy --strict examples/service_demo.py examples/server_demo.py
	MYPYPATH=support:examples/chain $(VENV)/bin/python -m mypy --strict examples/chain_demo.py \
	  examples/chain/hop.py examples/chain/chainlib.py bench/bench_chain.py
	$(VENV)/bin/python -m pytest -q tests
	$(VENV)/bin/python tests/leak/valgrind_check.py $(VENV)/bin/python
	@if [ "$$(realpath $(PY_OLDEST))" = "$$(realpath $(PY_NEWEST))" ]; then \
	  echo "== only one interpreter found ($(PY_NEWEST)): no second run"; \
	else \
	  $(MAKE) --no-print-directory test-py-oldest PY_OLDEST=$(PY_OLDEST) PY_NEWEST=$(PY_NEWEST); \
	fi

test-py-oldest: venv-oldest
	@echo "== Python suites on the oldest interpreter: $$($(VENV_OLDEST)/bin/python -V) ($(PY_OLDEST)), the same wheel"
	$(VENV_OLDEST)/bin/python -m pytest -q tests

test-c: test-c-plain test-c-asan test-c-tsan

# configure + build + ctest one flavour: $(call ctest_flavour,dir,cmake flags,env)
define ctest_flavour
	$(CMAKE) -S . -B $(BUILD)/$(1) -DCC_BUILD_BENCH=OFF $(2)
	$(CMAKE) --build $(BUILD)/$(1) -j $(JOBS)
	cd $(BUILD)/$(1) && $(3) $(CTEST) --output-on-failure
endef

test-c-plain:
	$(call ctest_flavour,plain,-DCMAKE_BUILD_TYPE=Release,)

test-c-asan:
	$(call ctest_flavour,asan,-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCC_SANITIZE_ADDRESS=ON,CC_STRESS_SCALE=$(ASAN_SCALE) ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1)

test-c-tsan:
	$(call ctest_flavour,tsan,-DCMAKE_BUILD_TYPE=RelWithDebInfo -DCC_SANITIZE_THREAD=ON,CC_STRESS_SCALE=$(TSAN_SCALE) TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1)

bench: bench-c bench-py bench-asgi bench-rpc bench-httpx bench-chain

# Also builds the cffi module twice more, against the limited API (as in the
# wheel) and the full API, for shape 6: what the stable ABI costs.
bench-py: venv
	$(CMAKE) -S . -B $(BUILD)/pybench -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_TESTS=OFF \
	  -DCC_BUILD_BENCH=OFF -DCC_BUILD_EXAMPLES=OFF -DCC_BUILD_PY_ABI_BENCH=ON \
	  -DPython_EXECUTABLE=$(abspath $(VENV))/bin/python
	$(CMAKE) --build $(BUILD)/pybench -j $(JOBS) --target _cc_bench_limited _cc_bench_full
	$(VENV)/bin/python bench/bench_python.py --abi-modules $(BUILD)/pybench

bench-asgi: venv
	$(VENV)/bin/python bench/bench_asgi.py

# issue 10, HTTP leg: what cancelcore.httpx's transports cost per request.
.PHONY: bench-httpx
bench-httpx: venv
	$(VENV)/bin/python bench/bench_httpx.py

bench-c:
	$(CMAKE) -S . -B $(BUILD)/bench -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_TESTS=OFF -DCC_BUILD_EXAMPLES=OFF
	$(CMAKE) --build $(BUILD)/bench -j $(JOBS) --target cc_bench
	$(BUILD)/bench/cc_bench

demo: venv
	$(VENV)/bin/python examples/service_demo.py
	$(VENV)/bin/python examples/server_demo.py
	$(VENV)/bin/python examples/grpc_demo.py
	$(VENV)/bin/python examples/chain_demo.py

# overhead of the gRPC interceptors and of the aiohttp adapter
.PHONY: bench-rpc
bench-rpc: venv
	$(VENV)/bin/python bench/bench_grpc.py
	$(VENV)/bin/python bench/bench_aiohttp.py
	$(VENV)/bin/python bench/bench_grpc_propagation.py

# cancel propagation down multi-process chains of services (issue 10)
.PHONY: bench-chain
bench-chain: venv
	$(VENV)/bin/python bench/bench_chain.py

demo-c:
	$(CMAKE) -S . -B $(BUILD)/demo -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_TESTS=OFF -DCC_BUILD_BENCH=OFF
	$(CMAKE) --build $(BUILD)/demo -j $(JOBS) --target blocking_service
	$(BUILD)/demo/blocking_service

clean:
	rm -rf $(BUILD)

# ------------------------------------------------------------- Windows
# The core and the C suites cross-compiled with mingw-w64 and run as
# Windows programs under wine: headless, in a private prefix under
# $(BUILD)/wine, programs linked statically (cmake/toolchain-mingw-w64.cmake).
# Installs Debian's mingw-w64 and wine64 when missing (as root).  The stress
# suite runs scaled down: wine makes every lock and wait a server round trip.
WIN_CC     ?= x86_64-w64-mingw32-gcc-posix
WINE_SCALE ?= 0.3
WINE_ENV    = WINEPREFIX=$(abspath $(BUILD))/wine WINEARCH=win64 WINEDEBUG=-all \
              WINEDLLOVERRIDES="mscoree,mshtml=" CC_STRESS_SCALE=$(WINE_SCALE)

.PHONY: test-c-windows windows-tools
test: test-c-windows

windows-tools:
	@if ! command -v $(WIN_CC) >/dev/null 2>&1 || ! { command -v wine64 || command -v wine \
	      || test -x /usr/lib/wine/wine64; } >/dev/null 2>&1; then \
	  if [ "$$(id -u)" != 0 ]; then \
	    echo "test-c-windows needs Debian's mingw-w64 and wine64 (apt-get install mingw-w64 wine64)" >&2; \
	    exit 1; \
	  fi; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends mingw-w64 wine64; \
	fi

test-c-windows: windows-tools
	$(call ctest_flavour,windows,-DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE=$(CURDIR)/cmake/toolchain-mingw-w64.cmake,$(WINE_ENV))

# ---------------------------------------------------------------- fuzzing
# The API-sequence fuzzer (tests/fuzz/README.md) for FUZZ_SECONDS; fails on a
# contract violation, a sanitizer report, a hang or a crash.  libFuzzer needs
# clang and its runtime: installed from Debian's packages when missing.
FUZZ_SECONDS ?= 60
FUZZ_MT_SECONDS ?= 30
FUZZ_CC      ?= clang-14
FUZZ_PKGS    ?= clang-14 libclang-rt-14-dev
# A fixed seed: the run `make test` makes is the same sequence of inputs every
# time (new ground comes from the corpus it grows); FUZZ_FLAGS=-seed=0 for a
# random one.
FUZZ_FLAGS   ?= -seed=1

.PHONY: fuzz fuzz-build fuzz-known-bugs
fuzz-build:
	@if ! command -v $(FUZZ_CC) >/dev/null \
	    || ! test -e "$$($(FUZZ_CC) -print-file-name=libclang_rt.fuzzer-$$(uname -m).a)"; then \
	  apt-get update -q && apt-get install -y -q $(FUZZ_PKGS); \
	fi
	CC=$(FUZZ_CC) $(CMAKE) -S . -B $(BUILD)/fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCC_BUILD_FUZZ=ON -DCC_BUILD_TESTS=OFF -DCC_BUILD_BENCH=OFF -DCC_BUILD_EXAMPLES=OFF
	$(CMAKE) --build $(BUILD)/fuzz -j $(JOBS) --target cc_fuzz cc_fuzz_mt

fuzz: fuzz-build
	mkdir -p $(BUILD)/fuzz/corpus
	$(BUILD)/fuzz/cc_fuzz -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=2048 \
	  -print_final_stats=1 -artifact_prefix=$(BUILD)/fuzz/ $(FUZZ_FLAGS) \
	  $(BUILD)/fuzz/corpus tests/fuzz/corpus
	mkdir -p $(BUILD)/fuzz/corpus_mt
	$(BUILD)/fuzz/cc_fuzz_mt -max_total_time=$(FUZZ_MT_SECONDS) -timeout=30 -rss_limit_mb=2048 \
	  -print_final_stats=1 -artifact_prefix=$(BUILD)/fuzz/mt- $(FUZZ_FLAGS) \
	  $(BUILD)/fuzz/corpus_mt tests/fuzz/corpus_mt

# Which known core bugs (tests/fuzz/README.md) are still there: informational,
# never fails.
fuzz-known-bugs: fuzz-build
	$(CMAKE) -S . -B $(BUILD)/plain -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_BENCH=OFF -DCC_FUZZ_REPLAY=ON
	$(CMAKE) --build $(BUILD)/plain -j $(JOBS) --target cc_repro_batch_finish_hold cc_repro_g3_end_queued
	tests/fuzz/known_bugs.sh $(BUILD)/fuzz/cc_fuzz $(BUILD)/plain
