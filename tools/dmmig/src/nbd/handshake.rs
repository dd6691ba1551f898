//! The NBD handshake with the server: fixed newstyle, `NBD_OPT_GO` or the `NBD_OPT_EXPORT_NAME`
//! fallback of an older server, and what a failed handshake means in words.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};

use super::url::NbdUrl;
use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
