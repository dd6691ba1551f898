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

# find_missing: the packages of the list that are not installed, into missing.
find_missing() {
	missing=()
	for p in "${packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
}
# Twice: an install can remove a package of the list that was there before. On a Debian 12 image
# with qemu-utils from bookworm-backports, installing qemu-system-x86 7.2 removes it as
# conflicting, and the NBD tests would then skip for want of qemu-nbd; the second round installs
# the matching version.
for round in 1 2; do
	find_missing
	[ ${#missing[@]} -gt 0 ] || break
	[ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}); run as root or install them"
	log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	[ "$round" = 1 ] && apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
done
find_missing
[ ${#missing[@]} -eq 0 ] || die "packages still missing after installing them: ${missing[*]}"

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
