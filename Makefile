# SPDX-License-Identifier: GPL-2.0
#
# dm-migrate: the two commands of the README, and the steps they are made of.
#
#   make check   userspace tests, kernel + module build, kselftests in a QEMU VM (the test command)
#   make demo    build everything and show the target at work in a QEMU VM (the main job)
#
# KDIR=/path/to/tree builds the module against your own Rust-enabled kernel tree instead of the
# test kernel; `make module KDIR=...` needs nothing else.

SHELL := /bin/bash
# The LLVM version suffix (clang-19 ...), set once in scripts/common.sh.
ifeq ($(origin LLVM),undefined)
LLVM := $(shell sed -n 's/^LLVM_SUFFIX=//p' scripts/common.sh)
endif
# The pinned Rust version, from rust-toolchain.toml (its one source): kernel trees are built
# outside the repository, where rustup would not find that file.
export RUSTUP_TOOLCHAIN := $(shell sed -n 's/^channel = "\(.*\)"$$/\1/p' rust-toolchain.toml)
export PATH := $(HOME)/.cargo/bin:$(PATH)
export LIBCLANG_PATH := /usr/lib/llvm$(LLVM)/lib

ifeq ($(origin KDIR),undefined)
KDIR = $(shell scripts/kernel.sh --path)
KERNEL_DEP := kernel
else
KERNEL_DEP :=
endif

.PHONY: all setup kernel kernel-debug module vm-module tools test-userspace lint check check-debug check-debug-ci \
	demo e2e guest-writer crash-test copy-throughput bench bench-smoke bench-mirror install install-module uninstall clean

all: module

setup:
	@scripts/setup-host.sh

kernel: setup
	@scripts/kernel.sh >/dev/null

module: $(KERNEL_DEP)
	@echo "Building dm-migrate.ko against $(KDIR)"
	@$(MAKE) -C $(KDIR) LLVM=$(LLVM) M=$(CURDIR) modules

# Installs the module into the test kernel's module tree, which the VM's modprobe uses, so that
# the device-mapper core can autoload it for a "migrate" table like any in-tree target.
vm-module: module
	@$(MAKE) -s -C $(KDIR) LLVM=$(LLVM) M=$(CURDIR) INSTALL_MOD_PATH=$(dir $(KDIR))modroot \
		INSTALL_MOD_DIR=extra modules_install

# The engine's and dmmig's tests, and the tests of the suite's and the bench's own checkers
# (harness_test.py: the crash tests' verifier must call every bad disk state bad; bench/test_*.py:
# an empty window, a failed copy or a missing figure is an error, never a target met).
test-userspace: setup
	cargo test --workspace
	python3 selftests/harness_test.py
	python3 -m unittest discover -s bench -p 'test_*.py'

# The userspace tools (dmmig), which the VM tests run from target/debug.
tools: setup
	cargo build --workspace

lint: setup
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# TESTS="test_a.sh test_b.sh" runs only those kselftests (all by default).
TESTS ?=

check: test-userspace tools vm-module
	scripts/vm-test.sh $(KDIR) $(TESTS)

# The same suite on the debug kernel (KASAN, lockdep, kmemleak, hung-task detection), cached
# apart from the test kernel: it fails on any report of theirs, and on an object the module
# leaked (a kmemleak scan after the last test). About 4 times slower than `make check`.
DEBUG_KDIR = $(shell KERNEL_FLAVOR=debug scripts/kernel.sh --path)

kernel-debug: setup
	@KERNEL_FLAVOR=debug scripts/kernel.sh >/dev/null

check-debug: test-userspace tools kernel-debug
	@$(MAKE) -s vm-module KDIR=$(DEBUG_KDIR)
	VM_TIMEOUT=$${VM_TIMEOUT:-5000} scripts/vm-test.sh $(DEBUG_KDIR) $(TESTS)

