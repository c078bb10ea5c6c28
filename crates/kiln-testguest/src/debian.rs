//! A whole Debian system (`kiln-image debian-system`) as a test guest: its ext4 root, its own
//! kernel and initramfs-tools initrd, and a kernel command line that has systemd run one shell
//! command once it starts, so a test (or a benchmark, under `kiln-vmm` and QEMU alike) needs
//! nothing inside the image.
//!
//! The command runs through `systemd.run=` (systemd-run-generator's kernel-command-line
//! service), which starts a transient service with `systemd-run --no-block`: the command then
//! is not part of the boot transaction and can wait for the boot to end
//! (`systemctl is-system-running --wait`) without holding it up.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Waits for the boot to end, prints `KILN-SYSTEM-STATE <state>` on the console and powers off.
pub const REPORT_STATE_AND_POWER_OFF: &str = "echo KILN-SYSTEM-STATE \
     $(systemctl is-system-running --wait) >/dev/console; systemctl poweroff";

/// The files of a built system.
pub struct DebianSystem {
    /// `rootfs.ext4`: never booted itself (tests boot a copy).
    pub rootfs: PathBuf,
    /// The system's kernel (`boot/vmlinuz-*`).
    pub vmlinuz: PathBuf,
    /// The system's initramfs-tools initrd.
    pub initrd: PathBuf,
}

impl DebianSystem {
    /// The system in the directory `KILN_DEBIAN_SYSTEM` names (`scripts/test` exports what
    /// `kiln-image debian-system` prints); the error says what is missing, for a skip message.
    pub fn from_env() -> Result<Self, String> {
        let dir = std::env::var_os("KILN_DEBIAN_SYSTEM").map(PathBuf::from).ok_or_else(|| {
            "KILN_DEBIAN_SYSTEM is not set to a Debian system; scripts/test builds one \
             (kiln-image debian-system, as root)"
                .to_string()
        })?;
        let system = DebianSystem {
            rootfs: dir.join("rootfs.ext4"),
            vmlinuz: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        };
        for file in [&system.rootfs, &system.vmlinuz, &system.initrd] {
            if !file.is_file() {
                return Err(format!(
                    "KILN_DEBIAN_SYSTEM={}: {} is missing",
                    dir.display(),
                    file.display()
                ));
            }
        }
        Ok(system)
    }

    /// Copies the root file system to `to`, keeping it sparse (a reflink where the file
    /// system has them).
    pub fn copy_rootfs(&self, to: &Path) -> Result<(), String> {
        let status = Command::new("cp")
            .args(["--sparse=always", "--reflink=auto"])
            .arg(&self.rootfs)
            .arg(to)
            .status()
            .map_err(|e| format!("cannot run cp: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("cp {} {} failed: {status}", self.rootfs.display(), to.display()))
        }
    }
}

/// The kernel command line that boots the system from `/dev/vda` with its console on the
/// serial port and has systemd run `command` (a `/bin/sh -c` script without quote characters).
pub fn cmdline(command: &str) -> String {
    assert!(
        !command.contains(['\'', '"']),
        "the command is quoted on the kernel command line and may hold no quotes: {command}"
    );
    format!(
        "console=ttyS0 root=/dev/vda rw systemd.run=\"/usr/bin/systemd-run --no-block \
         /bin/sh -c '{command}'\" systemd.run_success_action=none"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_quoted_once_for_the_kernel_and_once_for_systemd() {
        let line = cmdline("echo a $(b); c");
        assert!(line.starts_with("console=ttyS0 root=/dev/vda rw "), "{line}");
        assert!(
            line.contains(
                "systemd.run=\"/usr/bin/systemd-run --no-block /bin/sh -c 'echo a $(b); c'\""
            ),
            "{line}"
        );
        assert!(line.ends_with(" systemd.run_success_action=none"), "{line}");
    }

    #[test]
    #[should_panic(expected = "no quotes")]
    fn a_command_with_quotes_is_refused() {
        cmdline("echo 'x'");
    }
}
