// SPDX-License-Identifier: GPL-2.0

//! dm-migrate: a device-mapper target that moves a live disk from one block device to another.
//!
//! This is the foundation: the target validates its table line, opens both devices and passes all
//! I/O through to the origin. The destination is opened and checked but never written.
//! See `Documentation/dm-migrate.rst` for the interface.

// Both are `pub` so that the kernel's `unreachable_pub` lint accepts the `pub` items they share
// with their userspace build and with later users in this crate.
#[path = "../rust/mod.rs"]
pub mod dm;
pub mod engine;

use dm::bio::Bio;
use dm::device::Device;
use dm::target::{
    CtrError, DeviceVisitor, MapResult, Registration, StatusType, Target, TargetContext,
};
use engine::status::{write_table, Progress, SliceWriter};
use engine::table::{DeviceGeometry, Geometry, Options, TableArgs, TableError};
use kernel::prelude::*;

module! {
    type: MigrateModule,
    name: "dm_migrate",
    author: "The dm-migrate developers",
    description: "device-mapper target for live migration of a block device",
    license: "GPL",
}

/// The target's version, reported by `dmsetup targets`.
const VERSION: [u32; 3] = [0, 1, 0];

struct MigrateModule {
    _registration: Registration<Migrate>,
}

impl kernel::Module for MigrateModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        Ok(Self {
            _registration: Registration::new(c"migrate", VERSION, module)?,
        })
    }
}

/// One `migrate` target: a range of a mapped device backed by an origin and a destination.
struct Migrate {
    origin: Device,
    destination: Device,
    /// The target's first sector in the mapped device, subtracted to get the origin sector.
    begin: u64,
    geometry: Geometry,
    options: Options,
}

impl From<TableError> for CtrError {
    fn from(e: TableError) -> Self {
        CtrError {
            code: if e.is_out_of_memory() { ENOMEM } else { EINVAL },
            message: e.message(),
        }
    }
}

fn geometry_of(device: &Device) -> DeviceGeometry {
    DeviceGeometry {
        sectors: device.sectors(),
        logical_block_size: device.logical_block_size(),
    }
}

/// Construct a migrate target:
///
/// ```text
/// <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
///
/// opt_arg: region_size <sectors>
/// ```
///
/// The words are parsed by the engine (`engine::table`), which owns the grammar and every error
/// message; this only opens the devices and hands their geometry in. A device opened before a
/// later check fails is released by its `Drop`.
#[vtable]
impl Target for Migrate {
    fn new(ti: &mut TargetContext<'_>, args: &[&str]) -> Result<KBox<Self>, CtrError> {
        let table = TableArgs::parse(args)?;
        let origin = ti
            .get_device(table.origin)
            .map_err(|_| TableError::OriginOpen)?;
        let destination = ti
            .get_device(table.destination)
            .map_err(|_| TableError::DestinationOpen)?;
        let geometry = Geometry::validate(
            &table.options,
            ti.len(),
            geometry_of(&origin),
            geometry_of(&destination),
            origin.devt() == destination.devt(),
        )?;

        // Flushes, discards and write-zeroes pass through to the origin like any other bio.
        ti.set_num_bios(1, 1, 1);
        let target = Migrate {
            origin,
            destination,
            begin: ti.begin(),
            geometry,
            options: table.options,
        };
        KBox::new(target, GFP_KERNEL).map_err(|_| TableError::OutOfMemory.into())
    }

    fn map(&self, bio: &mut Bio<'_>) -> MapResult {
        if bio.sectors() == 0 {
            // An empty flush has no sector to translate.
            bio.set_device(&self.origin);
            return MapResult::Remapped;
        }
        // The core only sends bios inside the target; a bio outside would be a core bug, and
        // failing it beats writing somewhere else.
        match bio.sector().checked_sub(self.begin) {
            Some(sector) if sector < self.geometry.target_sectors => {
                bio.remap(&self.origin, sector);
                MapResult::Remapped
            }
            _ => MapResult::Kill,
        }
    }

    /// Status, in `Documentation/dm-migrate.rst`:
    ///
    /// ```text
    /// INFO:  <state> <copied>/<total regions> <pending> <inflight> <copied_bytes> <rate_kibps> <errors>
    /// TABLE: <origin_dev> <dest_dev> [<#opt_args> <opt_arg>...]
    /// ```
    fn status(&self, kind: StatusType, out: &mut SliceWriter<'_>) {
        // A status that does not fit is cut short, as `DMEMIT` does; there is nothing to report.
        let _ = match kind {
            StatusType::Info => Progress::idle(self.geometry.nr_regions).write_info(out),
            StatusType::Table => write_table(
                out,
                self.origin.name(),
                self.destination.name(),
                &self.options,
            ),
            StatusType::Ima => core::fmt::Write::write_fmt(
                out,
                format_args!(
                    "target_name=migrate,target_version={}.{}.{},origin={},destination={};",
                    VERSION[0],
                    VERSION[1],
                    VERSION[2],
                    self.origin.name(),
                    self.destination.name()
                ),
            ),
        };
    }

    fn iterate_devices(&self, visitor: &mut DeviceVisitor<'_>) -> i32 {
        let len = self.geometry.target_sectors;
        match visitor.visit(&self.origin, 0, len) {
            0 => visitor.visit(&self.destination, 0, len),
            stop => stop,
        }
    }

    fn message(&self, args: &[&str], _out: &mut SliceWriter<'_>) -> Result {
        pr_err!(
            "device-mapper: migrate: Unsupported message \"{}\"\n",
            args.first().copied().unwrap_or("")
        );
        Err(EINVAL)
    }
}
