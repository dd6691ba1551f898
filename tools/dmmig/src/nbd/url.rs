//! NBD URLs: `nbd://HOST[:PORT]/EXPORT` parsed (an IPv6 literal in brackets) and printed in one
//! spelling per destination.

use crate::error::{Error, Result};

/// The NBD port IANA assigned, `nbd-server`'s and `qemu-nbd`'s default.
pub const DEFAULT_PORT: u16 = 10809;

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
            // Host names are not case-sensitive: one spelling, so that two URLs of one
            // destination compare equal.
            host: host.to_ascii_lowercase(),
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

/// How a connection's token begins, so that an export name with a `#` of its own is not read as
/// one.
const TOKEN_PREFIX: &str = "dmmig-";

/// What dmmig sets as an NBD device's backend identifier: the export's URL and a token of the
/// connection, `URL#TOKEN`. The kernel shows it in `/sys/block/nbdN/backend`, the same in every
/// namespace, and wants it again for a reconnect. A keeper knows its device by it: the URL alone
/// would let a keeper of an earlier connection take a later connection of the same export that
/// got the same index for its own, and two keepers would then reconnect one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendId {
    /// The export.
    pub url: NbdUrl,
    /// The whole identifier, as the kernel holds it.
    text: String,
}

impl BackendId {
    /// A new identifier for a connection to `url`: its token is this process's id and the
    /// time, which no other connection of this host shares.
    pub fn new(url: &NbdUrl) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            url: url.clone(),
            text: format!("{url}#{TOKEN_PREFIX}{:x}-{nanos:x}", std::process::id()),
        }
    }

    /// Reads a device's backend identifier: `URL#TOKEN`, or a bare URL (a device connected by
    /// an earlier dmmig); `None` if it is not an NBD URL (another tool connected the device).
    pub fn parse(text: &str) -> Option<Self> {
        let url_text = match text.rsplit_once('#') {
            Some((url, token))
                if token.strip_prefix(TOKEN_PREFIX).is_some_and(|t| {
                    !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
                }) =>
            {
                url
            }
            _ => text,
        };
        Some(Self {
            url: NbdUrl::parse(url_text).ok().flatten()?,
            text: text.to_string(),
        })
    }

    /// The identifier as the kernel holds it.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_ids_tell_connections_apart() {
        let url = NbdUrl::parse("nbd://Store:10809/disk#1").unwrap().unwrap();
        let a = BackendId::new(&url);
        std::thread::sleep(std::time::Duration::from_millis(1));
        let b = BackendId::new(&url);
        assert_ne!(a.as_str(), b.as_str(), "two connections of one export");
        let read = BackendId::parse(a.as_str()).unwrap();
        assert_eq!(read, a);
        assert_eq!(read.url.to_string(), "nbd://store:10809/disk#1");
        // A bare URL, as an earlier dmmig set it; an export name with a '#' of its own.
        let bare = BackendId::parse("nbd://store:10809/disk#1").unwrap();
        assert_eq!(bare.url.export, "disk#1");
        assert_eq!(bare.as_str(), "nbd://store:10809/disk#1");
        assert!(BackendId::parse("/srv/disk.img").is_none());
    }

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
}
