// SPDX-License-Identifier: GPL-2.0

//! Device-mapper target types: the [`Target`] trait and its [`Registration`].
//!
//! C header: [`include/linux/device-mapper.h`](srctree/include/linux/device-mapper.h)

use super::bindings;
use super::bio::{Bio, BioData, MirrorDone, MirrorEvent, Status};
use super::device::Device;
use super::handle::Handles;
pub use super::handle::TargetHandle;
use crate::engine::writer::SliceWriter;
use core::ffi::CStr;
use core::marker::PhantomData;
use core::ptr::NonNull;
use kernel::error::to_result;
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;
use kernel::ThisModule;

/// The most words a table line or a message may have; more are refused without allocating.
pub const MAX_ARGS: usize = 32;

/// What `map` did with a bio (`DM_MAPIO_*`).
///
/// A bio given back to the core travels in the variant; a bio the target kept is not here, so
/// the type system keeps the two apart.
pub enum MapResult {
    /// The bio was remapped; the core submits it (`DM_MAPIO_REMAPPED`).
    Remapped(Bio),
    /// The target kept the bio and will end or submit it (`DM_MAPIO_SUBMITTED`).
    Submitted,
    /// The bio fails with an I/O error (`DM_MAPIO_KILL`).
    Kill(Bio),
}

impl MapResult {
    fn into_raw(self) -> c_int {
        let raw = match self {
            Self::Remapped(bio) => {
                bio.into_raw();
                bindings::DM_MAPIO_REMAPPED
            }
            Self::Submitted => bindings::DM_MAPIO_SUBMITTED,
            Self::Kill(bio) => {
                bio.into_raw();
                bindings::DM_MAPIO_KILL
            }
        };
        // The `DM_MAPIO_*` values are small constants.
        raw as c_int
    }
}

/// Which status text the core asks for (`status_type_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusType {
    /// `dmsetup status`: the target's counters.
    Info,
    /// `dmsetup table`: the constructor arguments.
    Table,
    /// The device-mapper IMA measurement record.
    Ima,
}

/// A constructor's failure: the errno and the static message for `ti->error`.
#[derive(Debug, Clone, Copy)]
pub struct CtrError {
    /// The errno the table load fails with.
    pub code: Error,
    /// Printed by the device-mapper core as the reason.
    pub message: &'static CStr,
}

/// The target being constructed, as the constructor sees it.
///
/// # Invariants
///
/// `ti` points to the `dm_target` of a running constructor callback; `handles` are its live
/// handles.
pub struct TargetContext<'a> {
    ti: NonNull<bindings::dm_target>,
    handles: Arc<Handles>,
    _ctr_call: PhantomData<&'a mut bindings::dm_target>,
}

