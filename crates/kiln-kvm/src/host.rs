//! What kind of virtualization this host offers.

use std::path::Path;

/// The virtualization `/dev/kvm` provides on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostVirtualization {
    /// `/dev/kvm` backed by VT-x or AMD-V: any guest runs.
    Hardware,
    /// `/dev/kvm` backed by PVM (module `kvm_pvm`): guest CPL0 code is emulated by the host kernel
    /// and a non-PVM Linux guest cannot boot.
    Pvm,
    /// No usable `/dev/kvm`.
    None,
}

impl HostVirtualization {
    /// Looks at `/dev/kvm` and the loaded KVM vendor module.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    /// As [`HostVirtualization::detect`], with `/dev` and `/sys` under `root` (for tests).
    pub fn detect_in(root: &Path) -> Self {
        if !root.join("dev/kvm").exists() {
            return HostVirtualization::None;
        }
        if root.join("sys/module/kvm_pvm").exists() {
            return HostVirtualization::Pvm;
        }
        HostVirtualization::Hardware
    }

    /// A short description for messages.
    pub fn describe(self) -> &'static str {
        match self {
            HostVirtualization::Hardware => "hardware-assisted KVM",
            HostVirtualization::Pvm => "PVM (KVM without hardware virtualization)",
            HostVirtualization::None => "no /dev/kvm",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_module_marks_the_host_as_pvm() {
        let dir = std::env::temp_dir().join(format!("kiln-host-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        assert_eq!(HostVirtualization::detect_in(&dir), HostVirtualization::None);
        std::fs::write(dir.join("dev/kvm"), b"").unwrap();
        assert_eq!(HostVirtualization::detect_in(&dir), HostVirtualization::Hardware);
        std::fs::create_dir_all(dir.join("sys/module/kvm_pvm")).unwrap();
        assert_eq!(HostVirtualization::detect_in(&dir), HostVirtualization::Pvm);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
