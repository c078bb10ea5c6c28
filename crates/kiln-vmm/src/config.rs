//! Validating the command line into a VM configuration before anything is created.

use crate::cli::{Args, EngineChoice};
use kiln_boot::{image::ImageError, layout, BootError, KernelImage};
use std::path::{Path, PathBuf};

/// The most vCPUs a VM can have: APIC IDs 0-254 of the xAPIC, 255 is broadcast.
pub const MAX_VCPUS: u32 = 254;
/// Virtio devices use GSIs 5-23 of the I/O APIC, one each.
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// One `--disk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskSpec {
    /// Raw image file.
    pub path: PathBuf,
    /// Attach read-only.
    pub read_only: bool,
    /// Serial reported to the guest (GET_ID).
    pub serial: String,
    /// For a LUKS2 volume served decrypted: the descriptor its volume key is read from.
    pub key_fd: Option<i32>,
}

/// One `--net`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    /// TAP name (may contain `%d`).
    pub tap: String,
    /// MAC address; random when absent.
    pub mac: Option<[u8; 6]>,
}

impl NetSpec {
    /// Parses `[tap=NAME][,mac=MAC]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |problem: String| ConfigError::Net { spec: spec.to_string(), problem };
        let mut net = NetSpec { tap: "kiln%d".into(), mac: None };
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("tap", name)) => net.tap = name.to_string(),
                Some(("mac", mac)) => {
                    let parsed = kiln_virtio::net::parse_mac(mac).ok_or_else(|| {
                        bad(format!("{mac:?} is not a MAC address like 02:00:00:00:00:01"))
                    })?;
                    if parsed[0] & 1 == 1 {
                        return Err(bad(format!(
                            "{mac} is a multicast address; use a unicast one"
                        )));
                    }
                    net.mac = Some(parsed);
                }
                _ => return Err(bad(format!("unknown option {part:?}; use tap=NAME or mac=MAC"))),
            }
        }
        Ok(net)
    }
}

/// The `--vsock` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockSpec {
    /// Guest context ID.
    pub cid: u64,
    /// The Unix socket host processes connect to.
    pub uds: PathBuf,
}

/// Longest `--vsock` socket path: `sockaddr_un` holds 107 bytes, and guest connections to
/// host port P use `PATH_P` (up to 11 more bytes).
pub const MAX_VSOCK_PATH: usize = 96;

impl VsockSpec {
    /// Parses `cid=N,uds=PATH`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad = |problem: String| ConfigError::Vsock { spec: spec.to_string(), problem };
        let (mut cid, mut uds) = (None, None);
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("cid", n)) => {
                    let n: u64 =
                        n.parse().map_err(|_| bad(format!("cid {n:?} is not a number")))?;
                    if !(kiln_virtio::vsock::MIN_GUEST_CID..u64::from(u32::MAX)).contains(&n) {
                        return Err(bad(format!(
                            "cid {n} is reserved: give 3 or more (0-2 are the hypervisor, \
                             local and host; below 4294967295)"
                        )));
                    }
                    cid = Some(n);
                }
                Some(("uds", path)) if !path.is_empty() => uds = Some(PathBuf::from(path)),
                _ => return Err(bad(format!("unknown option {part:?}; use cid=N,uds=PATH"))),
            }
        }
        let cid = cid.ok_or_else(|| bad("give the guest CID: cid=N (3 or more)".into()))?;
        let uds = uds.ok_or_else(|| bad("give the host socket path: uds=PATH".into()))?;
        if uds.as_os_str().len() > MAX_VSOCK_PATH {
            return Err(bad(format!("uds path is longer than {MAX_VSOCK_PATH} bytes")));
        }
        let parent = uds.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(bad(format!("directory {} does not exist", parent.display())));
        }
        Ok(VsockSpec { cid, uds })
    }
}

impl DiskSpec {
    /// Parses `PATH[,ro][,serial=ID][,key-fd=N]`.
    pub fn parse(spec: &str) -> Result<Self, ConfigError> {
        let bad =
            |problem: &str| ConfigError::Disk { spec: spec.to_string(), problem: problem.into() };
        let mut parts = spec.split(',');
        let path = PathBuf::from(
            parts
                .next()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad("give the image path first"))?,
        );
        let mut disk = DiskSpec { path, read_only: false, serial: String::new(), key_fd: None };
        for part in parts {
            match part.split_once('=') {
                None if part == "ro" => disk.read_only = true,
                Some(("serial", id)) if id.len() <= 20 && id.is_ascii() => {
                    disk.serial = id.to_string()
                }
                Some(("serial", _)) => return Err(bad("serial must be at most 20 ASCII bytes")),
                Some(("key-fd", n)) => match n.parse::<i32>() {
                    Ok(fd) if fd >= 3 => disk.key_fd = Some(fd),
                    _ => return Err(bad("key-fd must be a file descriptor number, 3 or more")),
                },
                _ => {
                    return Err(bad(&format!(
                        "unknown option {part:?}; use ro, serial=ID or key-fd=N"
                    )))
                }
            }
        }
        let kind = std::fs::metadata(&disk.path).map(|m| m.file_type());
        let usable = kind.is_ok_and(|t| {
            use std::os::unix::fs::FileTypeExt;
            t.is_file() || t.is_block_device()
        });
        if !usable {
            return Err(bad("the image does not exist or is not a regular file or block device"));
        }
        Ok(disk)
    }
}

