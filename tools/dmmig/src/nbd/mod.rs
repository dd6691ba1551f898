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

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use crate::error::{Error, Result};

/// The NBD port IANA assigned, `nbd-server`'s and `qemu-nbd`'s default.
pub const DEFAULT_PORT: u16 = 10809;

/// How long an NBD request may take before the kernel calls the connection dead (seconds).
pub const DEFAULT_TIMEOUT_S: u64 = 10;
/// How long the kernel holds requests for the keeper to reconnect before it fails them
/// (seconds). A guest write mirrored to the destination waits this long at worst.
pub const DEFAULT_DEAD_CONN_TIMEOUT_S: u64 = 30;

/// Where an export is: `nbd://HOST[:PORT]/EXPORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUrl {
    pub host: String,
    pub port: u16,
    pub export: String,
}

impl NbdUrl {
    /// Parses an `nbd://` URL; `Ok(None)` when `text` is not one (a path).
    pub fn parse(text: &str) -> Result<Option<Self>> {
        let Some(rest) = text.strip_prefix("nbd://") else {
            return Ok(None);
        };
        let bad = |why: &str| {
            Error::Usage(format!(
                "bad NBD URL '{text}': {why} (nbd://HOST[:PORT]/EXPORT)"
            ))
        };
        let (authority, export) = rest.split_once('/').unwrap_or((rest, ""));
        // An IPv6 literal is written in brackets (RFC 3986), its colons not a port's.
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address without its closing ']'"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("the address in brackets is not an IPv6 address"));
            }
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("text after the ']' that is not ':PORT'"))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((_, port)) if port.contains(':') => {
                    return Err(bad(
                        "an IPv6 address must be in brackets: nbd://[ADDRESS]/EXPORT",
                    ));
                }
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad("the port is not a number from 1 to 65535"))?,
            None => DEFAULT_PORT,
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if export.len() > 4096 || export.contains('\0') {
            return Err(bad("the export name is too long or has a NUL"));
        }
        Ok(Some(Self {
            host: host.to_string(),
            port,
            export: export.to_string(),
        }))
    }
}

impl std::fmt::Display for NbdUrl {
    /// The URL in one spelling for each destination: the port always written, an IPv6 address
    /// in brackets and lower case (as `Ipv6Addr` prints it), a host name in lower case. Two
    /// URLs of the same destination print the same, which is how a multi-disk move sees them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => write!(f, "nbd://[{v6}]:{}/{}", self.port, self.export),
            Err(_) => write!(
                f,
                "nbd://{}:{}/{}",
                self.host.to_ascii_lowercase(),
                self.port,
                self.export
            ),
        }
    }
}

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

/// What a failed read or write of the handshake means, in words: the bare errors ("Resource
/// temporarily unavailable", "failed to fill whole buffer") do not say what happened.
fn handshake_error(e: &std::io::Error, timeout: Duration) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "the server accepted the connection but did not answer within {} s (is it an NBD \
             server, and not busy with another client?)",
            timeout.as_secs()
        ),
        ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake (it may serve one client at \
             a time, or only the old-style handshake, or refuse this client)"
                .to_string()
        }
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            format!("the server dropped the connection during the handshake ({e})")
        }
        _ => format!("handshake: {e}"),
    }
}

// The NBD protocol's handshake (doc/proto.md of the NBD project).
const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// What an old-style server sends after `NBDMAGIC` (`cliserv_magic`).
const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;
const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const INFO_EXPORT: u16 = 0;
/// Transmission flags.
const TFLAG_READ_ONLY: u16 = 1 << 1;

/// A connected export, in its transmission phase: what the kernel takes over.
pub struct Export {
    pub stream: TcpStream,
    pub size: u64,
    pub flags: u16,
}

fn read_u16(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut b = [0u8; 2];
    stream.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}

