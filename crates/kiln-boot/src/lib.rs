//! Guest memory layout and the Linux x86-64 boot protocol.
//!
//! Both engines boot the same way: [`layout`] decides where RAM, boot structures and the MMIO hole
//! are; [`image`] recognises and loads the kernel (ELF `vmlinux`, with or without a PVH note, or
//! `bzImage`); [`load_guest`] places the command line, initrd and zero page and returns the
//! [`kiln_engine::BootCpuState`] of the boot processor: 64-bit long mode with identity-mapped page
//! tables, `rsi` pointing at the zero page, as `Documentation/arch/x86/boot.rst` prescribes for the
//! 64-bit entry point. The [`mptable`] tells a guest without ACPI its CPUs and I/O APIC; the
//! [`acpi`] tables tell a stock kernel that and its devices, and let it power off.

pub mod acpi;
pub mod image;
pub mod layout;
pub mod long_mode;
pub mod mptable;
mod zero_page;

pub use image::{KernelFormat, KernelImage};

use kiln_engine::BootCpuState;
use linux_loader::cmdline::Cmdline;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Errors of preparing a guest for boot. Each names the file or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image is unusable.
    #[error(transparent)]
    Kernel(#[from] image::ImageError),
    /// The initrd cannot be read.
    #[error("cannot read initrd {path}")]
    InitrdRead {
        /// The initrd path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The initrd does not fit between the kernel and the end of low memory.
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory: {available} bytes are free \
         above the kernel; give the VM more --memory"
    )]
    InitrdTooLarge {
        /// The initrd path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Free bytes above the kernel.
        available: u64,
    },
    /// The command line is too long or contains bytes Linux rejects.
    #[error("kernel command line is invalid: {0} (at most {max} bytes of printable ASCII)", max = layout::CMDLINE_MAX_SIZE - 1)]
    Cmdline(String),
    /// Writing boot structures into guest memory failed (memory too small for the layout).
    #[error("guest memory is too small for the boot structures at {addr:#x}")]
    GuestMemory {
        /// The guest address written.
        addr: u64,
    },
}

/// What a boot needs.
#[derive(Clone, Debug)]
pub struct BootSpec<'a> {
    /// The kernel, already recognised by [`KernelImage::open`].
    pub kernel: &'a KernelImage,
    /// Optional initramfs.
    pub initrd: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
    /// Guest RAM size in bytes.
    pub memory_bytes: u64,
    /// Number of vCPUs, announced to the guest in the MP table and the MADT.
    pub vcpus: u32,
    /// Virtio-mmio devices, announced in the DSDT.
    pub mmio_devices: &'a [acpi::MmioDevice],
}

/// Loads kernel, initrd, command line and boot structures, and returns the boot vCPU's state.
pub fn load_guest(
    memory: &GuestMemoryMmap,
    spec: &BootSpec<'_>,
) -> Result<BootCpuState, BootError> {
    let loaded = spec.kernel.load(memory, spec.memory_bytes)?;
    let cmdline = build_cmdline(spec.cmdline)?;
    linux_loader::loader::load_cmdline(memory, GuestAddress(layout::CMDLINE_START), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let initrd = match spec.initrd {
        Some(path) => Some(load_initrd(memory, path, loaded.kernel_end, spec.memory_bytes)?),
        None => None,
    };
    let cmdline_len = cmdline.as_cstring().map(|c| c.as_bytes().len()).unwrap_or(0);
    long_mode::write_tables(memory)?;
    mptable::write(memory, spec.vcpus)?;
    let acpi = acpi::AcpiSpec { vcpus: spec.vcpus, devices: spec.mmio_devices.to_vec() };
    let rsdp = acpi::write(memory, &acpi)?;
    zero_page::write(memory, &loaded, cmdline_len, initrd, spec.memory_bytes, rsdp)?;
    Ok(long_mode::boot_cpu_state(loaded.entry.0, layout::ZERO_PAGE_START))
}

fn build_cmdline(text: &str) -> Result<Cmdline, BootError> {
    let mut cmdline =
        Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    if !text.trim().is_empty() {
        cmdline.insert_str(text.trim()).map_err(|e| BootError::Cmdline(e.to_string()))?;
    }
    Ok(cmdline)
}

/// Checks, without touching guest memory, that the kernel and an initrd of `initrd_size` bytes
/// fit in `memory_bytes` of RAM. [`load_guest`] makes the same checks.
pub fn check_fit(
    kernel: &KernelImage,
    initrd: Option<&Path>,
    memory_bytes: u64,
) -> Result<(), BootError> {
    kernel.check_fit(memory_bytes)?;
    if let Some(path) = initrd {
        let size = std::fs::metadata(path)
            .map_err(|source| BootError::InitrdRead { path: path.to_path_buf(), source })?
            .len();
        initrd_address(path, size, kernel.memory_needed(), memory_bytes)?;
    }
    Ok(())
}

/// Where an initrd of `size` bytes goes: the highest page-aligned address that leaves it below
/// the end of low RAM and above the kernel.
fn initrd_address(
    path: &Path,
    size: u64,
    kernel_end: u64,
    memory_bytes: u64,
) -> Result<u64, BootError> {
    let top = layout::low_ram_end(memory_bytes);
    let floor = kernel_end.next_multiple_of(layout::PAGE_SIZE);
    let available = top.saturating_sub(floor);
    if size > available {
        return Err(BootError::InitrdTooLarge { path: path.to_path_buf(), size, available });
    }
    Ok((top - size) & !(layout::PAGE_SIZE - 1))
}

/// Places the initrd at the highest page-aligned address below the end of low RAM (and below
/// 4 GiB minus the MMIO hole), above the kernel, as boot loaders do.
fn load_initrd(
    memory: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    memory_bytes: u64,
) -> Result<(u64, u64), BootError> {
    let read_err = |source| BootError::InitrdRead { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let addr = initrd_address(path, size, kernel_end, memory_bytes)?;
    memory
        .read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| read_err(io::Error::other(e.to_string())))?;
    Ok((addr, size))
}