/// Bad input, each naming the option at fault and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--vcpus` out of range.
    #[error("--vcpus {0} is out of range: give between 1 and {MAX_VCPUS}")]
    Vcpus(u32),
    /// `--memory` below the minimum.
    #[error("--memory {given} MiB is too small: Kiln needs at least {min} MiB", min = layout::MIN_MEMORY_BYTES >> 20)]
    MemoryTooSmall {
        /// The value given.
        given: u64,
    },
    /// `--memory` above what the host has.
    #[error("--memory {given} MiB is more than this host's {host} MiB of RAM; give less")]
    MemoryTooLarge {
        /// The value given.
        given: u64,
        /// Host RAM in MiB.
        host: u64,
    },
    /// The kernel image is unusable.
    #[error(transparent)]
    Kernel(#[from] ImageError),
    /// The initrd is missing.
    #[error("initrd {0} does not exist or is not a regular file")]
    Initrd(PathBuf),
    /// A `--disk` value is malformed or names a missing image.
    #[error("--disk {spec:?}: {problem}")]
    Disk {
        /// The value given.
        spec: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// A `--net` value is malformed.
    #[error("--net {spec:?}: {problem}")]
    Net {
        /// The value given.
        spec: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The `--vsock` value is malformed.
    #[error("--vsock {spec:?}: {problem}")]
    Vsock {
        /// The value given.
        spec: String,
        /// What is wrong and what to do.
        problem: String,
    },
    /// More virtio devices than interrupt lines.
    #[error("too many virtio devices ({0}); at most {MAX_VIRTIO_DEVICES} fit")]
    TooManyDevices(usize),
    /// Kernel or initrd do not fit in the memory given.
    #[error(transparent)]
    Fit(#[from] BootError),
    /// The console socket cannot be set up.
    #[error(transparent)]
    Console(#[from] crate::console::ConsoleError),
}

/// A validated VM configuration.
#[derive(Debug)]
pub struct VmConfig {
    /// The recognised kernel.
    pub kernel: KernelImage,
    /// Optional initrd.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// vCPU count.
    pub vcpus: u32,
    /// Guest RAM in bytes.
    pub memory_bytes: u64,
    /// Requested engine.
    pub engine: EngineChoice,
    /// Forward stdin to the serial console.
    pub console_input: bool,
    /// Disks, in guest order.
    pub disks: Vec<DiskSpec>,
    /// Network cards, in guest order.
    pub nets: Vec<NetSpec>,
    /// Attach a virtio-rng device.
    pub rng: bool,
    /// The vsock device, if any.
    pub vsock: Option<VsockSpec>,
    /// Stop the VM after this long.
    pub timeout: Option<std::time::Duration>,
    /// Where the device statistics go.
    pub stats: Option<PathBuf>,
    /// The console socket, bound (the last check, so nothing is bound for a config that fails).
    pub console: Option<crate::console::Console>,
}

impl VmConfig {
    /// Checks every option; the first problem found is returned.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        if args.vcpus == 0 || args.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(args.vcpus));
        }
        let memory_bytes = args.memory.saturating_mul(1 << 20);
        if memory_bytes < layout::MIN_MEMORY_BYTES {
            return Err(ConfigError::MemoryTooSmall { given: args.memory });
        }
        if let Some(host) = host_memory_mib() {
            if args.memory > host {
                return Err(ConfigError::MemoryTooLarge { given: args.memory, host });
            }
        }
        let kernel = KernelImage::open(&args.kernel)?;
        if let Some(initrd) = &args.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::Initrd(initrd.clone()));
            }
        }
        kiln_boot::check_fit(&kernel, args.initrd.as_deref(), memory_bytes)?;
        let disks = args.disk.iter().map(|d| DiskSpec::parse(d)).collect::<Result<Vec<_>, _>>()?;
        let nets = args.net.iter().map(|n| NetSpec::parse(n)).collect::<Result<Vec<_>, _>>()?;
        let vsock = args.vsock.as_deref().map(VsockSpec::parse).transpose()?;
        let devices =
            disks.len() + nets.len() + usize::from(args.rng) + usize::from(vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        let console =
            args.console_socket.as_deref().map(crate::console::Console::bind).transpose()?;
        Ok(VmConfig {
            kernel,
            initrd: args.initrd,
            cmdline: args.cmdline,
            vcpus: args.vcpus,
            memory_bytes,
            engine: args.engine,
            console_input: !args.no_console_input,
            disks,
            nets,
            rng: args.rng,
            vsock,
            timeout: args.timeout.map(std::time::Duration::from_secs),
            stats: args.stats,
            console,
        })
    }
}

/// The host's RAM in MiB, from `/proc/meminfo`.
fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