fn read_u32(stream: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    stream.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(stream: &mut TcpStream) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    stream.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn send_option(stream: &mut TcpStream, option: u32, data: &[u8]) -> std::io::Result<()> {
    let mut msg = Vec::with_capacity(16 + data.len());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&option.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    stream.write_all(&msg)
}

/// Connects to the server and negotiates `url`'s export; fails within about `timeout`. The
/// socket's `TCP_USER_TIMEOUT` is set to `user_timeout`: how long TCP may keep trying to deliver
/// data before it drops the connection.
pub fn negotiate(url: &NbdUrl, timeout: Duration, user_timeout: Duration) -> Result<Export> {
    let failed = |what: String| Error::Failed(format!("NBD server {url}: {what}"));
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| failed(format!("cannot resolve {}: {e}", url.host)))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        failed(format!(
            "cannot connect: {}",
            last.map_or("no address".to_string(), |e| e.to_string())
        ))
    })?;
    let io = |e: std::io::Error| failed(handshake_error(&e, timeout));
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    setsockopt(
        &stream,
        sockopt::TcpUserTimeout,
        &u32::try_from(user_timeout.as_millis()).unwrap_or(u32::MAX),
    )
    .map_err(|e| failed(format!("TCP_USER_TIMEOUT: {e}")))?;

    if read_u64(&mut stream).map_err(io)? != NBDMAGIC {
        return Err(failed("not an NBD server (no NBDMAGIC)".into()));
    }
    match read_u64(&mut stream).map_err(io)? {
        IHAVEOPT => {}
        OLDSTYLE_MAGIC => {
            return Err(failed(
                "the server speaks only the old-style handshake, which has no export names".into(),
            ))
        }
        _ => {
            return Err(failed(
                "not an NBD server (no IHAVEOPT after NBDMAGIC)".into(),
            ))
        }
    }
    let server_flags = read_u16(&mut stream).map_err(io)?;
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(failed("the server does not speak fixed newstyle".into()));
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES));
    stream.write_all(&client_flags.to_be_bytes()).map_err(io)?;

    // NBD_OPT_GO: the export's size and flags, or an error the server can explain.
    let mut data = Vec::new();
    data.extend_from_slice(&(url.export.len() as u32).to_be_bytes());
    data.extend_from_slice(url.export.as_bytes());
    data.extend_from_slice(&0u16.to_be_bytes());
    send_option(&mut stream, OPT_GO, &data).map_err(io)?;
    let mut export = None;
    loop {
        if read_u64(&mut stream).map_err(io)? != REPLY_MAGIC {
            return Err(failed("bad option reply".into()));
        }
        let _option = read_u32(&mut stream).map_err(io)?;
        let reply = read_u32(&mut stream).map_err(io)?;
        let len = read_u32(&mut stream).map_err(io)? as usize;
        if len > 1 << 20 {
            return Err(failed("an option reply of more than 1 MiB".into()));
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload).map_err(io)?;
        match reply {
            REP_ACK => break,
            REP_INFO
                if len >= 12 && u16::from_be_bytes([payload[0], payload[1]]) == INFO_EXPORT =>
            {
                let size = u64::from_be_bytes(payload[2..10].try_into().expect("8 bytes"));
                let flags = u16::from_be_bytes([payload[10], payload[11]]);
                export = Some((size, flags));
            }
            REP_INFO => {}
            REP_ERR_UNSUP => {
                // An older server: NBD_OPT_EXPORT_NAME, which answers with the size and flags.
                send_option(&mut stream, OPT_EXPORT_NAME, url.export.as_bytes()).map_err(io)?;
                let size = read_u64(&mut stream).map_err(io)?;
                let flags = read_u16(&mut stream).map_err(io)?;
                if !no_zeroes {
                    let mut zeroes = [0u8; 124];
                    stream.read_exact(&mut zeroes).map_err(io)?;
                }
                export = Some((size, flags));
                break;
            }
            REP_ERR_UNKNOWN => {
                return Err(failed(format!("no export named '{}'", url.export)));
            }
            err if err & (1 << 31) != 0 => {
                let message = String::from_utf8_lossy(&payload);
                return Err(failed(format!(
                    "the server refused the export (error {:#x}{}{message})",
                    err,
                    if message.is_empty() { "" } else { ": " }
                )));
            }
            _ => {}
        }
    }
    let (size, flags) = export.ok_or_else(|| failed("the server sent no export size".into()))?;
    if flags & TFLAG_READ_ONLY != 0 {
        return Err(failed(format!(
            "the export '{}' is read-only; a destination must be writable",
            url.export
        )));
    }
    // The kernel's socket has its own timeouts: these were for the handshake only.
    stream.set_read_timeout(None).map_err(io)?;
    stream.set_write_timeout(None).map_err(io)?;
    Ok(Export {
        stream,
        size,
        flags,
    })
}

// Generic netlink, and the NBD family's commands and attributes (<linux/nbd-netlink.h>).
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = 0x3fff;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
const NBD_GENL_VERSION: u8 = 1;
const NBD_CMD_CONNECT: u8 = 1;
const NBD_CMD_DISCONNECT: u8 = 2;
const NBD_CMD_RECONFIGURE: u8 = 3;
const NBD_CMD_LINK_DEAD: u8 = 4;
const NBD_ATTR_INDEX: u16 = 1;
const NBD_ATTR_SIZE_BYTES: u16 = 2;
const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
const NBD_ATTR_TIMEOUT: u16 = 4;
const NBD_ATTR_SERVER_FLAGS: u16 = 5;
const NBD_ATTR_SOCKETS: u16 = 7;
const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
const NBD_ATTR_BACKEND_IDENTIFIER: u16 = 10;
const NBD_SOCK_ITEM: u16 = 1;
const NBD_SOCK_FD: u16 = 1;

/// Netlink attributes, built in a buffer.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        self.0
            .extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn u32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.put(kind, &value.to_ne_bytes())
    }

    fn u64(&mut self, kind: u16, value: u64) -> &mut Self {
        self.put(kind, &value.to_ne_bytes())
    }

    fn string(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.put(kind, &bytes)
    }

    fn nested(&mut self, kind: u16, inner: &Attrs) -> &mut Self {
        self.put(kind | NLA_F_NESTED, &inner.0)
    }
}

/// The attributes in `data`: (type, payload) pairs; a truncated tail is ignored.
fn parse_attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut attrs = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            break;
        }
        attrs.push((kind, &data[4..len]));
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    attrs
}

fn attr<'a>(attrs: &[(u16, &'a [u8])], kind: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(k, _)| *k == kind).map(|(_, v)| *v)
}