impl TargetContext<'_> {
    /// Whether the table is loaded read-only (`dmsetup load --readonly`): its devices are then
    /// opened for reading only.
    pub fn is_read_only(&self) -> bool {
        // SAFETY: `ti` is valid during the constructor (type invariant) and its table is set.
        unsafe { bindings::migrate_table_read_only(self.ti.as_ptr()) }
    }

    /// An identity of the table being built, equal for all its targets and distinct between
    /// tables that exist at the same time (its address).
    pub fn table_id(&self) -> usize {
        // SAFETY: As in `is_read_only`.
        unsafe { bindings::migrate_table_id(self.ti.as_ptr()) }
    }

    /// The target's first sector in the mapped device.
    pub fn begin(&self) -> u64 {
        // SAFETY: `ti` is valid during the constructor (type invariant).
        unsafe { (*self.ti.as_ptr()).begin }
    }

    /// The target's length in sectors.
    pub fn len(&self) -> u64 {
        // SAFETY: As in `begin`.
        unsafe { (*self.ti.as_ptr()).len }
    }

    /// Opens the block device named by `path` (a path or `major:minor`) with the table's mode.
    pub fn get_device(&mut self, path: &str) -> Result<Device> {
        let mut name = [0u8; 256];
        if path.len() >= name.len() || path.bytes().any(|b| b == 0) {
            return Err(EINVAL);
        }
        name[..path.len()].copy_from_slice(path.as_bytes());
        let ti = self.ti.as_ptr();
        let mut dev: *mut bindings::dm_dev = core::ptr::null_mut();
        // SAFETY: `ti` is valid during the constructor (type invariant), its `table` is set by the
        // core before calling the constructor, `name` is NUL-terminated and outlives the call.
        to_result(unsafe {
            let mode = bindings::dm_table_get_mode((*ti).table);
            bindings::dm_get_device(ti, name.as_ptr().cast(), mode, &mut dev)
        })?;
        let dev = NonNull::new(dev).ok_or(ENODEV)?;
        // SAFETY: `dev` comes from a successful `dm_get_device(ti, ..)` and is handed over;
        // `handles` are the live handles of `ti`.
        Ok(unsafe { Device::from_raw(self.ti, dev, self.handles.clone()) })
    }

    /// A handle for raising events later. Keep it inside the target object: the destructor
    /// waits for every handle to be dropped.
    pub fn handle(&self) -> TargetHandle {
        TargetHandle::new(self.ti, self.handles.clone())
    }

    /// Sets how many copies of each flush, discard and write-zeroes bio the target receives.
    pub fn set_num_bios(&mut self, flush: u32, discard: u32, write_zeroes: u32) {
        // SAFETY: `ti` is valid during the constructor (type invariant), which is where the core
        // expects these fields to be set.
        unsafe {
            let ti = self.ti.as_ptr();
            (*ti).num_flush_bios = flush;
            (*ti).num_discard_bios = discard;
            (*ti).num_write_zeroes_bios = write_zeroes;
        }
    }
}

/// Calls a device-mapper `iterate_devices` callout for each device of a target.
///
/// # Invariants
///
/// `ti`, `callout` and `data` are the arguments of a running `iterate_devices` callback.
pub struct DeviceVisitor<'a> {
    ti: *mut bindings::dm_target,
    callout: unsafe extern "C" fn(
        *mut bindings::dm_target,
        *mut bindings::dm_dev,
        bindings::sector_t,
        bindings::sector_t,
        *mut c_void,
    ) -> c_int,
    data: *mut c_void,
    _call: PhantomData<&'a ()>,
}

impl DeviceVisitor<'_> {
    /// Reports that the target maps `len` sectors onto `device` from `start`; a non-zero result
    /// from the core ends the iteration and is returned by it.
    pub fn visit(&mut self, device: &Device, start: u64, len: u64) -> i32 {
        // SAFETY: The arguments are those of the running `iterate_devices` call (type invariant),
        // and `device` is a device of this target, held open.
        unsafe { (self.callout)(self.ti, device.as_raw(), start, len, self.data) }
    }
}

/// A device-mapper target type.
///
/// The device-mapper core calls these methods through the trampolines of [`Registration`]; the
/// object is created by [`Target::new`] for each table line and dropped by the destructor.
#[vtable]
pub trait Target: Sized + Send + Sync {
    /// Data shared by every target of this type, owned by the [`Registration`] (a registry of
    /// live migrations, for example).
    type Data: Send + Sync + 'static;

    /// Builds a target from the words of its table line after the target name.
    fn new(
        ti: &mut TargetContext<'_>,
        args: &[&str],
        data: &Self::Data,
    ) -> Result<Pin<KBox<Self>>, CtrError>;

    /// What learns how the target's mirrored bios went ([`Bio::mirror`]).
    type Mirror: MirrorDone;

    /// The target's [`Target::Mirror`]. Called in completion context.
    fn mirror_done(&self) -> &Self::Mirror;

    /// Maps a bio; called in any context, possibly concurrently, and must not sleep or allocate.
    fn map(&self, bio: Bio) -> MapResult;

