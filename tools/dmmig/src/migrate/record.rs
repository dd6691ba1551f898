//! What `move` records for `recover`, where it keeps it, and the lock of a move.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::path::PathBuf;

/// What `move` records for `recover`: enough to load the migrate table again after a reboot.
/// Written atomically before the migrate table is loaded, removed when the move has ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveRecord {
    /// The dm device.
    pub name: String,
    /// Its length in sectors.
    pub length: u64,
    /// The origin: an image file (attached to a loop device again after a reboot) or a block
    /// device.
    pub origin: PathBuf,
    /// The destination, likewise.
    pub destination: PathBuf,
    /// For an NBD destination, its URL: `destination` is then the `/dev/nbdN` it was attached
    /// as, which a reboot disconnects, and `recover` attaches the URL again.
    #[serde(default)]
    pub destination_url: Option<String>,
    /// The metadata file or device.
    pub metadata: PathBuf,
    /// Whether `move` created the metadata (and removes it at the end).
    pub metadata_created: bool,
    /// Region size, copy depth and rates of the migrate table (`rate` is the ceiling).
    pub region_size: Option<u64>,
    pub depth: Option<u32>,
    pub rate: Option<u64>,
    #[serde(default)]
    pub min_rate: Option<u64>,
    /// Keep the old image at the end.
    pub keep_source: bool,
}

/// Where `move` keeps its records (`DMMIG_STATE_DIR`, default `/var/lib/dmmig`): it must
/// survive a reboot.
pub fn state_dir() -> PathBuf {
    std::env::var_os("DMMIG_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/dmmig"))
}

impl MoveRecord {
    fn path(name: &str) -> PathBuf {
        state_dir().join(format!("{name}.json"))
    }

    /// Reads the record of a move of `name`.
    pub fn read(name: &str) -> Result<Self> {
        let path = Self::path(name);
        let text = fs::read_to_string(&path).map_err(|e| {
            Error::Usage(format!(
                "no record of a move of '{name}' ({}: {e}); give --origin, --dest and --metadata",
                path.display()
            ))
        })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::Failed(format!("{} is damaged: {e}", path.display())))
    }

    /// Writes the record atomically (a temporary file, synced, renamed over, the folder synced).
    pub(super) fn write(&self) -> Result<()> {
        let dir = state_dir();
        let fail = |e: std::io::Error| {
            Error::Failed(format!("cannot record the move in {}: {e}", dir.display()))
        };
        fs::create_dir_all(&dir).map_err(fail)?;
        let path = Self::path(&self.name);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Failed(format!("cannot format the record: {e}")))?;
        let mut file = File::create(&tmp).map_err(fail)?;
        std::io::Write::write_all(&mut file, text.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        fs::rename(&tmp, &path).map_err(fail)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(fail)
    }

    pub(super) fn remove(name: &str) {
        let _ = fs::remove_file(Self::path(name));
    }
}

/// Refuses a second `move` of the same device: an exclusive lock held for the whole move.
pub(super) fn lock(name: &str) -> Result<nix::fcntl::Flock<File>> {
    let path = format!("/run/dmmig-{name}.lock");
    let file = File::create(&path)
        .map_err(|e| Error::Failed(format!("cannot create the lock {path}: {e}")))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        Error::Usage(format!(
            "another dmmig move of '{name}' is running; wait for it to end"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before NBD URLs were recorded still reads, with no URL; a new one
    /// keeps its URL.
    #[test]
    fn records_keep_an_nbd_url() {
        let old = r#"{"name":"vm1","length":8,"origin":"/a.img","destination":"/dev/nbd0",
            "metadata":"/m","metadata_created":true,"region_size":null,"depth":null,
            "rate":null,"keep_source":false}"#;
        let record: MoveRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.destination_url, None);
        let record = MoveRecord {
            destination_url: Some("nbd://[::1]:10809/x".into()),
            ..record
        };
        let text = serde_json::to_string(&record).unwrap();
        let back: MoveRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.destination_url.as_deref(), Some("nbd://[::1]:10809/x"));
    }
}
