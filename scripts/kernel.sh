#!/usr/bin/env bash
# Builds the test kernel from Debian's linux-source-6.12 with Rust and device-mapper, once per
# key, and prints the path of the built tree.
#
#   scripts/kernel.sh          build (or reuse) the tree and print its path
#   scripts/kernel.sh --path   print the path the tree has (or will have) without building
#
# KERNEL_FLAVOR=debug selects the debug kernel instead: the same configuration plus
# scripts/kconfig/debug.config (KASAN, lockdep, kmemleak, ...), cached apart from the other.
#
# The tree lives outside the repository under $CACHE_ROOT, in a folder named after a hash of
# everything that changes the result: the kernel package version, the config fragment, rustc,
# clang and bindgen. A changed key builds a new tree; a matching one is reused, and a build that
# was cut short is resumed (make is incremental). Trees of other keys are deleted after a
# successful build (about 2 GB each) unless KEEP_KERNELS=1.
set -euo pipefail
. "$(dirname "$0")/common.sh"

flavor=${KERNEL_FLAVOR:-}
fragments=("$REPO_ROOT/scripts/kconfig/vm.config")
prefix=kernel
case "$flavor" in
"") ;;
debug)
	fragments+=("$REPO_ROOT/scripts/kconfig/debug.config")
	prefix=kdebug
	;;
*) die "unknown KERNEL_FLAVOR '$flavor' (debug, or unset)" ;;
esac

cache_key() {
	{
		dpkg-query -W -f='${Version}\n' "$KERNEL_SOURCE_PACKAGE" 2>/dev/null || echo none
		cat "${fragments[@]}"
		rustc --version 2>/dev/null || echo none
		clang$LLVM_SUFFIX --version 2>/dev/null | head -1 || echo none
		bindgen --version 2>/dev/null || echo none
		# The recipe itself: a change to how the tree is built builds it again.
		sha256sum <"$REPO_ROOT/scripts/kernel.sh"
	} | sha256sum | cut -c1-16
}

tree_dir() { echo "$CACHE_ROOT/$prefix-$(cache_key)/linux"; }

if [ "${1:-}" = "--path" ]; then
	tree_dir
	exit 0
fi

tree=$(tree_dir)
top=$(dirname "$tree")
if [ -f "$top/.complete" ]; then
	log "reusing the kernel build in $tree"
	echo "$tree"
	exit 0
fi

[ -f "$KERNEL_TARBALL" ] || die "$KERNEL_TARBALL is missing: run scripts/setup-host.sh"
mkdir -p "$top"
if [ ! -f "$top/.extracted" ]; then
	log "extracting $KERNEL_TARBALL into $top (about 20 s)"
	rm -rf "$top/tmp" "$tree"
	mkdir -p "$top/tmp"
	tar -C "$top/tmp" -xf "$KERNEL_TARBALL"
	mv "$top/tmp"/linux-source-* "$tree"
	rmdir "$top/tmp"
	touch "$top/.extracted"
fi

kmake() { make -C "$tree" LLVM=$LLVM_SUFFIX "$@"; }

log "configuring: tinyconfig + ${fragments[*]##*/}"
kmake -s tinyconfig >/dev/null
(cd "$tree" && ./scripts/kconfig/merge_config.sh -m .config "${fragments[@]}" >/dev/null)
kmake -s olddefconfig >/dev/null

# A symbol whose dependencies are not met is dropped silently by olddefconfig: check each one.
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		grep -qx "$line" "$tree/.config" || { echo "config: $line did not stick" >&2; bad=1; } ;;
	"# CONFIG_"*" is not set")
		grep -qx "$line" "$tree/.config" || { echo "config: '$line' did not stick" >&2; bad=1; } ;;
	esac
done < <(cat "${fragments[@]}")
[ $bad -eq 0 ] || die "the kernel configuration is missing symbols (see above)"

kmake -s rustavailable >/dev/null || die "the kernel does not accept this Rust toolchain: make LLVM=$LLVM_SUFFIX rustavailable"

log "building the kernel in $tree (about 9 min on 2 cores the first time)"
kmake -j"$(nproc)" >"$top/build.log" 2>&1 || { tail -40 "$top/build.log" >&2; die "kernel build failed; log in $top/build.log"; }
log "installing the kernel's modules into $top/modroot"
rm -rf "$top/modroot"
kmake -s INSTALL_MOD_PATH="$top/modroot" modules_install >/dev/null
touch "$top/.complete"

if [ "${KEEP_KERNELS:-0}" = 0 ]; then
	for old in "$CACHE_ROOT/$prefix"-*; do
		[ "$old" = "$top" ] || rm -rf "$old"
	done
fi
log "kernel ready: $tree"
echo "$tree"
