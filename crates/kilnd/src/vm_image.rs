//! Defining a VM from an image in one step: its root volume `<name>-root` is made from the
//! image (first disk, `/dev/vda`), it boots the image's kernel and initrd with the root on
//! `/dev/vda`, it gets the vsock device its agent answers on, and a NoCloud seed disk
//! (`<state>/vms/<name>/seed.img`, read-only, serial `cidata`) carries its first-boot
//! configuration ([`crate::seed`]).
//!
//! Order, so that a failure or a crash leaves nothing usable behind: the seed is checked, the
//! root volume is made and recorded as the root of the VM, then the VM is recorded, and before
//! that record is committed the seed is written (its network-config holds the leases the
//! record chose). A failure removes what was made; after a crash, kilnd's start removes a root
//! volume whose VM was never recorded ([`crate::volumes::recover`]), and a seed without its VM
//! is replaced by the next create of that name.

use crate::bootfiles::Reader;
use crate::images;
use crate::lifecycle::{LifecycleError, Manager};
use crate::validate::Invalid;
use crate::volumes::{self, VolumeError};
use kiln_api::{CreateVm, CreateVolume, DiskSpec, Vm};

static CREATING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The kernel command line of a VM from an image when the definition gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 root=/dev/vda rw";

/// The name of the root volume of VM `vm`.
pub fn root_volume(vm: &str) -> String {
    format!("{vm}-root")
}

impl From<VolumeError> for LifecycleError {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Invalid(invalid) => LifecycleError::Invalid(invalid),
            VolumeError::Db(db) => LifecycleError::Db(db),
            other => LifecycleError::Devices(crate::chain(&other)),
        }
    }
}

/// Defines VM `spec.name` from image `spec.image` (see the module's description).
pub(crate) fn create(
    mgr: &Manager,
    spec: &CreateVm,
    principal: Option<&str>,
) -> Result<Vm, LifecycleError> {
    let Some(image) = &spec.image else {
        return Err(Invalid { field: "image", message: "no image given".into() }.into());
    };
    crate::validate::create_vm(spec, mgr.settings.host_memory_mib)?;
    let state_dir = &mgr.settings.state_dir;
    let row = match mgr.db.image(image) {
        Err(crate::db::DbError::NoImage(_)) => {
            return Err(Invalid {
                field: "image",
                message: format!("no image named {image:?} (kiln image list shows them)"),
            }
            .into())
        }
        other => other?,
    };
    let root = root_volume(&spec.name);
    if root.len() > 63 {
        return Err(Invalid {
            field: "name",
            message: format!("too long for the name of its root volume {root:?} (at most 58)"),
        }
        .into());
    }
    let kernel = row.kernel.clone().unwrap_or_else(|| images::KERNEL.to_owned());
    let mut full = spec.clone();
    full.kernel = images::file(state_dir, image, &kernel).display().to_string();
    full.initrd =
        row.initrd.as_ref().map(|i| images::file(state_dir, image, i).display().to_string());
    full.cmdline = Some(spec.cmdline.clone().unwrap_or_else(|| DEFAULT_CMDLINE.to_owned()));
    full.vsock = true;
    full.disks = std::iter::once(DiskSpec { volume: root.clone(), read_only: false })
        .chain(spec.disks.iter().cloned())
        .collect();
    let instance = format!("{}-{:x}", spec.name, crate::db::now_ms());
    let seed = crate::seed::for_vm(spec, &instance)?;
    mgr.check_socket_paths(&full)?;
    mgr.check_fits_host(full.vcpus, full.memory_mib)?;
    mgr.image_boot_files(&full)?;
    // The networks of its NICs, read now: the seed is written while the VM's record, which
    // chooses the NICs' leases, holds the database.
    let networks: Vec<_> =
        spec.nics.iter().filter_map(|nic| mgr.db.network(&nic.network).ok()).collect();
    // One image create at a time: between the check below and the VM's record, a second create
    // of the same name must not write (or undo) the same seed.
    let _one_at_a_time = CREATING.lock().unwrap_or_else(|p| p.into_inner());
    let logs = mgr.logs(&spec.name);
    if mgr.db.vm(&spec.name).is_ok() {
        return Err(crate::db::DbError::VmExists(spec.name.clone()).into());
    }
    let seed_path = logs.seed_image();
    let volume_spec = CreateVolume {
        name: root.clone(),
        size_bytes: spec.disk_size_bytes.unwrap_or(0),
        project: spec.project.clone(),
        from_image: Some(image.clone()),
    };
    if let Err(e) = volumes::create_for(&mgr.db, state_dir, &volume_spec, Some(&spec.name)) {
        return Err(match e {
            VolumeError::Invalid(Invalid { field: "size_bytes", message }) => {
                Invalid { field: "disk_size_bytes", message }.into()
            }
            VolumeError::Db(crate::db::DbError::VolumeExists(name)) => Invalid {
                field: "name",
                message: format!(
                    "its root volume {name:?} exists already: delete it or pick another name"
                ),
            }
            .into(),
            other => other.into(),
        });
    }
    // Only what this create made: the seed, and the VM's directory if nothing else is in it
    // (a VM of that name defined meanwhile without an image keeps its own files).
    let written = std::cell::Cell::new(false);
    let undo_seed = || {
        if written.get() {
            let _ = std::fs::remove_file(&seed_path);
            if let Some(dir) = seed_path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
    };
    let write_seed = |vm: &Vm| -> Result<(), String> {
        let mut seed = seed;
        seed.network_config = crate::seed::network_config(&vm.nics, &networks)?;
        let _ = std::fs::remove_file(&seed_path);
        logs.ensure_dir().map_err(|e| e.to_string())?;
        written.set(true);
        kiln_agent::nocloud::write_image(&seed_path, &seed).map_err(|e| e.to_string())
    };
    let record = || mgr.db.create_vm_then(&full, principal, Reader::Kilnd.ids(), write_seed);
    let recorded = if full.nics.is_empty() { record() } else { mgr.networks.while_steady(record) };
    match recorded {
        Ok(vm) => Ok(vm),
        Err(e) => {
            let _ = volumes::delete(&mgr.db, state_dir, &root);
            undo_seed();
            Err(match e {
                crate::db::DbError::Unfinished(why) => {
                    LifecycleError::Devices(format!("writing the first-boot seed: {why}"))
                }
                other => crate::lifecycle::definition_error(other),
            })
        }
    }
}
