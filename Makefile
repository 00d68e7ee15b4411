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

test: test-c test-py

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

bench: bench-c bench-py bench-asgi

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

bench-c:
	$(CMAKE) -S . -B $(BUILD)/bench -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_TESTS=OFF -DCC_BUILD_EXAMPLES=OFF
	$(CMAKE) --build $(BUILD)/bench -j $(JOBS) --target cc_bench
	$(BUILD)/bench/cc_bench

demo: venv
	$(VENV)/bin/python examples/service_demo.py
	$(VENV)/bin/python examples/server_demo.py

demo-c:
	$(CMAKE) -S . -B $(BUILD)/demo -DCMAKE_BUILD_TYPE=Release -DCC_BUILD_TESTS=OFF -DCC_BUILD_BENCH=OFF
	$(CMAKE) --build $(BUILD)/demo -j $(JOBS) --target blocking_service
	$(BUILD)/demo/blocking_service

clean:
	rm -rf $(BUILD)