    /// Called when any bio of the target ends, whether `map` remapped it or the target ended
    /// it itself, in the completion's context (possibly interrupt context), with its status.
    fn end_io(&self, _bio: &Bio, _status: Status) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called before the device suspends, while I/O may still arrive.
    fn presuspend(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called when a suspend fails after `presuspend`: undoes what `presuspend` did.
    fn presuspend_undo(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called once the device is suspended and all its I/O has completed.
    fn postsuspend(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called before the device resumes, with the table it replaces suspended; an error fails
    /// the resume and leaves the device suspended.
    fn preresume(&self) -> Result {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Called when the device resumes.
    fn resume(&self) {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }

    /// Writes the status text of the given kind.
    fn status(&self, kind: StatusType, out: &mut SliceWriter<'_>);

    /// Reports the target's devices to the core, which derives the queue limits from them.
    fn iterate_devices(&self, visitor: &mut DeviceVisitor<'_>) -> i32;

    /// Handles a `dmsetup message`; `out` is the text returned to userspace.
    fn message(&self, _args: &[&str], _out: &mut SliceWriter<'_>) -> Result {
        kernel::build_error!(kernel::error::VTABLE_DEFAULT_ERROR)
    }
}

/// Splits a C argument vector into `&str` words in `words`, returning the filled part.
///
/// # Safety
///
/// `argv` must point to `argc` valid NUL-terminated strings that outlive `'a`.
unsafe fn collect_args<'a>(
    argc: c_uint,
    argv: *mut *mut c_char,
    words: &'a mut [&'a str; MAX_ARGS],
) -> Result<&'a [&'a str]> {
    let argc = usize::try_from(argc).map_err(|_| E2BIG)?;
    if argc > MAX_ARGS {
        return Err(E2BIG);
    }
    for (i, word) in words.iter_mut().enumerate().take(argc) {
        // SAFETY: `i < argc`, and the caller guarantees `argv[i]` is a valid string for `'a`.
        let arg = unsafe { CStr::from_ptr((*argv.add(i)).cast()) };
        *word = arg.to_str().map_err(|_| EINVAL)?;
    }
    Ok(&words[..argc])
}

/// What `ti->private` holds: the target object, and the count of its target's handles.
struct Owned<T> {
    target: Pin<KBox<T>>,
    handles: Arc<Handles>,
}

/// Returns the target object of `ti`.
///
/// # Safety
///
/// `ti` must be a target of type `T` whose constructor succeeded and whose destructor has not run.
unsafe fn target_of<'a, T: Target>(ti: *mut bindings::dm_target) -> &'a T {
    // SAFETY: The constructor stored a `KBox<Owned<T>>` in `private` that lives until the
    // destructor; a shared reference does not move the pinned target.
    unsafe { &(*(*ti).private.cast::<Owned<T>>()).target }
}

/// The trampolines the device-mapper core calls, one set per target type `T`.
struct Callbacks<T: Target>(PhantomData<T>);

impl<T: Target> Callbacks<T> {
    /// Called by the device-mapper core to construct a target from a table line.
    ///
    /// # Safety
    ///
    /// Called by the core with a valid `ti` and `argc` strings in `argv`.
    unsafe extern "C" fn ctr(
        ti: *mut bindings::dm_target,
        argc: c_uint,
        argv: *mut *mut c_char,
    ) -> c_int {
        let Some(ti_ptr) = NonNull::new(ti) else {
            return EINVAL.to_errno();
        };
        let Ok(handles) = Handles::new() else {
            return ENOMEM.to_errno();
        };
        let context_handles = handles.clone();
        let mut words = [""; MAX_ARGS];
        // SAFETY: The core passes `argc` valid strings that live until the constructor returns.
        let result = match unsafe { collect_args(argc, argv, &mut words) } {
            Ok(args) => {
                // INVARIANT: `ti` is the target of this running constructor call, and the
                // handles are new, for it.
                let mut context = TargetContext {
                    ti: ti_ptr,
                    handles: handles.clone(),
                    _ctr_call: PhantomData,
                };
                // SAFETY: The core calls this constructor only for targets of the type that a
                // `Registration<T>` registered, so `ti->type` is the `target_type` at the start of
                // its `TypeBox<T>` (`repr(C)`), which stays alive until the registration is
                // dropped, after the last target of the type.
                let data = unsafe { &(*(*ti).type_.cast::<TypeBox<T>>()).data };
                T::new(&mut context, args, data)
            }
            Err(_) => Err(CtrError {
                code: EINVAL,
                message: c"Invalid arguments (too many, or not UTF-8)",
            }),
        };
        let owned = result.and_then(|target| {
            KBox::new(Owned { target, handles }, GFP_KERNEL).map_err(|_| CtrError {
                code: ENOMEM,
                message: c"Cannot allocate memory",
            })
        });
        match owned {
            Ok(owned) => {
                // SAFETY: `ti` is valid; `private` belongs to the target and is read back by the
                // other callbacks and freed by `dtr`. Every bio carries a `BioData`.
                unsafe {
                    (*ti).private = KBox::into_raw(owned).cast();
                    (*ti).per_io_data_size = core::mem::size_of::<BioData>() as c_uint;
                }
                0
            }
            Err(e) => {
                // A failed constructor dropped what it made; a handle it left elsewhere would
                // outlive `ti`.
                context_handles.wait_none_left();
                // SAFETY: `ti` is valid; the core only reads `error`, and the message is static.
                unsafe { (*ti).error = e.message.as_ptr().cast_mut().cast() };
                e.code.to_errno()
            }
        }
    }

    /// Called by the device-mapper core to destroy a target built by `ctr`.
    ///
    /// # Safety
    ///
    /// Called once per successful `ctr`, after all I/O to the target has completed.
    unsafe extern "C" fn dtr(ti: *mut bindings::dm_target) {
        // SAFETY: `private` holds the `KBox<Owned<T>>` made by `ctr`; this is its only release.
        let owned = unsafe { KBox::from_raw((*ti).private.cast::<Owned<T>>()) };
        let Owned { target, handles } = KBox::into_inner(owned);
        drop(target);
        // The core frees `ti` once this returns: no device or handle of it may be left.
        handles.wait_none_left();
    }

    /// Called by the device-mapper core to map a bio.
    ///
    /// # Safety
    ///
    /// Called with a constructed target and a bio that is the target's until the call returns.
    unsafe extern "C" fn map(ti: *mut bindings::dm_target, bio: *mut bindings::bio) -> c_int {
        let (Some(bio), Some(target)) = (NonNull::new(bio), NonNull::new(ti)) else {
            return bindings::DM_MAPIO_KILL as c_int;
        };
        // SAFETY: The target is constructed; the bio is handed to the target by this call, and
        // its per-bio data, sized for a `BioData` in `ctr`, is initialised by `from_map`, with
        // this target and the notifier of its type, which the core keeps until the bio ends.
        let (target, bio) = unsafe {
            (
                target_of::<T>(ti),
                Bio::from_map(bio, target, Self::notify_mirror),
            )
        };
        target.map(bio).into_raw()
    }

    /// Tells the target how a half or the whole of a mirrored bio went ([`Bio::mirror`]).
    ///
    /// # Safety
    ///
    /// `ti` is a constructed target of type `T` whose destructor has not run.
    unsafe fn notify_mirror(ti: *mut bindings::dm_target, event: MirrorEvent) {
        // SAFETY: Forwarded from the caller.
        let mirror = unsafe { target_of::<T>(ti) }.mirror_done();
        match event {
            MirrorEvent::Dest { kind, dest, tag } => mirror.dest_done(kind, dest, tag),
            MirrorEvent::Both { kind, origin, dest } => mirror.mirror_done(kind, origin, dest),
        }
    }

    /// Called by the device-mapper core when a bio of the target ends (`clone_endio`).
    ///
    /// # Safety
    ///
    /// Called with a constructed target, a bio it remapped and a valid status pointer.
    unsafe extern "C" fn end_io(
        ti: *mut bindings::dm_target,
        bio: *mut bindings::bio,
        error: *mut bindings::blk_status_t,
    ) -> c_int {
        let (Some(bio), false) = (NonNull::new(bio), error.is_null()) else {
            return bindings::DM_ENDIO_DONE as c_int;
        };
        // SAFETY: The bio belongs to the core, so it is wrapped only for the call and never
        // dropped (`ManuallyDrop`); the status pointer is valid for the call.
        unsafe {
            let bio = core::mem::ManuallyDrop::new(Bio::from_raw(bio));
            target_of::<T>(ti).end_io(&bio, Status(*error));
        }
        bindings::DM_ENDIO_DONE as c_int
    }

    /// Called by the device-mapper core before suspending.
    ///
    /// # Safety
    ///
    /// Called with a constructed target, in process context.
    unsafe extern "C" fn presuspend(ti: *mut bindings::dm_target) {
        // SAFETY: The target is constructed.
        unsafe { target_of::<T>(ti) }.presuspend();
    }

    /// Called by the device-mapper core when a suspend fails after `presuspend`.
    ///
    /// # Safety
    ///
    /// Called with a constructed target, in process context.
    unsafe extern "C" fn presuspend_undo(ti: *mut bindings::dm_target) {
        // SAFETY: The target is constructed.
        unsafe { target_of::<T>(ti) }.presuspend_undo();
    }

    /// Called by the device-mapper core once suspended.
    ///
    /// # Safety
    ///
    /// Called with a constructed target, in process context.
    unsafe extern "C" fn postsuspend(ti: *mut bindings::dm_target) {
        // SAFETY: The target is constructed.
        unsafe { target_of::<T>(ti) }.postsuspend();
    }

    /// Called by the device-mapper core before resuming.
    ///
    /// # Safety
    ///
    /// Called with a constructed target, in process context.
    unsafe extern "C" fn preresume(ti: *mut bindings::dm_target) -> c_int {
        // SAFETY: The target is constructed.
        match unsafe { target_of::<T>(ti) }.preresume() {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// Called by the device-mapper core on resume.
    ///
    /// # Safety
    ///
    /// Called with a constructed target, in process context.
    unsafe extern "C" fn resume(ti: *mut bindings::dm_target) {
        // SAFETY: The target is constructed.
        unsafe { target_of::<T>(ti) }.resume();
    }

    /// Called by the device-mapper core for `dmsetup status` and `dmsetup table`.
    ///
    /// # Safety
    ///
    /// Called with a constructed target and a buffer of `maxlen` writable bytes.
    unsafe extern "C" fn status(
        ti: *mut bindings::dm_target,
        kind: bindings::status_type_t,
        _flags: c_uint,
        result: *mut c_char,
        maxlen: c_uint,
    ) {
        let kind = match kind {
            bindings::status_type_t_STATUSTYPE_INFO => StatusType::Info,
            bindings::status_type_t_STATUSTYPE_TABLE => StatusType::Table,
            _ => StatusType::Ima,
        };
        if result.is_null() {
            return;
        }
        // SAFETY: The core hands a buffer of `maxlen` bytes that nothing else uses during the
        // call; `c_uint` always fits in `usize` on the architectures Rust-for-Linux supports.
        let buf = unsafe { core::slice::from_raw_parts_mut(result.cast::<u8>(), maxlen as usize) };
        let mut out = SliceWriter::new(buf);
        // SAFETY: The target is constructed.
        unsafe { target_of::<T>(ti) }.status(kind, &mut out);
    }

    /// Called by the device-mapper core for `dmsetup message`.
    ///
    /// # Safety
    ///
    /// Called with a constructed target, `argc` strings in `argv` and a buffer of `maxlen` bytes.
    unsafe extern "C" fn message(
        ti: *mut bindings::dm_target,
        argc: c_uint,
        argv: *mut *mut c_char,
        result: *mut c_char,
        maxlen: c_uint,
    ) -> c_int {
        let mut words = [""; MAX_ARGS];
        // SAFETY: The core passes `argc` valid strings that live until the call returns.
        let args = match unsafe { collect_args(argc, argv, &mut words) } {
            Ok(args) => args,
            Err(e) => return e.to_errno(),
        };
        let mut empty = [0u8; 1];
        let buf = if result.is_null() {
            &mut empty[..]
        } else {
            // SAFETY: As in `status`.
            unsafe { core::slice::from_raw_parts_mut(result.cast::<u8>(), maxlen as usize) }
        };
        let mut out = SliceWriter::new(buf);
        // SAFETY: The target is constructed.
        match unsafe { target_of::<T>(ti) }.message(args, &mut out) {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// Called by the device-mapper core to learn the target's devices.
    ///
    /// # Safety
    ///
    /// Called with a constructed target and a valid callout and its data.
    unsafe extern "C" fn iterate_devices(
        ti: *mut bindings::dm_target,
        callout: bindings::iterate_devices_callout_fn,
        data: *mut c_void,
    ) -> c_int {
        let Some(callout) = callout else {
            return 0;
        };
        // INVARIANT: These are the arguments of this running call.
        let mut visitor = DeviceVisitor {
            ti,
            callout,
            data,
            _call: PhantomData,
        };
        // SAFETY: The target is constructed.
        unsafe { target_of::<T>(ti) }.iterate_devices(&mut visitor)
    }
}

/// The registered `target_type` and the data shared by the targets of the type. `repr(C)` with
/// the `target_type` first, so that a target's `ti->type` leads back to the data.
#[repr(C)]
struct TypeBox<T: Target> {
    target_type: Opaque<bindings::target_type>,
    data: T::Data,
}

/// A target type registered with the device-mapper core; unregistered on drop.
///
/// # Invariants
///
/// `type_box.target_type` is registered with `dm_register_target` and stays at its heap address
/// until `drop` unregisters it.
pub struct Registration<T: Target> {
    type_box: KBox<TypeBox<T>>,
}

// SAFETY: After registration the structure is only used by the device-mapper core, which does its
// own locking; the Rust side only unregisters it, in `drop`.
unsafe impl<T: Target> Send for Registration<T> {}

// SAFETY: `Registration` has no `&self` methods that touch the structure.
unsafe impl<T: Target> Sync for Registration<T> {}

impl<T: Target> Registration<T> {
    /// Registers target type `T` under `name` (the word in table lines), with the data its
    /// targets share.
    pub fn new(
        name: &'static CStr,
        version: [u32; 3],
        module: &'static ThisModule,
        data: T::Data,
    ) -> Result<Self> {
        let target_type = bindings::target_type {
            name: name.as_ptr().cast(),
            module: module.as_ptr(),
            version,
            ctr: Some(Callbacks::<T>::ctr),
            dtr: Some(Callbacks::<T>::dtr),
            map: Some(Callbacks::<T>::map),
            status: Some(Callbacks::<T>::status),
            message: T::HAS_MESSAGE.then_some(Callbacks::<T>::message as _),
            iterate_devices: Some(Callbacks::<T>::iterate_devices),
            end_io: T::HAS_END_IO.then_some(Callbacks::<T>::end_io as _),
            presuspend: T::HAS_PRESUSPEND.then_some(Callbacks::<T>::presuspend as _),
            presuspend_undo: T::HAS_PRESUSPEND_UNDO.then_some(Callbacks::<T>::presuspend_undo as _),
            postsuspend: T::HAS_POSTSUSPEND.then_some(Callbacks::<T>::postsuspend as _),
            preresume: T::HAS_PRERESUME.then_some(Callbacks::<T>::preresume as _),
            resume: T::HAS_RESUME.then_some(Callbacks::<T>::resume as _),
            ..Default::default()
        };
        let type_box = KBox::new(
            TypeBox {
                target_type: Opaque::new(target_type),
                data,
            },
            GFP_KERNEL,
        )?;
        // SAFETY: The structure is fully initialised, lives on the heap and is neither moved nor
        // freed until `drop` unregisters it.
        to_result(unsafe { bindings::dm_register_target(type_box.target_type.get()) })?;
        // INVARIANT: Registered just above.
        Ok(Self { type_box })
    }
}

impl<T: Target> Drop for Registration<T> {
    fn drop(&mut self) {
        // SAFETY: Registered by `new` (type invariant). Module unload, which drops this, is only
        // possible once no target of this type exists.
        unsafe { bindings::dm_unregister_target(self.type_box.target_type.get()) };
    }
}
