#!/usr/bin/env bash
# Installs everything the build and the VM tests need on a Debian 12 host. Idempotent: each step
# checks first and does nothing when its tool is already there.
set -euo pipefail
. "$(dirname "$0")/common.sh"

packages=(
	# Kernel build with LLVM.
	clang-19 lld-19 llvm-19 libclang-19-dev flex bison bc libelf-dev libssl-dev cpio kmod xz-utils
	make "$KERNEL_SOURCE_PACKAGE"
	# The test VM and what runs inside it.
	qemu-system-x86 busybox-static dmsetup fio util-linux python3
	# The udev test (test_udev_finish.sh) runs systemd-udevd in the VM.
	udev
	# The NBD destination test serves an export with qemu-nbd in a second network namespace.
	qemu-utils
	# dmmig: the devicemapper crate builds against libdevmapper headers found by pkg-config.
	libdevmapper-dev pkg-config
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root or install them"
	log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v rustup >/dev/null; then
	die "rustup is not installed; install it from your distribution or rustup.rs"
fi
if ! rustup toolchain list | grep -q "^$RUST_VERSION"; then
	log "installing Rust $RUST_VERSION"
	rustup toolchain install "$RUST_VERSION" --profile minimal
fi
if ! rustup component list --toolchain "$RUST_VERSION" --installed | grep -q '^rust-src'; then
	log "adding rust-src to Rust $RUST_VERSION"
	rustup component add rust-src --toolchain "$RUST_VERSION"
fi
for c in rustfmt clippy; do
	rustup component list --toolchain "$RUST_VERSION" --installed | grep -q "^$c" ||
		rustup component add "$c" --toolchain "$RUST_VERSION"
done

if ! bindgen --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
	log "installing bindgen-cli $BINDGEN_VERSION (about 90 s)"
	cargo install bindgen-cli --locked --version "$BINDGEN_VERSION" --quiet
fi
log "host set-up complete"
