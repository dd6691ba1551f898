//! Generic netlink to the kernel's NBD family: attributes and messages, a socket bound to the
//! family (and its multicast group, where dead links are heard), and the connect, reconfigure and
//! disconnect commands.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recv, send, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag,
    SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use super::handshake::Export;
use super::url::BackendId;
use super::Timeouts;
use crate::error::{Error, Result};

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
pub(super) const NBD_CMD_LINK_DEAD: u8 = 4;
pub(super) const NBD_ATTR_INDEX: u16 = 1;
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
pub(super) fn parse_attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
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

pub(super) fn attr_u32(attrs: &[(u16, &[u8])], kind: u16) -> Option<u32> {
    attr(attrs, kind)?
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

/// One message of a netlink reply: its type, and the generic netlink command and attributes.
pub(super) struct Message {
    pub(super) kind: u16,
    seq: u32,
    pub(super) cmd: u8,
    /// The negative errno of an NLMSG_ERROR (0: the acknowledgement).
    error: i32,
    pub(super) attrs: Vec<u8>,
}

/// How long a request waits for the kernel's answer (seconds).
const REQUEST_WAIT_S: i64 = 30;

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
            // An error message too short to hold its code is no acknowledgement: EIO.
            NLMSG_ERROR => (0, -nix::libc::EIO, Vec::new()),
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
pub(super) struct Genl {
    fd: OwnedFd,
    pub(super) family: u16,
    group: Option<u32>,
    seq: u32,
}

impl Genl {
    pub(super) fn open() -> Result<Self> {
        let failed = |e: nix::Error| Error::Failed(format!("netlink: {e}"));
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkGeneric,
        )
        .map_err(failed)?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(failed)?;
        // A request waits at most this long for the kernel's answer, so that a keeper cannot
        // hang in one (a subscribed socket waits 1 s per receive instead).
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::new(REQUEST_WAIT_S, 0),
        )
        .map_err(failed)?;
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

    pub(super) fn receive(&self) -> nix::Result<Vec<Message>> {
        let mut buf = vec![0u8; 65536];
        let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        Ok(parse_messages(&buf[..n]))
    }

    /// Drops the messages already queued, without waiting.
    pub(super) fn drain(&self) {
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
    pub(super) fn subscribe(&self) -> Result<()> {
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

/// Asks the kernel to disconnect NBD device `index`.
pub fn disconnect(index: u32) -> Result<()> {
    let mut genl = Genl::open()?;
    let mut attrs = Attrs::default();
    attrs.u32(NBD_ATTR_INDEX, index);
    genl.request(NBD_CMD_DISCONNECT, NBD_GENL_VERSION, &attrs)
        .map(drop)
}

/// Hands a negotiated export to the kernel; returns the index of its device.
pub(super) fn kernel_connect(
    genl: &mut Genl,
    backend: &BackendId,
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
        .string(NBD_ATTR_BACKEND_IDENTIFIER, backend.as_str())
        .nested(NBD_ATTR_SOCKETS, &sockets_attr(export));
    let reply = genl.request(NBD_CMD_CONNECT, NBD_GENL_VERSION, &attrs)?;
    attr_u32(&parse_attrs(&reply), NBD_ATTR_INDEX)
        .ok_or_else(|| Error::Failed("netlink: the kernel sent no NBD device index".into()))
}

/// Gives NBD device `index` a new connection in place of its dead one. The kernel wants the
/// backend the device was connected with, so that a reconnect cannot swap in another export.
pub(super) fn kernel_reconfigure(
    genl: &mut Genl,
    index: u32,
    backend: &BackendId,
    export: &Export,
) -> Result<()> {
    let mut attrs = Attrs::default();
    attrs
        .u32(NBD_ATTR_INDEX, index)
        .string(NBD_ATTR_BACKEND_IDENTIFIER, backend.as_str())
        .nested(NBD_ATTR_SOCKETS, &sockets_attr(export));
    genl.request(NBD_CMD_RECONFIGURE, NBD_GENL_VERSION, &attrs)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A netlink message of `kind` with sequence number `seq` and body `body`, as the kernel
    /// sends it.
    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
        data.extend_from_slice(&kind.to_ne_bytes());
        data.extend_from_slice(&0u16.to_ne_bytes());
        data.extend_from_slice(&seq.to_ne_bytes());
        data.extend_from_slice(&0u32.to_ne_bytes());
        data.extend_from_slice(body);
        data
    }

    #[test]
    fn a_short_error_message_is_an_error_not_an_acknowledgement() {
        // An NLMSG_ERROR whose body is too short for its code: before a8aee5f it parsed as
        // error 0, the acknowledgement, and a failed request passed for done.
        let messages = parse_messages(&message(NLMSG_ERROR, 7, &[0xff, 0xff]));
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].kind, NLMSG_ERROR);
        assert_eq!(messages[0].error, -nix::libc::EIO);
        // The acknowledgement itself: a whole code of 0.
        let ack = message(NLMSG_ERROR, 8, &0i32.to_ne_bytes());
        assert_eq!(parse_messages(&ack)[0].error, 0);
    }
}
