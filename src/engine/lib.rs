// SPDX-License-Identifier: GPL-2.0

//! Userspace build of the dm-migrate engine core, for `cargo test`.
//!
//! The kernel module includes `mod.rs` directly; this root only adds `no_std`, so that both builds
//! see exactly the same code under exactly the same restrictions.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

#[path = "mod.rs"]
mod engine;

pub use engine::*;
