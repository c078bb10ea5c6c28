//! CPUID, MSR, FPU and local-APIC set-up of a fresh KVM vCPU.

use crate::host_err;
use kiln_engine::Result;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// Gives vCPU `index` the host's supported CPUID with its own APIC ID and topology.
pub(crate) fn set_cpuid(vcpu: &VcpuFd, supported: &CpuId, index: u32, vcpus: u32) -> Result<()> {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package.
                entry.ebx = (entry.ebx & 0x0000_ffff) | (index << 24) | ((vcpus.min(255)) << 16);
                // Say we run under a hypervisor (ECX bit 31), so guests do not trust timing loops.
                entry.ecx |= 1 << 31;
                if vcpus > 1 {
                    entry.edx |= 1 << 28; // HTT: more than one logical processor.
                }
            }
            0xb | 0x1f => entry.edx = index, // x2APIC ID
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(host_err("KVM_SET_CPUID2"))
}

/// The MSR values Linux expects at its 64-bit entry point.
pub(crate) fn set_boot_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() });
    let msrs = Msrs::from_entries(&entries).map_err(|_| {
        kiln_engine::EngineError::Unserved("too many boot MSRs for one KVM_SET_MSRS call".into())
    })?;
    vcpu.set_msrs(&msrs).map_err(host_err("KVM_SET_MSRS"))?;
    Ok(())
}

/// x87 and SSE control words as after `FNINIT` and reset.
pub(crate) fn set_fpu(vcpu: &VcpuFd) -> Result<()> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(host_err("KVM_SET_FPU"))
}

/// Routes LINT0 to ExtINT (the PIC) and LINT1 to NMI, as a PC BIOS leaves the local APIC.
pub(crate) fn set_lint(vcpu: &VcpuFd) -> Result<()> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7 << 8;
    const DELIVERY_NMI: u32 = 0x4 << 8;
    let mut lapic = vcpu.get_lapic().map_err(host_err("KVM_GET_LAPIC"))?;
    let mut set = |offset: usize, mode: u32| {
        let reg = &mut lapic.regs[offset..offset + 4];
        let bytes: [u8; 4] = [reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8];
        let value = (u32::from_le_bytes(bytes) & !0x700) | mode;
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    };
    set(APIC_LVT0, DELIVERY_EXTINT);
    set(APIC_LVT1, DELIVERY_NMI);
    vcpu.set_lapic(&lapic).map_err(host_err("KVM_SET_LAPIC"))
}
