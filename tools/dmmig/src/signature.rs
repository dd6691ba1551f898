//! Whether a device already holds data: the on-disk signatures of filesystems, partition tables,
//! volume managers and encrypted or RAID volumes, at the places `wipefs` and libblkid look.
//!
//! `O_EXCL` sees only holders on this host: a disk that another host, a VM's QEMU or qemu-nbd
//! has open is not held, and a device that is simply full of someone's data is not held either.
//! A move overwrites its destination from the first sector to the last, so a destination with a
//! signature is refused unless the user says `--force`.

use std::io::{Read, Seek, SeekFrom};

/// How much of the device the probes read: the furthest signature (ISO 9660's at 32 KiB + 1,
/// btrfs's at 64 KiB + 64) plus its length.
const PROBE_BYTES: usize = 65536 + 4096;

/// One signature: its bytes at an offset, and what it means.
struct Magic {
    offset: usize,
    bytes: &'static [u8],
    what: &'static str,
}

/// The signatures looked for, in the order they are reported; the first match is named.
const MAGICS: &[Magic] = &[
    Magic {
        offset: 0,
        bytes: b"LUKS\xba\xbe",
        what: "a LUKS encrypted volume",
    },
    Magic {
        offset: 0,
        bytes: b"XFSB",
        what: "an XFS filesystem",
    },
    Magic {
        offset: 1080,
        bytes: &[0x53, 0xef],
        what: "an ext2/ext3/ext4 filesystem",
    },
    Magic {
        offset: 65536 + 64,
        bytes: b"_BHRfS_M",
        what: "a btrfs filesystem",
    },
    Magic {
        offset: 512,
        bytes: b"EFI PART",
        what: "a GPT partition table",
    },
    Magic {
        offset: 4096 - 10,
        bytes: b"SWAPSPACE2",
        what: "a swap area",
    },
    Magic {
        offset: 4096,
        bytes: &[0xfc, 0x4e, 0x2b, 0xa9],
        what: "an MD RAID member (superblock 1.2)",
    },
    Magic {
        offset: 0,
        bytes: &[0xfc, 0x4e, 0x2b, 0xa9],
        what: "an MD RAID member (superblock 1.1)",
    },
    Magic {
        offset: 32769,
        bytes: b"CD001",
        what: "an ISO 9660 filesystem",
    },
    Magic {
        offset: 0,
        bytes: b"QFI\xfb",
        what: "a qcow2 image (a raw device holding a qcow2 file)",
    },
];

/// What `data`, the start of a device, holds, if it has a signature.
pub fn identify(data: &[u8]) -> Option<&'static str> {
    let at = |offset: usize, bytes: &[u8]| data.get(offset..offset + bytes.len()) == Some(bytes);
    if let Some(magic) = MAGICS.iter().find(|m| at(m.offset, m.bytes)) {
        return Some(magic.what);
    }
    // An LVM physical volume labels one of its first four sectors.
    if (0..4).any(|sector| at(sector * 512, b"LABELONE") && at(sector * 512 + 24, b"LVM2 001")) {
        return Some("an LVM physical volume");
    }
    // The boot signature of a DOS partition table, or of a FAT or NTFS boot sector.
    if at(510, &[0x55, 0xaa]) {
        return Some("a DOS partition table or a boot sector");
    }
    None
}

/// Reads the start of `device` and says what it holds, if anything.
pub fn probe(device: &mut (impl Read + Seek)) -> std::io::Result<Option<&'static str>> {
    device.seek(SeekFrom::Start(0))?;
    let mut data = Vec::with_capacity(PROBE_BYTES);
    device.take(PROBE_BYTES as u64).read_to_end(&mut data)?;
    Ok(identify(&data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(offset: usize, bytes: &[u8]) -> Vec<u8> {
        let mut data = vec![0u8; PROBE_BYTES];
        data[offset..offset + bytes.len()].copy_from_slice(bytes);
        data
    }

    #[test]
    fn a_blank_or_short_device_has_no_signature() {
        assert_eq!(identify(&vec![0u8; PROBE_BYTES]), None);
        assert_eq!(identify(&[]), None);
        assert_eq!(identify(&[0x53; 100]), None);
    }

    #[test]
    fn names_each_signature() {
        for magic in MAGICS {
            let found = identify(&with(magic.offset, magic.bytes));
            assert!(found.is_some(), "{}", magic.what);
        }
        assert_eq!(
            identify(&with(1080, &[0x53, 0xef])),
            Some("an ext2/ext3/ext4 filesystem")
        );
        let mut lvm = with(512, b"LABELONE");
        lvm[512 + 24..512 + 32].copy_from_slice(b"LVM2 001");
        assert_eq!(identify(&lvm), Some("an LVM physical volume"));
        assert_eq!(identify(&with(512, b"LABELONE")), None);
        assert_eq!(
            identify(&with(510, &[0x55, 0xaa])),
            Some("a DOS partition table or a boot sector")
        );
    }

    #[test]
    fn probes_a_file_from_its_start() {
        let mut file = std::io::Cursor::new(with(65536 + 64, b"_BHRfS_M"));
        file.seek(SeekFrom::Start(100)).unwrap();
        assert_eq!(probe(&mut file).unwrap(), Some("a btrfs filesystem"));
        let mut short = std::io::Cursor::new(vec![0u8; 600]);
        assert_eq!(probe(&mut short).unwrap(), None);
    }
}