# What `.ci/run` runs on the debug kernel, where the whole suite takes about 40 minutes: the tests
# of lifetimes (threads, tables, reloads, suspends), of the write paths' windows, and of the
# constructor's and message parser's error paths; the kmemleak scan follows them.
DEBUG_CI_TESTS := test_copier_out_of_memory.sh test_copier_stop_before_run.sh test_create_remove.sh \
	test_deferred_release_per_batch.sh test_dest_error_mirror.sh test_origin_read_transient.sh \
	test_pause_inflight_writes.sh test_polled_io.sh test_reject_messages.sh \
	test_reject_table_limits.sh test_reject_table_lines.sh test_reload_after_switch_elsewhere.sh \
	test_reload_continues.sh test_suspend_interrupted.sh test_switch_mirror_error.sh \
	test_unload_busy.sh test_wait_failed_event.sh test_metadata_mirror_error.sh \
	test_metadata_refused.sh test_metadata_thread_idle.sh test_metadata_write_error.sh \
	test_skip_zeroes.sh test_min_rate_floor.sh test_async_mirror_drain.sh test_intent_planes.sh

check-debug-ci:
	@$(MAKE) check-debug TESTS="$(DEBUG_CI_TESTS)"

demo: tools vm-module
	scripts/vm.sh $(KDIR) selftests/demo.sh

# The nested guest's writer, linked statically: the nested guest's initramfs has no libc.
guest-writer: setup
	cargo rustc -q -p guest-writer --release --bin guest-writer -- -C target-feature=+crt-static

# A real VM on the moving disk: a nested QEMU guest (TCG) boots the test kernel on the dm device
# that dmmig moves, with a verifying writer, and boots again from the new image to verify it
# (about 10 minutes). E2E_RATE, E2E_DISK_MIB and E2E_SETTLE_S tune it.
e2e: tools vm-module guest-writer
	VM_TIMEOUT=$${VM_TIMEOUT:-3600} scripts/vm.sh $(KDIR) selftests/e2e.sh

# Real crashes: QEMU killed (SIGKILL) at random times during a dmmig move under a verifying
# writer, a boot, dmmig recover, and every acknowledged write checked; CRASH_KILLS kills (12).
# The table of kills goes to Documentation/crash-test.md.
crash-test: tools vm-module
	scripts/crash-test.sh $(KDIR) $${CRASH_KILLS:-12} Documentation/crash-test.md

# Idle copy throughput next to a dd O_DIRECT copy of the same ram disks, in one VM run.
copy-throughput: vm-module
	scripts/vm.sh $(KDIR) selftests/copy_throughput.sh

# The benchmark: migrate against dm-clone, dm-raid1 and a raw copy in one VM run (about 20
# minutes); results in results/bench/. bench-smoke is a short run that checks it still works.
# 6 GiB: the brd pair holds 2 GiB, and later the loop device kind's two 1 GiB files must fit in
# the VM's tmpfs, which gets half of its memory.
bench: tools vm-module
	@python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install -q matplotlib
	rm -rf results/bench && mkdir -p results/bench
	VM_MEM=6G VM_TIMEOUT=2400 VM_KEEP_RESULTS=$(CURDIR)/results/bench BENCH_MIB=$${BENCH_MIB:-1024} \
		scripts/vm.sh $(KDIR) bench/bench-vm.sh
	bench/report.py results/bench

# What mirroring costs a guest's writes, sync against async, on brd and on a destination 1 and
# 5 ms away (dm-delay); about 5 minutes. Results in results/bench-mirror/.
bench-mirror: tools vm-module
	rm -rf results/bench-mirror && mkdir -p results/bench-mirror
	VM_TIMEOUT=1800 VM_KEEP_RESULTS=$(CURDIR)/results/bench-mirror scripts/vm.sh $(KDIR) bench/mirror-vm.sh

bench-smoke: vm-module
	rm -rf results/bench && mkdir -p results/bench
	VM_TIMEOUT=1800 VM_KEEP_RESULTS=$(CURDIR)/results/bench BENCH_MIB=32 BENCH_FIO_S=1 BENCH_RATE_S=2 BENCH_ROUNDS=1 \
		scripts/vm.sh $(KDIR) bench/bench-vm.sh
	bench/report.py results/bench

