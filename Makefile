# ferry: thin wrapper around meson/ninja. `make demo` and `make check` are
# the whole set-up on a fresh Debian 12 (they install missing packages).
BUILD      ?= build
BUILD_ASAN ?= build-asan
BUILD_FUZZ ?= build-fuzz
MESON_TEST  = meson test --print-errorlogs --num-processes 2

.PHONY: all deps build check check-fast check-asan demo bench bench-cpr \
	bench-compare fuzz clean

all: build

deps:
	@sh scripts/install-deps.sh

$(BUILD)/build.ninja:
	meson setup $(BUILD)

build: deps $(BUILD)/build.ninja
	ninja -C $(BUILD)

$(BUILD_ASAN)/build.ninja:
	meson setup $(BUILD_ASAN) -Db_sanitize=address,undefined -Db_lundef=false

# All suites in the normal build, then all but the slow vm suite under
# ASan+UBSan; one summary line over both.
check: build $(BUILD_ASAN)/build.ninja
	ninja -C $(BUILD_ASAN)
	@rc=0; \
	$(MESON_TEST) -C $(BUILD) || rc=1; \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(MESON_TEST) -C $(BUILD_ASAN) --no-suite vm --no-suite bench || rc=1; \
	python3 scripts/test-summary.py $(BUILD) $(BUILD_ASAN) || rc=1; \
	exit $$rc

# Normal build only (quick iteration).
check-fast: build
	@$(MESON_TEST) -C $(BUILD); python3 scripts/test-summary.py $(BUILD)

check-asan: deps $(BUILD_ASAN)/build.ninja
	ninja -C $(BUILD_ASAN)
	@ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(MESON_TEST) -C $(BUILD_ASAN) --no-suite vm --no-suite bench; \
	python3 scripts/test-summary.py $(BUILD_ASAN)

demo: build
	@sh scripts/demo.sh $(BUILD)

# Migration benchmarks, then the live-update pause benchmark (BENCH_CPR=0
# skips the latter; BENCH_CPR_ARGS="..." for its options).
bench: build
	@sh scripts/bench.sh $(BUILD)

# Only the live-update (CPR) pause benchmark (~15 min; BENCH_CPR_ARGS=
# "--quick" for a smoke run).
bench-cpr: build
	@BENCH_CPR=only sh scripts/bench.sh $(BUILD)

# ferry vs QEMU on the same memstress guest, interleaved (~1 h for the
# full matrix; BENCH_ARGS="--quick" for the 1 GiB cells once).
bench-compare: build
	@sh scripts/bench-compare.sh $(BUILD)

$(BUILD_FUZZ)/build.ninja:
	CC=clang meson setup $(BUILD_FUZZ) -Dfuzzing=true \
		-Db_sanitize=address,undefined -Db_lundef=false

# Long fuzzing runs (FUZZ_SECONDS each target, default 300; FUZZ_TARGETS
# to pick some, e.g. "mig-load qmp"), from the committed corpus; ends with
# a table of the coverage each target reached.
fuzz: deps $(BUILD_FUZZ)/build.ninja
	ninja -C $(BUILD_FUZZ) $$(cd $(BUILD_FUZZ) && \
		ninja -t targets all | grep -o '^tests/fuzz/fuzz-[a-z-]*' | sort -u)
	@sh scripts/fuzz.sh $(BUILD_FUZZ) $${FUZZ_SECONDS:-300} $(FUZZ_TARGETS)

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) $(BUILD_FUZZ)