fn attr_u32(attrs: &[(u16, &[u8])], kind: u16) -> Option<u32> {
    attr(attrs, kind)?
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// One message of a netlink reply: its type, and the generic netlink command and attributes.
struct Message {
    kind: u16,
    seq: u32,
    cmd: u8,
    /// The negative errno of an NLMSG_ERROR (0: the acknowledgement).
    error: i32,
    attrs: Vec<u8>,
}

fn parse_messages(mut data: &[u8]) -> Vec<Message> {
    let mut messages = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > data.len() {
            break;
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let seq = u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes"));
        let body = &data[16..len];
        let (cmd, error, attrs) = match kind {
            NLMSG_ERROR if body.len() >= 4 => (
                0,
                i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes")),
                Vec::new(),
            ),
            _ if body.len() >= 4 => (body[0], 0, body[4..].to_vec()),
            _ => (0, 0, Vec::new()),
        };
        messages.push(Message {
            kind,
            seq,
            cmd,
            error,
            attrs,
        });
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    messages
}

/// A generic netlink socket, bound to the NBD family.
struct Genl {
    fd: OwnedFd,
    family: u16,
    group: Option<u32>,
    seq: u32,
}

impl Genl {
    fn open() -> Result<Self> {
        let failed = |e: nix::Error| Error::Failed(format!("netlink: {e}"));
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkGeneric,
        )
        .map_err(failed)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(failed)?;
        let mut genl = Self {
            fd,
            family: GENL_ID_CTRL,
            group: None,
            seq: 0,
        };
        let mut attrs = Attrs::default();
        attrs.string(CTRL_ATTR_FAMILY_NAME, "nbd");
        let reply = genl
            .request(CTRL_CMD_GETFAMILY, 1, &attrs)
            .map_err(|e| match e {
                Error::Failed(why) if why.contains("No such file") => Error::Failed(
                    "the kernel has no NBD client: modprobe nbd (CONFIG_BLK_DEV_NBD)".into(),
                ),
                e => e,
            })?;
        let attrs = parse_attrs(&reply);
        genl.family = attr(&attrs, CTRL_ATTR_FAMILY_ID)
            .and_then(|b| b.get(..2))
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| Error::Failed("netlink: no id for the nbd family".into()))?;
        if let Some(groups) = attr(&attrs, CTRL_ATTR_MCAST_GROUPS) {
            for (_, group) in parse_attrs(groups) {
                let group = parse_attrs(group);
                if attr(&group, CTRL_ATTR_MCAST_GRP_NAME) == Some(b"nbd_mc_group\0") {
                    genl.group = attr_u32(&group, CTRL_ATTR_MCAST_GRP_ID);
                }
            }
        }
        Ok(genl)
    }

    fn receive(&self) -> nix::Result<Vec<Message>> {
        let mut buf = vec![0u8; 65536];
        let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        Ok(parse_messages(&buf[..n]))
    }

    /// Drops the messages already queued, without waiting.
    fn drain(&self) {
        let mut buf = vec![0u8; 65536];
        while recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).is_ok() {}
    }

    /// Sends a command and waits for its acknowledgement; returns the reply's attributes (empty
    /// when the command has no reply but the acknowledgement).
    fn request(&mut self, cmd: u8, version: u8, attrs: &Attrs) -> Result<Vec<u8>> {
        self.seq += 1;
        let seq = self.seq;
        let len = 16 + 4 + attrs.0.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&self.family.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[cmd, version, 0, 0]);
        msg.extend_from_slice(&attrs.0);
        let failed = |e: nix::Error| Error::Failed(format!("netlink: {e}"));
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()).map_err(failed)?;
        let mut reply = Vec::new();
        loop {
            for m in self.receive().map_err(failed)? {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_ERROR if m.error == 0 => return Ok(reply),
                    NLMSG_ERROR => {
                        return Err(Error::Failed(format!(
                            "netlink: {}",
                            nix::Error::from_raw(-m.error).desc()
                        )))
                    }
                    NLMSG_DONE => return Ok(reply),
                    _ => reply = m.attrs,
                }
            }
        }
    }

    /// Joins the NBD family's multicast group, to hear of dead links.
    fn subscribe(&self) -> Result<()> {
        let group = self.group.ok_or_else(|| {
            Error::Failed("netlink: the nbd family has no multicast group".into())
        })?;
        setsockopt(&self.fd, NetlinkAddMembership, &group)
            .map_err(|e| Error::Failed(format!("netlink: cannot join the nbd group: {e}")))?;
        setsockopt(&self.fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))
            .map_err(|e| Error::Failed(format!("netlink: {e}")))
    }
}

/// `NETLINK_ADD_MEMBERSHIP`, which nix does not have.
#[derive(Clone, Copy)]
struct NetlinkAddMembership;

impl nix::sys::socket::SetSockOpt for NetlinkAddMembership {
    type Val = u32;

    fn set<F: std::os::fd::AsFd>(&self, fd: &F, group: &u32) -> nix::Result<()> {
        // SAFETY: `fd` is a live socket for the duration of the call, and the option's value is
        // the 4 bytes of `group`, which outlive the call; the kernel only reads them.
        let res = unsafe {
            nix::libc::setsockopt(
                fd.as_fd().as_raw_fd(),
                nix::libc::SOL_NETLINK,
                nix::libc::NETLINK_ADD_MEMBERSHIP,
                std::ptr::from_ref(group).cast(),
                std::mem::size_of::<u32>() as nix::libc::socklen_t,
            )
        };
        nix::errno::Errno::result(res).map(drop)
    }
}

fn sockets_attr(export: &Export) -> Attrs {
    let mut fd = Attrs::default();
    fd.u32(NBD_SOCK_FD, export.stream.as_raw_fd() as u32);
    let mut item = Attrs::default();
    item.nested(NBD_SOCK_ITEM, &fd);
    item
}

/// The device of NBD index `index`.
pub fn device_path(index: u32) -> PathBuf {
    PathBuf::from(format!("/dev/nbd{index}"))
}

