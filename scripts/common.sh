# shellcheck shell=bash
# Settings shared by every script under scripts/: pinned tool versions and cache paths.
# Sourced, never run.

# The pinned toolchain. A module must be built by the very rustc that built the kernel,
# so the version is fixed here and exported for every cargo, rustc and make below.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The Rust version has one source, rust-toolchain.toml (which rustup also reads in the repository).
RUST_VERSION=$(sed -n 's/^channel = "\(.*\)"$/\1/p' "$REPO_ROOT/rust-toolchain.toml")
BINDGEN_VERSION=0.72.1
LLVM_SUFFIX=-19
KERNEL_SOURCE_PACKAGE=linux-source-6.12
KERNEL_TARBALL=/usr/src/linux-source-6.12.tar.xz

export RUSTUP_TOOLCHAIN=$RUST_VERSION
export PATH="$HOME/.cargo/bin:$PATH"
export LIBCLANG_PATH=/usr/lib/llvm${LLVM_SUFFIX}/lib

CACHE_ROOT=${DM_MIGRATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dm-migrate}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
