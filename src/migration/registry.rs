// SPDX-License-Identifier: GPL-2.0

//! The registry of migrations, and the hand-over of a table reload (`Membership::go_live`).

use super::*;

/// What identifies a migration across a reload: the same mapped device, origin and
/// destination at the same place, with the same regions.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct MigrationKey {
    pub(crate) device: usize,
    pub(crate) begin: u64,
    pub(crate) origin: u32,
    pub(crate) destination: u32,
    pub(crate) target_sectors: u64,
    pub(crate) region_sectors: u64,
    /// The metadata device, 0 for none.
    pub(crate) metadata: u32,
}

/// A migration, how many targets use it, and when a target last took it live.
pub(crate) struct Entry {
    key: MigrationKey,
    migration: Arc<Migration>,
    users: usize,
    /// The registry's generation when a target of this migration last went live, or 0 if none
    /// has yet: of the migrations at one place, the one with the highest is the live one.
    resumed: u64,
    /// Set when this migration's table was refused over a switched migration (see
    /// `Membership::go_live`): it stands for that one, whose table is gone by then, so that
    /// the next table still sees the switch.
    stands_for: Option<MigrationKey>,
}

/// The migrations of every `migrate` target that exists, live or not, and the tables that hold
/// one. Slots are reused; a `KVec` of this kernel cannot remove elements.
#[derive(Default)]
pub(crate) struct Registry {
    migrations: KVec<Option<Entry>>,
    tables: KVec<Option<usize>>,
    /// Counts first resumes, for `Entry::resumed`.
    generation: u64,
}

impl Registry {
    /// Forgets that `table` holds a `migrate` target.
    pub(super) fn forget_table(&mut self, table: usize) {
        if let Some(slot) = self.tables.iter_mut().find(|slot| **slot == Some(table)) {
            *slot = None;
        }
    }
}

/// Fills a free slot of `slots` with `value`, or adds one.
pub(super) fn put<T>(slots: &mut KVec<Option<T>>, value: T) -> Result<(), TableError> {
    match slots.iter_mut().find(|slot| slot.is_none()) {
        Some(slot) => *slot = Some(value),
        None => slots
            .push(Some(value), GFP_KERNEL)
            .map_err(|_| TableError::OutOfMemory)?,
    }
    Ok(())
}

/// A target's use of a migration in the [`Registry`], given up on drop.
pub(crate) struct Membership {
    registry: Arc<Mutex<Registry>>,
    key: MigrationKey,
    table: usize,
    migration: Arc<Migration>,
    is_new: bool,
}

impl Membership {
    /// Joins the migration of an identical table, or starts a new one, for a target of table
    /// `table`. A table may hold one `migrate` target: each would want the same sysfs folder,
    /// and one migration per device is what a live move needs.
    pub(crate) fn join(
        registry: &Arc<Mutex<Registry>>,
        key: MigrationKey,
        table: usize,
        geometry: &Geometry,
        no_switch: bool,
    ) -> Result<Self, TableError> {
        let mut guard = registry.lock();
        let registry_ref = &mut *guard;
        if registry_ref.tables.iter().flatten().any(|&t| t == table) {
            return Err(TableError::SecondTarget);
        }
        put(&mut registry_ref.tables, table)?;
        let migration = match Self::find_or_add(registry_ref, key, geometry, no_switch) {
            Ok(found) => found,
            Err(e) => {
                registry_ref.forget_table(table);
                return Err(e);
            }
        };
        let (migration, is_new) = migration;
        Ok(Self {
            registry: registry.clone(),
            key,
            table,
            migration,
            is_new,
        })
    }

    /// Whether this target started the migration (rather than joining one of an identical
    /// table): only then is its state loaded from the metadata device.
    pub(crate) fn is_new(&self) -> bool {
        self.is_new
    }

    /// The migration of `key`, with one more user, or a new one.
    pub(super) fn find_or_add(
        registry: &mut Registry,
        key: MigrationKey,
        geometry: &Geometry,
        no_switch: bool,
    ) -> Result<(Arc<Migration>, bool), TableError> {
        if let Some(entry) = registry
            .migrations
            .iter_mut()
            .flatten()
            .find(|entry| entry.key == key)
        {
            entry.users += 1;
            return Ok((entry.migration.clone(), false));
        }
        let migration = Migration::new(geometry, no_switch, key.metadata != 0)?;
        let entry = Entry {
            key,
            migration: migration.clone(),
            users: 1,
            resumed: 0,
            stands_for: None,
        };
        put(&mut registry.migrations, entry)?;
        Ok((migration, true))
    }