/// The index of an NBD device path (`/dev/nbd3` is 3).
pub fn index_of(device: &Path) -> Result<u32> {
    device
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("nbd"))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| Error::Usage(format!("{} is not an NBD device", device.display())))
}

/// Whether NBD device `index` is still the one this process connected: its `pid` file exists
/// from the connect to the last disconnect, and holds the pid of the task that connected it.
/// Whether the connection of `stream`, a socket handed to the kernel, has ended: the kernel
/// shuts a socket down when it calls the link dead, and the peer's close or a reset ends it too.
fn hung_up(stream: &TcpStream) -> bool {
    // A peek without waiting reads the end of the stream (0) or its error, and consumes
    // nothing the kernel, which reads this socket, would miss.
    let mut byte = [0u8; 1];
    match recv(
        stream.as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) | Err(nix::Error::EAGAIN | nix::Error::EINTR) => false,
        Err(_) => true,
    }
}

/// Whether NBD device `index` is still the keeper's: connected, to `url`. The device's backend
/// identifier is the URL the keeper set, the same in every PID namespace (its `pid` file holds
/// the connecting task's pid in the initial namespace, which a keeper in a container does not
/// know itself by).
fn still_ours(index: u32, url: &NbdUrl) -> bool {
    fs::metadata(format!("/sys/block/nbd{index}/pid")).is_ok()
        && backend(index).is_some_and(|b| b == url.to_string())
}

/// Takes the keeper's lock of NBD device `index` (`/run/dmmig-nbdN.keeper`): one keeper per
/// device, whoever started it.
fn lock_keeper(index: u32) -> Result<nix::fcntl::Flock<fs::File>> {
    let path = format!("/run/dmmig-nbd{index}.keeper");
    let file = fs::File::create(&path)
        .map_err(|e| Error::Failed(format!("cannot create the lock {path}: {e}")))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::Usage(format!(
            "/dev/nbd{index} already has a keeper (it holds {path})"
        ))
    })
}

/// Asks the kernel to disconnect NBD device `index`.
pub fn disconnect(index: u32) -> Result<()> {
    let mut genl = Genl::open()?;
    let mut attrs = Attrs::default();
    attrs.u32(NBD_ATTR_INDEX, index);
    genl.request(NBD_CMD_DISCONNECT, NBD_GENL_VERSION, &attrs)
        .map(drop)
}

/// Hands a negotiated export to the kernel; returns the index of its device.
fn kernel_connect(
    genl: &mut Genl,
    url: &NbdUrl,
    export: &Export,
    timeouts: Timeouts,
) -> Result<u32> {
    let mut attrs = Attrs::default();
    attrs
        .u64(NBD_ATTR_SIZE_BYTES, export.size)
        .u64(NBD_ATTR_BLOCK_SIZE_BYTES, 512)
        .u64(NBD_ATTR_TIMEOUT, timeouts.request_s)
        .u64(NBD_ATTR_DEAD_CONN_TIMEOUT, timeouts.dead_conn_s)
        .u64(NBD_ATTR_SERVER_FLAGS, u64::from(export.flags))
        .string(NBD_ATTR_BACKEND_IDENTIFIER, &url.to_string())
        .nested(NBD_ATTR_SOCKETS, &sockets_attr(export));
    let reply = genl.request(NBD_CMD_CONNECT, NBD_GENL_VERSION, &attrs)?;
    attr_u32(&parse_attrs(&reply), NBD_ATTR_INDEX)
        .ok_or_else(|| Error::Failed("netlink: the kernel sent no NBD device index".into()))
}

/// Gives NBD device `index` a new connection in place of its dead one. The kernel wants the
/// backend the device was connected with, so that a reconnect cannot swap in another export.
fn kernel_reconfigure(genl: &mut Genl, index: u32, url: &NbdUrl, export: &Export) -> Result<()> {
    let mut attrs = Attrs::default();
    attrs
        .u32(NBD_ATTR_INDEX, index)
        .string(NBD_ATTR_BACKEND_IDENTIFIER, &url.to_string())
        .nested(NBD_ATTR_SOCKETS, &sockets_attr(export));
    genl.request(NBD_CMD_RECONFIGURE, NBD_GENL_VERSION, &attrs)
        .map(drop)
}

/// A line from the keeper, to the kernel log: the keeper outlives the command that started it,
/// and has no terminal to write to after that. It goes to stderr too, for as long as the starter
/// reads it (a failed write there must not end the keeper).
fn note(text: std::fmt::Arguments) {
    let line = format!("dmmig[{}]: {text}", std::process::id());
    // <13>: facility user, level notice.
    if let Ok(mut kmsg) = fs::OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = kmsg.write_all(format!("<13>{line}\n").as_bytes());
    }
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// What a dead link means for the users of an NBD device.
#[derive(Debug, PartialEq, Eq)]
enum AfterDeadLink {
    /// Some migration onto the device was cancelled: its origin has every write, and the device
    /// is to be disconnected.
    GiveUp(Vec<String>),
    /// The device holds the only copy of its data (or nobody uses it): reconnect.
    Reconnect,
}

/// The device-mapper devices stacked on NBD device `index`: (kernel name, dm name).
fn dm_holders(index: u32) -> Vec<(String, String)> {
    let Ok(entries) = fs::read_dir(format!("/sys/block/nbd{index}/holders")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let kernel_name = entry.ok()?.file_name().to_str()?.to_string();
            let name = fs::read_to_string(format!("/sys/block/{kernel_name}/dm/name")).ok()?;
            Some((kernel_name, name.trim().to_string()))
        })
        .collect()
}