# Installation on a host: dmmig (release build), its man pages and shell completions, the udev
# rule that finishes a switched move, and the module. DESTDIR stages it for a package. The
# module is built against the running kernel's build tree (or KVER=, or INSTALL_KDIR=) when that
# tree is Rust-enabled; Debian's linux-headers packages are not (they carry no rust/ metadata):
# then build the module against your own Rust-enabled tree with `make install-module
# INSTALL_KDIR=/path/to/tree`.
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
# udev reads rules from /usr/lib, /etc and /run only, whatever the prefix.
UDEVRULESDIR ?= /usr/lib/udev/rules.d
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
KVER ?= $(shell uname -r)
INSTALL_KDIR ?= /lib/modules/$(KVER)/build
UDEV_RULE := 70-dmmig-finish.rules

install: setup
	cargo build --release -p dmmig
	install -D -m 0755 target/release/dmmig $(DESTDIR)$(SBINDIR)/dmmig
	rm -rf target/man && target/release/dmmig manpages target/man
	install -d $(DESTDIR)$(MANDIR)/man8
	install -m 0644 target/man/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -d $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	target/release/dmmig completions bash >$(DESTDIR)$(BASHCOMPDIR)/dmmig
	target/release/dmmig completions zsh >$(DESTDIR)$(ZSHCOMPDIR)/_dmmig
	target/release/dmmig completions fish >$(DESTDIR)$(FISHCOMPDIR)/dmmig.fish
	install -d $(DESTDIR)$(UDEVRULESDIR)
	sed 's|@DMMIG@|$(SBINDIR)/dmmig|' udev/$(UDEV_RULE) >$(DESTDIR)$(UDEVRULESDIR)/$(UDEV_RULE)
	@if scripts/rust-kdir.sh $(INSTALL_KDIR); then \
		$(MAKE) --no-print-directory install-module; \
	else \
		echo "make install: dm-migrate.ko NOT installed: $(INSTALL_KDIR) is not a Rust-enabled kernel build tree"; \
		echo "  (it needs CONFIG_RUST=y and the rust/ metadata of the build, which distribution header"; \
		echo "  packages do not ship). Build and install the module against your kernel's own tree:"; \
		echo "  make install-module INSTALL_KDIR=/path/to/linux"; \
	fi

install-module:
	@scripts/rust-kdir.sh $(INSTALL_KDIR) || { \
		echo "install-module: $(INSTALL_KDIR) is not a Rust-enabled kernel build tree (CONFIG_RUST=y and rust/*.rmeta)"; \
		exit 1; }
	$(MAKE) -C $(INSTALL_KDIR) LLVM=$(LLVM) M=$(CURDIR) modules
	$(MAKE) -C $(INSTALL_KDIR) LLVM=$(LLVM) M=$(CURDIR) INSTALL_MOD_PATH=$(DESTDIR) \
		INSTALL_MOD_DIR=extra modules_install
	@if [ -z "$(DESTDIR)" ]; then depmod -a $(KVER); fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/dmmig $(DESTDIR)$(MANDIR)/man8/dmmig.8 $(DESTDIR)$(MANDIR)/man8/dmmig-*.8
	rm -f $(DESTDIR)$(BASHCOMPDIR)/dmmig $(DESTDIR)$(ZSHCOMPDIR)/_dmmig $(DESTDIR)$(FISHCOMPDIR)/dmmig.fish
	rm -f $(DESTDIR)$(UDEVRULESDIR)/$(UDEV_RULE)
	rm -f $(DESTDIR)/lib/modules/$(KVER)/extra/dm-migrate.ko*
	@if [ -z "$(DESTDIR)" ]; then depmod -a $(KVER) 2>/dev/null || true; fi

clean:
	@if [ -d "$(KDIR)" ]; then $(MAKE) -C $(KDIR) LLVM=$(LLVM) M=$(CURDIR) clean; fi
	rm -f rust/bindings_generated.rs rust/.bindings_generated.rs.cmd
	cargo clean
