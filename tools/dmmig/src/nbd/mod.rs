//! A destination on another host: `nbd://HOST[:PORT]/EXPORT`, attached with the kernel's NBD
//! client the way `nbd-client` does it over netlink, and kept connected the way
//! `nbd-client -persist` keeps it.
//!
//! dmmig does the NBD handshake itself (fixed newstyle, `NBD_OPT_GO`, or `NBD_OPT_EXPORT_NAME`
//! with an older server), then hands the connected socket to the kernel with the generic netlink
//! command `NBD_CMD_CONNECT`; the kernel answers with the index of the `/dev/nbdN` it set up.
//!
//! The connection is held by a keeper: a `dmmig nbd keep` process that outlives the command that
//! started it. It subscribes to the NBD family's multicast group *before* it connects, so that it
//! sees every `NBD_CMD_LINK_DEAD` of its device (the kernel sends one when a request times out or
//! the socket fails). What it does then depends on who uses the device:
//!
//! * The destination of a migration that has not switched: the keeper cancels the migration
//!   (message `cancel`) and disconnects the device, so that the requests the kernel holds fail
//!   at once. The origin has every write, so giving up is safe, and it is the only safe choice:
//!   a request sent on the dead connection may still reach the server after newer writes sent
//!   on a new one (TCP retransmits what the dead socket had not delivered, and the server may
//!   still be working through what it had), and a stale copy write that lands after a mirrored
//!   guest write would be a lost write after the switch. The move is run again to retry.
//! * Anything else (a switched migration, which refuses the cancel; a `linear` on the device
//!   after the move finished; no user): the device is the only copy, so the keeper reconnects,
//!   as `nbd-client -persist` does: a new handshake and `NBD_CMD_RECONFIGURE` with the new socket,
//!   tried once a second for as long as the device is configured. To narrow the window for a
//!   late request from the dead connection, the socket carries `TCP_USER_TIMEOUT` (half the
//!   request timeout, so TCP gives up on undelivered data before the kernel calls the link dead),
//!   and the keeper lets that much time pass again before it reconnects. Meanwhile the kernel
//!   holds the device's requests for up to the dead-connection timeout and fails them after it.
//!
//! The keeper logs to the kernel log (`/dev/kmsg`, as `dmmig[PID]: nbdN: ...`): it has no
//! terminal once its starter has gone. It ends when the device is disconnected (`dmmig nbd
//! disconnect`, or `NBD_CMD_DISCONNECT` from any tool) or connected anew by someone else.
//!
//! The parts: `url` (the `nbd://` URL), `handshake` (the NBD handshake with the server),
//! `netlink` (the kernel's NBD family), `device` (`/dev/nbdN` and its sysfs) and `keeper` (the
//! keeper's loop, and how a command starts one).

mod device;
mod handshake;
mod keeper;
mod netlink;
mod url;

pub use device::{attached_as, backend, device_path, index_of};
pub use handshake::{negotiate, Export};
pub use keeper::{attach_keeper, connect, keep, start_keeper};
pub use netlink::disconnect;
pub use url::{BackendId, NbdUrl, DEFAULT_PORT};

use std::time::Duration;

/// How long an NBD request may take before the kernel calls the connection dead (seconds).
pub const DEFAULT_TIMEOUT_S: u64 = 10;
/// How long the kernel holds requests for the keeper to reconnect before it fails them
/// (seconds). A guest write mirrored to the destination waits this long at worst.
pub const DEFAULT_DEAD_CONN_TIMEOUT_S: u64 = 30;

/// How the kernel should treat the connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Seconds a request may take before the connection is called dead.
    pub request_s: u64,
    /// Seconds requests are held for a reconnect before they fail.
    pub dead_conn_s: u64,
}

impl Timeouts {
    /// The socket's `TCP_USER_TIMEOUT`: half the request timeout, so that TCP drops a connection
    /// with undelivered data before the kernel calls it dead and requeues its requests.
    pub fn tcp_user_timeout(&self) -> Duration {
        Duration::from_millis((self.request_s * 1000 / 2).max(500))
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request_s: DEFAULT_TIMEOUT_S,
            dead_conn_s: DEFAULT_DEAD_CONN_TIMEOUT_S,
        }
    }
}
