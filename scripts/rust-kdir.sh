#!/usr/bin/env bash
# rust-kdir.sh KDIR: succeeds when KDIR is a kernel build tree that can build a Rust module:
# configured with CONFIG_RUST=y and holding the rust/ metadata of its build (libkernel.rmeta).
kdir=${1:?usage: rust-kdir.sh KDIR}
config=$kdir/.config
[ -f "$config" ] || config=$kdir/include/config/auto.conf
grep -q '^CONFIG_RUST=y' "$config" 2>/dev/null && [ -f "$kdir/rust/libkernel.rmeta" ]
