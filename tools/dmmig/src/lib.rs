//! dmmig: a dmsetup-like device-mapper tool. The CLI in `main.rs` is a thin shell over this
//! library, so that parsing and formatting are tested with `cargo test`.

pub mod cli;
pub mod commands;
pub mod counters;
pub mod dm;
pub mod docs;
pub mod error;
pub mod giveup;
pub mod host;
pub mod metadata;
pub mod migrate;
pub mod multi;
pub mod nbd;
pub mod nodes;
pub mod signals;
pub mod signature;
pub mod sysblock;
pub mod table;
