// SPDX-License-Identifier: GPL-2.0

//! The migration engine's decisions, free of any kernel dependency.
//!
//! This module is compiled twice: into `dm-migrate.ko`, and by the userspace crate in this folder
//! (`lib.rs`), whose `cargo test` checks it. It uses neither `kernel` nor `alloc`: the kernel side
//! opens devices, allocates memory and hands plain values in; the engine says what to do.

// Plain Rust, in the kernel as in userspace.
#![forbid(unsafe_code)]

pub mod behind;
pub mod bitmap;
pub mod dispatch;
pub mod epoch;
pub mod intent;
pub mod message;
pub mod metadata;
pub mod phase;
pub mod state;
pub mod status;
pub mod table;
pub mod throttle;
pub mod tracker;
pub mod writer;

/// The number of bytes in a sector, the unit of every device-mapper length.
pub const SECTOR_SIZE: u64 = 512;
