//! Test support: guests assembled inside the tests.
//!
//! * [`guests`] assembles small 64-bit guests with iced-x86's code assembler: serial output, port
//!   I/O, MMIO, HLT, triple fault, several vCPUs, code at CPL0 and CPL3.
//! * [`debian`] boots a whole Debian system (`kiln-image debian-system`) with a command for
//!   systemd to run once it is up.
//! * [`elf`] wraps guest code into an ELF64 kernel image that `kiln-vmm --kernel` boots.
//! * [`initramfs`] builds a Kiln initramfs with a test's script and files through kiln-image.
//! * [`harness`] runs a guest directly on an engine with a recording [`kiln_engine::IoHandler`], so
//!   the same engine-conformance tests run on `kvm` and `emu`.
//! * [`nested`] boots a nested test host (QEMU TCG with SVM, Debian's kernel, `kvm_amd`) where
//!   `/dev/kvm` is hardware-assisted, for the `kvm` side of guest tests on a PVM host.
//! * [`netns`] gives tests a network namespace of their own for bridges, TAPs and veth pairs.
//! * [`privileged`] is a small kernel whose transcript of privileged behaviour (exceptions,
//!   paging, CPL changes) is compared between `emu` and QEMU's TCG.
//! * [`aes_xts`] decrypts sectors with Python's AES-XTS, to check Kiln's encrypted volumes.
//! * [`skip`] reports tests that cannot run on this host, so they never pass silently.

pub mod aes_xts;
pub mod agent;
pub mod conformance;
pub mod debian;
pub mod elf;
pub mod guests;
pub mod harness;
pub mod initramfs;
pub mod nested;
pub mod nested_bench;
pub mod netns;
pub mod privileged;
pub mod skip;

/// Guest-physical address where test guests are loaded and entered.
pub const GUEST_BASE: u64 = 0x10_0000;
