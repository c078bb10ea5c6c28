//! A KVM VM: memory slots, in-kernel irqchip and PIT with the PC's GSI routing, irqfd
//! interrupt lines.

use crate::{cpuid, host_err, routing, vcpu::KvmVcpu};
use kiln_engine::{EngineError, IrqLine, Result, Vcpu, Vm, VmSpec};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KvmIrqRouting, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VmFd};
use std::sync::Arc;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

/// Where KVM puts the three pages of the VMX real-mode TSS (must be outside RAM and MMIO).
const TSS_ADDRESS: usize = 0xfffb_d000;

pub(crate) struct KvmVm {
    fd: VmFd,
    supported_cpuid: CpuId,
    vcpus: u32,
}

impl KvmVm {
    pub(crate) fn new(kvm: &Kvm, spec: &VmSpec, memory: &GuestMemoryMmap) -> Result<Self> {
        let fd = kvm.create_vm().map_err(host_err("KVM_CREATE_VM"))?;
        for (slot, region) in memory.iter().enumerate() {
            let mem_region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `memory`, which the VMM keeps alive for
            // the whole life of the VM (it outlives every vCPU thread), and it is exactly
            // `memory_size` bytes long.
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(host_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        fd.set_tss_address(TSS_ADDRESS).map_err(host_err("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(host_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        fd.create_pit2(pit).map_err(host_err("KVM_CREATE_PIT2"))?;
        let routing = KvmIrqRouting::from_entries(&routing::pc_routing_entries())
            .map_err(|e| EngineError::Unserved(format!("the GSI routing table: {e:?}")))?;
        fd.set_gsi_routing(&routing).map_err(host_err("KVM_SET_GSI_ROUTING"))?;
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(host_err("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(KvmVm { fd, supported_cpuid, vcpus: spec.vcpus })
    }
}

impl Vm for KvmVm {
    fn create_vcpu(&self, index: u32) -> Result<Box<dyn Vcpu>> {
        let fd = self.fd.create_vcpu(u64::from(index)).map_err(host_err("KVM_CREATE_VCPU"))?;
        cpuid::set_cpuid(&fd, &self.supported_cpuid, index, self.vcpus)?;
        cpuid::set_boot_msrs(&fd)?;
        cpuid::set_fpu(&fd)?;
        cpuid::set_lint(&fd)?;
        Ok(Box::new(KvmVcpu::new(index, fd)))
    }

    fn irq_line(&self, gsi: u32) -> Result<Arc<dyn IrqLine>> {
        let event = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| EngineError::Host { operation: "creating an irqfd", source })?;
        self.fd.register_irqfd(&event, gsi).map_err(host_err("KVM_IRQFD"))?;
        Ok(Arc::new(IrqFd(event)))
    }
}

/// An interrupt line backed by an irqfd: a write injects an edge on the GSI.
struct IrqFd(EventFd);

impl IrqLine for IrqFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