/// The state of the migration on dm device `kernel_name` (its sysfs `migrate/state`).
fn migration_state(kernel_name: &str) -> String {
    fs::read_to_string(format!("/sys/block/{kernel_name}/migrate/state"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// How many times the keeper asks for a cancel that neither took effect nor was refused by a
/// switch (the control device could not be opened, the table was being reloaded), and how long
/// it waits between two asks.
const CANCEL_TRIES: u32 = 10;
const CANCEL_RETRY: Duration = Duration::from_millis(200);

/// How long one `cancel` may take before the keeper stops waiting for it. The target answers a
/// cancel without waiting for the destination (it decides under a lock no device I/O is done
/// under), so this only guards against a kernel that does not.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// What one migration onto a dead device comes to.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Cancelled, or already failed or cancelled: its origin has every write.
    OnOrigin,
    /// Switched, or the migration is no longer on the device's user (the table became a
    /// linear on it): the device is its only copy.
    Switched,
    /// Neither could be confirmed. Not a reason to reconnect: a reconnect before the switch is
    /// the one thing the keeper must not do. Disconnecting fails the destination's I/O, so an
    /// unswitched migration fails onto its origin.
    Unconfirmed,
}

/// What a cancel's answer and the migration state read after it say; `None` if neither is
/// conclusive, and the cancel is to be asked again. A refused cancel means a switch only if the
/// state says so: it may have been refused for other reasons.
fn judge(accepted: bool, state: &str) -> Option<Verdict> {
    match state {
        "switched" => Some(Verdict::Switched),
        "failed" | "cancelled" => Some(Verdict::OnOrigin),
        _ if accepted => Some(Verdict::OnOrigin),
        _ => None,
    }
}

/// Sends `cancel` to the `migrate` target at `sector` of dm device `name`; whether the target
/// accepted it, or `None` if it did not answer within [`CANCEL_WAIT`].
fn send_cancel(name: &str, sector: u64) -> Option<bool> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let target = name.to_string();
    // In a thread of its own, so that a cancel that blocks cannot hold the keeper.
    std::thread::spawn(move || {
        let accepted = crate::dm::Dm::open()
            .and_then(|dm| dm.message(&target, sector, "cancel"))
            .is_ok();
        let _ = sender.send(accepted);
    });
    receiver.recv_timeout(CANCEL_WAIT).ok()
}

/// Cancels the migration onto device `dev` on dm device `name` (kernel name `kernel_name`), and
/// tells what became of it. The target decides atomically: it refuses `cancel` once switched.
fn cancel_migration(kernel_name: &str, name: &str, dev: &str) -> Verdict {
    for _ in 0..CANCEL_TRIES {
        // Read again each time: the table may have been swapped to a linear on the device.
        let line = match crate::dm::Dm::open().and_then(|dm| dm.table(name)) {
            Ok(table) => table.into_iter().find(|line| {
                line.target_type == "migrate" && line.params.split(' ').nth(1) == Some(dev)
            }),
            // The table cannot be read: the migrate target's own sysfs still tells a switched
            // (or ended) migration, and a holder without one is no migration at all.
            Err(_) => {
                let state = migration_state(kernel_name);
                if state.is_empty() {
                    return Verdict::Switched;
                }
                if let Some(verdict) = judge(false, &state) {
                    return verdict;
                }
                std::thread::sleep(CANCEL_RETRY);
                continue;
            }
        };
        // No migrate line onto the device any more: whatever uses it now has no other copy to
        // fall back on.
        let Some(line) = line else {
            return Verdict::Switched;
        };
        let accepted = send_cancel(name, line.start);
        if let Some(verdict) = judge(accepted == Some(true), &migration_state(kernel_name)) {
            return verdict;
        }
        std::thread::sleep(CANCEL_RETRY);
    }
    Verdict::Unconfirmed
}

/// Decides what to do about the dead link of NBD device `index`, cancelling every migration
/// onto it that has not switched.
fn after_dead_link(index: u32) -> AfterDeadLink {
    let Ok(dev) = fs::read_to_string(format!("/sys/block/nbd{index}/dev")) else {
        return AfterDeadLink::Reconnect;
    };
    let dev = dev.trim();
    let mut on_origin = Vec::new();
    for (kernel_name, name) in dm_holders(index) {
        // Only a migrate target may lose a write to a reconnect; a linear or anything else on
        // the device is served by reconnecting (cancel_migration tells them apart, also when
        // the table cannot be read).
        match cancel_migration(&kernel_name, &name, dev) {
            Verdict::OnOrigin => on_origin.push(name),
            Verdict::Unconfirmed => {
                note(format_args!(
                    "nbd{index}: could not confirm that {name} cancelled or switched; \
                     disconnecting, which fails a migration that has not switched onto its origin"
                ));
                on_origin.push(name);
            }
            Verdict::Switched => {}
        }
    }
    if on_origin.is_empty() {
        AfterDeadLink::Reconnect
    } else {
        AfterDeadLink::GiveUp(on_origin)
    }
}

/// `dmmig nbd keep TARGET`: with a URL, connects it as a new NBD device; with a device
/// (`/dev/nbdN`, already connected, whose keeper is gone), takes it over. Prints the device's
/// path on stdout (the line its starter waits for), then keeps it connected until it is
/// disconnected.
pub fn keep(target: &str, mut timeouts: Timeouts, stop: Arc<AtomicBool>) -> Result<()> {
    // Subscribed before the connect: no dead link of the device can go unheard.
    let events = Genl::open()?;
    events.subscribe()?;
    let mut genl = Genl::open()?;
    let mut handshake_timeout = Duration::from_secs(timeouts.request_s.max(1));
    let mut user_timeout = timeouts.tcp_user_timeout();
    // The socket the kernel was handed, watched for a hang-up: a LINK_DEAD can be lost (the
    // group's socket overflowed, or the kernel could not allocate the event), the socket's end
    // cannot. A keeper that took a device over has no such socket, and hears LINK_DEAD only.
    let mut watched: Option<TcpStream>;
    let (url, index, size, _lock) = match NbdUrl::parse(target)? {
        Some(url) => {
            let export = negotiate(&url, handshake_timeout, user_timeout)?;
            let size = export.size;
            let index = kernel_connect(&mut genl, &url, &export, timeouts)?;
            watched = Some(export.stream);
            let lock = lock_keeper(index)?;
            note(format_args!("nbd{index}: connected to {url}"));
            (url, index, size, lock)
        }
        None => {
            let index = index_of(Path::new(target))?;
            let lock = lock_keeper(index)?;
            let url = backend(index)
                .filter(|_| fs::metadata(format!("/sys/block/nbd{index}/pid")).is_ok())
                .and_then(|b| NbdUrl::parse(&b).ok().flatten())
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{target} is not connected by dmmig (no nbd:// backend): nothing to keep"
                    ))
                })?;
            let size = fs::read_to_string(format!("/sys/block/nbd{index}/size"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .map_or(0, |sectors| sectors * 512);
            // The device's own request timeout, not a default: the pause before a reconnect
            // must cover the TCP user timeout of the socket it was connected with.
            if let Some(ms) = fs::read_to_string(format!("/sys/block/nbd{index}/queue/io_timeout"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|&ms| ms >= 1000)
            {
                timeouts.request_s = ms / 1000;
                handshake_timeout = Duration::from_secs(timeouts.request_s);
                user_timeout = timeouts.tcp_user_timeout();
            }
            note(format_args!("nbd{index}: keeping it connected to {url}"));
            watched = None;
            (url, index, size, lock)
        }
    };
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{}", device_path(index).display());
    let _ = stdout.flush();
    let url = &url;
    let stopped = || {
        note(format_args!(
            "nbd{index}: keeper stopped by a signal; the device stays connected with no keeper \
             (a dead link is then not reconnected): run 'dmmig nbd keep /dev/nbd{index}'"
        ));
        Ok(())
    };
    loop {
        if stop.load(Ordering::Relaxed) {
            return stopped();
        }
        if !still_ours(index, url) {
            return Ok(());
        }
        let messages = match events.receive() {
            Ok(m) => m,
            // ENOBUFS: the socket overflowed and some multicast was lost; the watched socket
            // still tells a dead connection.
            Err(nix::Error::EAGAIN | nix::Error::EINTR | nix::Error::ENOBUFS) => Vec::new(),
            Err(e) => return Err(Error::Failed(format!("netlink: {e}"))),
        };
        let link_dead = messages.iter().any(|m| {
            m.kind == events.family
                && m.cmd == NBD_CMD_LINK_DEAD
                && attr_u32(&parse_attrs(&m.attrs), NBD_ATTR_INDEX) == Some(index)
        });
        let hung_up = !link_dead && watched.as_ref().is_some_and(hung_up);
        if hung_up {
            note(format_args!(
                "nbd{index}: the connection to {url} hung up (no LINK_DEAD was heard)"
            ));
        }
        let dead = link_dead || hung_up;
        if !dead || !still_ours(index, url) {
            continue;
        }
        if let AfterDeadLink::GiveUp(names) = after_dead_link(index) {
            note(format_args!(
                "nbd{index}: the connection to {url} is dead before the switch: gave up the \
                 migration of {} onto it (the origin has every write), disconnecting",
                names.join(", ")
            ));
            if let Err(e) = disconnect(index) {
                note(format_args!("nbd{index}: disconnect failed: {e}"));
            }
            return Ok(());
        }
        note(format_args!(
            "nbd{index}: the connection to {url} is dead; reconnecting"
        ));
        // What the dead socket had not delivered is dropped by TCP within its user timeout;
        // a new connection writes only after that.
        std::thread::sleep(user_timeout);
        let mut tries = 0u64;
        loop {
            if stop.load(Ordering::Relaxed) {
                return stopped();
            }
            if !still_ours(index, url) {
                return Ok(());
            }
            tries += 1;
            let attempt = negotiate(url, handshake_timeout, user_timeout).and_then(|export| {
                if size != 0 && export.size != size {
                    return Err(Error::Failed(format!(
                        "the export's size changed from {size} to {} bytes",
                        export.size
                    )));
                }
                kernel_reconfigure(&mut genl, index, url, &export)?;
                Ok(export.stream)
            });
            match attempt {
                Ok(stream) => {
                    // The dead connection's socket is let go only now, after the kernel has
                    // the new one.
                    watched = Some(stream);
                    // A report of the death just handled that was still queued (LINK_DEAD
                    // after the hang-up was seen, or the other way round) must not start a
                    // second reconnect of a connection that works.
                    events.drain();
                    note(format_args!(
                        "nbd{index}: reconnected to {url} (try {tries})"
                    ));
                    break;
                }
                Err(e) => {
                    if tries == 1 || tries.is_multiple_of(30) {
                        note(format_args!(
                            "nbd{index}: reconnect failed (try {tries}): {e}"
                        ));
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Starts a keeper (`dmmig nbd keep`) in a process group of its own, waits for it to connect,
/// and returns the device's path and the keeper. The keeper outlives this process (nothing
/// needs to wait for it); its stderr is read only
/// until it has connected, so that nothing it writes later can hold up or break a caller that
/// collects this process's output.
pub fn connect(url: &NbdUrl, timeouts: Timeouts) -> Result<(PathBuf, std::process::Child)> {
    start_keeper(&url.to_string(), timeouts)
}

/// Starts a keeper for NBD device `device`, already connected (its keeper died).
pub fn attach_keeper(device: &Path) -> Result<std::process::Child> {
    start_keeper(&device.to_string_lossy(), Timeouts::default()).map(|(_, keeper)| keeper)
}

/// Starts `dmmig nbd keep TARGET` and waits for the device it keeps. Under systemd the keeper
/// runs in a scope unit of its own (`systemd-run --scope`), so that stopping or restarting the
/// service that started it (its cgroup) does not stop the keeper; elsewhere, in a process group
/// of its own.
pub fn start_keeper(target: &str, timeouts: Timeouts) -> Result<(PathBuf, std::process::Child)> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe()
        .map_err(|e| Error::Failed(format!("cannot find dmmig's own path: {e}")))?;
    let mut command = if Path::new("/run/systemd/system").exists() {
        let mut command = Command::new("systemd-run");
        command
            .args(["--scope", "--collect", "--quiet", "--description"])
            .arg(format!("dmmig NBD keeper of {target}"))
            .arg(exe);
        command
    } else {
        Command::new(exe)
    };
    let mut child = command
        .args(["nbd", "keep", "--foreground", "--timeout"])
        .arg(timeouts.request_s.to_string())
        .arg("--dead-conn-timeout")
        .arg(timeouts.dead_conn_s.to_string())
        .arg(target)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Failed(format!("cannot start the NBD keeper: {e}")))?;
    let stdout = child.stdout.take().expect("a piped stdout");
    let stderr = child.stderr.take().expect("a piped stderr");
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    let device = line.trim();
    if device.is_empty() {
        let mut why = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut why);
        let status = child.wait().ok();
        let why = why
            .lines()
            .map(|l| l.split_once("]: ").map_or(l, |(_, text)| text))
            .map(|l| l.strip_prefix("dmmig: ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::Failed(format!(
            "cannot keep {target}: {}",
            if why.is_empty() {
                status.map_or("the keeper failed".to_string(), |s| format!("keeper: {s}"))
            } else {
                why
            }
        )));
    }
    Ok((PathBuf::from(device), child))
}

/// The export an NBD device was connected to (its `backend` file), if it is one of ours.
pub fn backend(index: u32) -> Option<String> {
    fs::read_to_string(format!("/sys/block/nbd{index}/backend"))
        .ok()
        .map(|s| s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(NbdUrl::parse("/dev/sdb").unwrap(), None);
        assert_eq!(
            NbdUrl::parse("nbd://10.0.0.2/disk1").unwrap(),
            Some(NbdUrl {
                host: "10.0.0.2".into(),
                port: DEFAULT_PORT,
                export: "disk1".into()
            })
        );
        let url = NbdUrl::parse("nbd://store:10810/vm1/root")
            .unwrap()
            .unwrap();
        assert_eq!((url.host.as_str(), url.port), ("store", 10810));
        assert_eq!(url.export, "vm1/root");
        assert_eq!(url.to_string(), "nbd://store:10810/vm1/root");
        assert_eq!(NbdUrl::parse("nbd://store").unwrap().unwrap().export, "");
        // IPv6 literals, in brackets; printed in one spelling, with the port.
        let url = NbdUrl::parse("nbd://[::1]/x").unwrap().unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", DEFAULT_PORT));
        assert_eq!(url.to_string(), "nbd://[::1]:10809/x");
        let url = NbdUrl::parse("nbd://[FE80:0::2]:10810/vm/a")
            .unwrap()
            .unwrap();
        assert_eq!((url.port, url.export.as_str()), (10810, "vm/a"));
        assert_eq!(url.to_string(), "nbd://[fe80::2]:10810/vm/a");
        assert_eq!(
            NbdUrl::parse(&url.to_string())
                .unwrap()
                .unwrap()
                .to_string(),
            url.to_string()
        );
        for bad in [
            "nbd:///x",
            "nbd://h:0/x",
            "nbd://h:99999/x",
            "nbd://h:port/x",
            "nbd://::1/x",
            "nbd://[::1/x",
            "nbd://[::1]x/y",
            "nbd://[nothost]/x",
            "nbd://[]/x",
        ] {
            assert!(matches!(NbdUrl::parse(bad), Err(Error::Usage(_))), "{bad}");
        }
    }

    /// A server on `listener` that runs `serve` on its first connection.
    fn fake_server(
        listener: std::net::TcpListener,
        serve: impl FnOnce(TcpStream) + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            serve(stream);
        })
    }

    /// A fixed-newstyle server that answers NBD_OPT_GO with a 1 MiB writable export.
    fn serve_go(mut stream: TcpStream) {
        let mut hello = Vec::new();
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        stream.write_all(&hello).unwrap();
        let _client_flags = read_u32(&mut stream).unwrap();
        assert_eq!(read_u64(&mut stream).unwrap(), IHAVEOPT);
        assert_eq!(read_u32(&mut stream).unwrap(), OPT_GO);
        let len = read_u32(&mut stream).unwrap() as usize;
        let mut data = vec![0u8; len];
        stream.read_exact(&mut data).unwrap();
        let reply = |kind: u32, payload: &[u8]| {
            let mut msg = Vec::new();
            msg.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
            msg.extend_from_slice(&OPT_GO.to_be_bytes());
            msg.extend_from_slice(&kind.to_be_bytes());
            msg.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            msg.extend_from_slice(payload);
            msg
        };
        let mut info = Vec::new();
        info.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        info.extend_from_slice(&(1u64 << 20).to_be_bytes());
        info.extend_from_slice(&1u16.to_be_bytes());
        stream.write_all(&reply(REP_INFO, &info)).unwrap();
        stream.write_all(&reply(REP_ACK, &[])).unwrap();
    }

    fn negotiate_with(
        listener: std::net::TcpListener,
        serve: impl FnOnce(TcpStream) + Send + 'static,
    ) -> Result<Export> {
        let addr = listener.local_addr().unwrap();
        let server = fake_server(listener, serve);
        let host = match addr.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            std::net::IpAddr::V4(ip) => ip.to_string(),
        };
        let url = NbdUrl::parse(&format!("nbd://{host}:{}/x", addr.port()))
            .unwrap()
            .unwrap();
        let result = negotiate(&url, Duration::from_secs(1), Duration::from_secs(1));
        // A client that never connected leaves the server in `accept`: a connection of ours
        // lets it go on (and fail), so that the test fails rather than hangs.
        let _ = TcpStream::connect(addr);
        server
            .join()
            .expect("the server failed: the client never spoke to it");
        result
    }

    fn failure(result: Result<Export>) -> String {
        match result {
            Ok(_) => panic!("the handshake succeeded"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn negotiates_over_ipv6() {
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here: skipped");
            return;
        };
        let export = negotiate_with(listener, serve_go).unwrap();
        assert_eq!(export.size, 1 << 20);
    }

    #[test]
    fn says_what_a_failed_handshake_means() {
        let local = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent = failure(negotiate_with(local(), |stream| {
            std::thread::sleep(Duration::from_millis(1500));
            drop(stream);
        }));
        assert!(silent.contains("did not answer within 1 s"), "{silent}");
        let closed = failure(negotiate_with(local(), drop));
        assert!(closed.contains("closed the connection"), "{closed}");
        let old = failure(negotiate_with(local(), |mut stream| {
            let mut hello = NBDMAGIC.to_be_bytes().to_vec();
            hello.extend_from_slice(&OLDSTYLE_MAGIC.to_be_bytes());
            hello.extend_from_slice(&[0u8; 8 + 4 + 124]);
            stream.write_all(&hello).unwrap();
        }));
        assert!(old.contains("old-style"), "{old}");
        let other = failure(negotiate_with(local(), |mut stream| {
            stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
        }));
        assert!(other.contains("not an NBD server"), "{other}");
    }

    /// The watched socket tells the end of its connection: the peer's close, or its own
    /// shutdown (what the kernel does to a connection it calls dead).
    #[test]
    fn a_socket_that_ended_is_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!hung_up(&client), "a live connection");
        drop(server);
        std::thread::sleep(Duration::from_millis(50));
        assert!(hung_up(&client), "the peer closed");
        let other = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        other.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(hung_up(&other), "shut down here");
    }

    /// A refused cancel is a switch only when the state says so: a cancel that failed for any
    /// other reason while the migration still copies is asked again, never taken for a switch.
    #[test]
    fn a_refused_cancel_is_not_taken_for_a_switch() {
        assert_eq!(judge(false, "switched"), Some(Verdict::Switched));
        assert_eq!(judge(true, "cancelled"), Some(Verdict::OnOrigin));
        assert_eq!(judge(false, "failed"), Some(Verdict::OnOrigin));
        for state in ["copying", "synced", "paused", "switching", ""] {
            assert_eq!(judge(false, state), None, "{state}");
        }
    }

    #[test]
    fn attributes_round_trip() {
        let mut fd = Attrs::default();
        fd.u32(NBD_SOCK_FD, 7);
        let mut inner = Attrs::default();
        inner.nested(NBD_SOCK_ITEM, &fd);
        let mut attrs = Attrs::default();
        attrs
            .u64(NBD_ATTR_SIZE_BYTES, 1 << 30)
            .string(NBD_ATTR_BACKEND_IDENTIFIER, "nbd://h:1/e")
            .nested(NBD_ATTR_SOCKETS, &inner);
        assert_eq!(attrs.0.len() % 4, 0);
        let parsed = parse_attrs(&attrs.0);
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            attr(&parsed, NBD_ATTR_SIZE_BYTES),
            Some(&(1u64 << 30).to_ne_bytes()[..])
        );
        assert_eq!(
            attr(&parsed, NBD_ATTR_BACKEND_IDENTIFIER),
            Some(&b"nbd://h:1/e\0"[..])
        );
        let sockets = parse_attrs(attr(&parsed, NBD_ATTR_SOCKETS).unwrap());
        assert_eq!(sockets[0].0, NBD_SOCK_ITEM);
        assert_eq!(attr_u32(&parse_attrs(sockets[0].1), NBD_SOCK_FD), Some(7));
    }

    #[test]
    fn truncated_attributes_are_ignored() {
        let mut attrs = Attrs::default();
        attrs.u32(NBD_ATTR_INDEX, 3);
        let mut bytes = attrs.0.clone();
        bytes.extend_from_slice(&[200, 0, 1, 0]);
        assert_eq!(parse_attrs(&bytes).len(), 1);
    }
}
