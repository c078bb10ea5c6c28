//! The command line of `kiln-vmm`. Users script these options: keep them stable.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// How to choose the CPU engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EngineChoice {
    /// `kvm` where hardware virtualization can run the guest, `emu` otherwise.
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// Kiln's own x86-64 CPU in software.
    Emu,
}

/// Runs one virtual machine. The guest's serial console is this process's stdin and stdout.
#[derive(Debug, Parser)]
#[command(
    name = "kiln-vmm",
    version,
    after_help = "Exit status: 0 when the guest resets or powers off; 1 for bad input or a host \
                  error; 2 for a usage error; 3 when the guest crashes (triple fault, an exit the \
                  VMM cannot serve, all vCPUs halted for good); 4 when --timeout expired."
)]
pub struct Args {
    /// Kernel image: an ELF64 vmlinux (with or without a PVH note) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk (initramfs) image.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = "console=ttyS0 reboot=k panic=-1")]
    pub cmdline: String,
    /// Number of virtual CPUs (1-254).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub vcpus: u32,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub memory: u64,
    /// CPU engine.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    pub engine: EngineChoice,
    /// Do not forward stdin to the guest's serial console.
    #[arg(long)]
    pub no_console_input: bool,
    /// Also serve the serial console on this Unix socket: clients read what the guest writes
    /// (which still goes to stdout) and their bytes reach the guest as typed input. Several
    /// clients may attach; the socket is removed when the VM ends.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Write how the VM ended to PATH when kiln-vmm exits (JSON: `status`, `reason`,
    /// `message`), for a supervisor that is not kiln-vmm's parent (kilnd after a restart).
    #[arg(long, value_name = "PATH")]
    pub exit_record: Option<PathBuf>,
    /// Write what the devices served (per disk: requests by kind, bytes, errors) as JSON to
    /// PATH every second and when the VM ends.
    #[arg(long, value_name = "PATH")]
    pub stats: Option<PathBuf>,
    /// A virtio-blk disk backed by a raw image or a block device: PATH[,ro][,serial=ID]. Repeat;
    /// the guest sees them as /dev/vda, /dev/vdb, ... in this order. With key-fd=N the image is
    /// a LUKS2 volume (512-byte sectors) served decrypted with the volume key read from open
    /// file descriptor N (32 or 64 bytes, then closed).
    #[arg(long, value_name = "PATH[,ro][,serial=ID][,key-fd=N]")]
    pub disk: Vec<String>,
    /// Stop the VM after this many seconds (exit status 4). By default it runs until it ends.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// A virtio-net card on a TAP interface: [tap=NAME][,mac=AA:BB:CC:DD:EE:FF]. The TAP is
    /// created if it does not exist (NAME may contain %d; default kiln%d); the MAC defaults to a
    /// random locally administered one. Repeat for more cards.
    #[arg(long, value_name = "[tap=NAME][,mac=MAC]", num_args = 0..=1, default_missing_value = "")]
    pub net: Vec<String>,
    /// A virtio-rng entropy device fed from the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-vsock device for guest CID N (3 or more): host processes reach guest port P by
    /// connecting to the Unix socket PATH and writing `CONNECT P\n` (answered `OK <port>\n`);
    /// guest connections to host port P go to the Unix socket PATH_P.
    #[arg(long, value_name = "cid=N,uds=PATH")]
    pub vsock: Option<String>,
}