    /// Whether the device's live table (the last to go live at this place) is a migration of
    /// the same devices, length and metadata device as this one, in another region size: this
    /// table then takes over that migration at its hand-over, metadata included.
    pub(crate) fn replaces_live_pair(&self) -> bool {
        let registry = self.registry.lock();
        let place = (self.key.device, self.key.begin);
        registry
            .migrations
            .iter()
            .flatten()
            .filter(|e| (e.key.device, e.key.begin) == place && e.resumed > 0)
            .max_by_key(|e| e.resumed)
            .is_some_and(|e| {
                let key = e.key;
                e.stands_for.is_none()
                    && key.origin == self.key.origin
                    && key.destination == self.key.destination
                    && key.target_sectors == self.key.target_sectors
                    && key.metadata == self.key.metadata
                    && key.region_sectors != self.key.region_sectors
            })
    }

    /// The migration.
    pub(crate) fn migration(&self) -> &Arc<Migration> {
        &self.migration
    }

    /// Called when a target goes live (its preresume, or a message that reaches it first),
    /// once: makes a reload never roll back. The table it replaces is suspended by now.
    ///
    /// The migration this place (mapped device and first sector) last went live with is the
    /// predecessor. If that is this very migration, the table is an identical reload: it goes
    /// on where it was, and a failed or cancelled migration starts over (the way to retry).
    /// Otherwise, with the same devices and length, a switched predecessor makes this one
    /// switched, and anything else starts the copy over from the origin. A switched
    /// predecessor on other devices or another length is refused unless this table copies
    /// away from its destination: neither of this table's devices has all the data. The new
    /// table's `no_switch` applies in every case.
    pub(crate) fn go_live(&self, no_switch: bool) -> Result<Option<Handover>, HandoverError> {
        let mut registry = self.registry.lock();
        registry.generation += 1;
        let generation = registry.generation;
        let place = (self.key.device, self.key.begin);
        let last = registry
            .migrations
            .iter()
            .flatten()
            .filter(|e| (e.key.device, e.key.begin) == place && e.resumed > 0)
            .max_by_key(|e| e.resumed)
            .map(|e| match e.stands_for {
                Some(key) => (false, key, State::Switched),
                None => {
                    let identical = Arc::ptr_eq(&e.migration, &self.migration);
                    (identical, e.key, e.migration.state())
                }
            });
        let refused = match last {
            Some((false, key, State::Switched)) => {
                let same = key.origin == self.key.origin
                    && key.destination == self.key.destination
                    && key.target_sectors == self.key.target_sectors;
                // Moving on from where the last migration put the data is a new move.
                (!same && self.key.origin != key.destination).then_some(key)
            }
            _ => None,
        };
        if let Some(entry) = registry
            .migrations
            .iter_mut()
            .flatten()
            .find(|e| Arc::ptr_eq(&e.migration, &self.migration))
        {
            entry.resumed = generation;
            entry.stands_for = refused;
        }
        drop(registry);
        if refused.is_some() {
            return Err(HandoverError::SwitchedElsewhere);
        }
        let migration = &self.migration;
        let mut shared = migration.shared.lock();
        shared.tracker.set_no_switch(no_switch);
        let Some((identical, last_key, last_state)) = last else {
            return Ok(None);
        };
        if identical {
            // The hand-over of a table of this migration that was refused because its record
            // could not be written: the change is made, the record is still to write.
            if let Some(handover) = shared.unrecorded {
                return Ok(Some(handover));
            }
            // A mirrored write's failure not yet carried out counts as the failure it is.
            if let Some(reason) = migration.dest_failure() {
                shared.tracker.fail(reason);
            }
            if !shared.tracker.restart() {
                return Ok(Some(Handover::Continued));
            }
            if let Some(intent) = shared.intent.as_mut() {
                intent.reset();
            }
            migration.health.clear();
            migration.final_route.store(0, Ordering::Release);
            shared.set_unrecorded(Handover::StartedOver);
            return Ok(Some(Handover::StartedOver));
        }
        let continues = last_key.origin == self.key.origin
            && last_key.destination == self.key.destination
            && last_key.target_sectors == self.key.target_sectors;
        let last_state = if continues {
            last_state
        } else {
            // A new move away from where the last one put the data: from scratch.
            State::Copying
        };
        // This migration may have been live before another took its place: whatever its
        // bitmap says is stale, so it is set anew.
        let handover = shared.tracker.after_reload(last_state);
        if let Some(intent) = shared.intent.as_mut() {
            intent.reset();
        }
        migration.health.clear();
        migration.final_route.store(
            if handover == Handover::Switched {
                FINAL_DEST
            } else {
                0
            },
            Ordering::Release,
        );
        shared.set_unrecorded(handover);
        Ok(Some(handover))
    }
}

/// Why a table cannot take over from the one it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandoverError {
    /// The device's last migration switched, to devices or a length this table does not
    /// continue.
    SwitchedElsewhere,
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut registry = self.registry.lock();
        registry.forget_table(self.table);
        for slot in registry.migrations.iter_mut() {
            let Some(entry) = slot else { continue };
            if entry.key == self.key && Arc::ptr_eq(&entry.migration, &self.migration) {
                entry.users -= 1;
                if entry.users == 0 {
                    *slot = None;
                }
                return;
            }
        }
    }
}
