//! Errors of dmmig, each with a documented exit code.

use std::process::ExitCode;

/// Exit codes, documented in `dmmig --help`.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The kernel refused the operation, or it failed.
    pub const FAILED: u8 = 1;
    /// Bad arguments or input (also clap's code for usage errors).
    pub const USAGE: u8 = 2;
    /// The named device does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// Not allowed: run as root.
    pub const PERMISSION: u8 = 4;
}

/// What went wrong, worded for the person at the terminal: the problem and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("no device-mapper device named '{0}' (see 'dmmig ls')")]
    NotFound(String),
    #[error("permission denied {0}: run dmmig as root")]
    Permission(&'static str),
    #[error("{0}")]
    Failed(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::Usage(_) => exit::USAGE,
            Self::NotFound(_) => exit::NOT_FOUND,
            Self::Permission(_) => exit::PERMISSION,
            Self::Failed(_) => exit::FAILED,
        })
    }
}

/// The errno of a failed device-mapper ioctl, if that is what the error is.
pub fn ioctl_errno(err: &devicemapper::DmError) -> Option<nix::errno::Errno> {
    match err {
        devicemapper::DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => {
            // The crate's nix may be another version than ours: go through the number.
            Some(nix::errno::Errno::from_raw(**errno as i32))
        }
        _ => None,
    }
}

/// Converts a devicemapper error into ours, naming the operation and the device, classified
/// by the ioctl's errno (never by the crate's message text, which dumps the ioctl header).
pub fn dm_error(op: &str, name: &str, err: devicemapper::DmError) -> Error {
    use nix::errno::Errno;
    match ioctl_errno(&err) {
        Some(Errno::ENXIO | Errno::ENODEV) => Error::NotFound(name.to_string()),
        Some(Errno::EACCES | Errno::EPERM) => Error::Permission("for device-mapper"),
        Some(errno) => Error::Failed(format!("{op} '{name}' failed: {}", errno.desc())),
        None => Error::Failed(format!("{op} '{name}' failed: {err}")),
    }
}

/// The result type of every command.
pub type Result<T> = std::result::Result<T, Error>;
