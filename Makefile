# The two commands the README promises, each doing its own set-up:
#   make test   build from scratch and run every suite
#   make demo   build and run the demonstrations (the service model, then a
#               real uvicorn server with clients leaving and a shutdown)
# Build trees live under build/; `make clean` removes them.

PYTHON   ?= python3
VENV     ?= $(BUILD)/venv
CMAKE    ?= cmake
CTEST    ?= ctest
JOBS     ?= 2
BUILD    ?= build
# The stress suite scales its rounds; sanitizers slow it down.
ASAN_SCALE ?= 1.0
TSAN_SCALE ?= 0.5

.PHONY: test test-c test-c-plain test-c-asan test-c-tsan test-py venv bench bench-c bench-py bench-asgi demo demo-c clean

test: test-c test-py

# A fresh virtual environment with the wheel built and installed from this
# tree (not an editable install: the test runs what users get).
venv:
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q ".[test]"

test-py: venv
	$(VENV)/bin/python -m mypy --strict python/cancelcore
	$(VENV)/bin/python -m pytest -q tests
	$(VENV)/bin/python tests/leak/valgrind_check.py $(VENV)/bin/python

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

bench: bench-c bench-py bench-asgi

bench-py: venv
	$(VENV)/bin/python bench/bench_python.py

bench-asgi: venv
	$(VENV)/bin/python bench/bench_asgi.py

bench-c:
	$(CMAKE) -S . -B $(BUILD)/bench -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_TESTS=OFF -DCC_BUILD_EXAMPLES=OFF
	$(CMAKE) --build $(BUILD)/bench -j $(JOBS) --target cc_bench
	$(BUILD)/bench/cc_bench

demo: venv
	$(VENV)/bin/python -m cancelcore demo
	$(VENV)/bin/python -m cancelcore serve-demo
	$(VENV)/bin/python examples/grpc_demo.py

# issue 9: overhead of the gRPC interceptors and of the aiohttp adapter
.PHONY: bench-rpc
bench-rpc: venv
	$(VENV)/bin/python bench/bench_grpc.py
	$(VENV)/bin/python bench/bench_aiohttp.py

demo-c:
	$(CMAKE) -S . -B $(BUILD)/demo -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_TESTS=OFF -DCC_BUILD_BENCH=OFF
	$(CMAKE) --build $(BUILD)/demo -j $(JOBS) --target blocking_service
	$(BUILD)/demo/blocking_service

clean:
	rm -rf $(BUILD)
