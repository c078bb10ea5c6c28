//! A KVM vCPU and its run loop.

use crate::kick::{publish_kvm_run, VcpuKick};
use crate::{cpuid, host_err, regs};
use kiln_engine::{
    BootCpuState, EngineError, IoHandler, Kick, RegisterDump, Result, Vcpu, VcpuStop,
};
use kvm_bindings::{
    kvm_mp_state, KVM_MP_STATE_RUNNABLE, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::sync::Arc;

pub(crate) struct KvmVcpu {
    index: u32,
    fd: VcpuFd,
    kick: Arc<VcpuKick>,
}

impl KvmVcpu {
    pub(crate) fn new(index: u32, fd: VcpuFd) -> Self {
        KvmVcpu { index, fd, kick: Arc::new(VcpuKick::default()) }
    }

    /// One `KVM_RUN` and the service of its exit. `None` means: keep running.
    fn run_once(&mut self, io: &dyn IoHandler) -> Result<Option<VcpuStop>> {
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                return Ok(Some(VcpuStop::Kicked))
            }
            Err(e) => return Err(host_err("KVM_RUN")(e)),
        };
        match exit {
            VcpuExit::IoIn(port, data) => io.pio_read(port, data),
            VcpuExit::IoOut(port, data) => io.pio_write(port, data),
            VcpuExit::MmioRead(addr, data) => io.mmio_read(addr, data),
            VcpuExit::MmioWrite(addr, data) => io.mmio_write(addr, data),
            VcpuExit::Hlt => return Ok(Some(VcpuStop::Halted)),
            VcpuExit::Shutdown => return Ok(Some(VcpuStop::Shutdown)),
            VcpuExit::Intr => return Ok(Some(VcpuStop::Kicked)),
            VcpuExit::SystemEvent(kind, _) => {
                return match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => Ok(Some(VcpuStop::Shutdown)),
                    other => Err(EngineError::Unserved(format!("KVM system event {other}"))),
                }
            }
            VcpuExit::FailEntry(reason, cpu) => {
                return Err(EngineError::Unserved(format!(
                    "KVM could not enter the guest (hardware entry failure reason {reason:#x} on cpu {cpu})"
                )))
            }
            VcpuExit::InternalError => {
                return Err(EngineError::Unserved(
                    "KVM internal error (the host kernel could not emulate an instruction)".into(),
                ))
            }
            other => return Err(EngineError::Unserved(format!("KVM exit {other:?}"))),
        }
        Ok(if io.stop_requested() { Some(VcpuStop::Kicked) } else { None })
    }
}

impl Vcpu for KvmVcpu {
    fn index(&self) -> u32 {
        self.index
    }

    fn set_boot_state(&mut self, state: &BootCpuState) -> Result<()> {
        let mut sregs = self.fd.get_sregs().map_err(host_err("KVM_GET_SREGS"))?;
        regs::apply_sregs(&mut sregs, &state.sregs);
        self.fd.set_sregs(&sregs).map_err(host_err("KVM_SET_SREGS"))?;
        self.fd.set_regs(&regs::to_kvm_regs(&state.regs)).map_err(host_err("KVM_SET_REGS"))?;
        cpuid::set_fpu(&self.fd)?;
        // An application processor given an explicit state starts at once instead of waiting
        // for INIT/SIPI.
        let runnable = kvm_mp_state { mp_state: KVM_MP_STATE_RUNNABLE };
        self.fd.set_mp_state(runnable).map_err(host_err("KVM_SET_MP_STATE"))
    }

    fn run(&mut self, io: &dyn IoHandler) -> Result<VcpuStop> {
        self.kick.enter();
        publish_kvm_run(self.fd.get_kvm_run());
        let result = loop {
            if self.kick.take_request() || io.stop_requested() {
                break Ok(VcpuStop::Kicked);
            }
            match self.run_once(io) {
                Ok(None) => continue,
                Ok(Some(stop)) => break Ok(stop),
                Err(e) => break Err(e),
            }
        };
        publish_kvm_run(std::ptr::null_mut());
        self.fd.set_kvm_immediate_exit(0);
        self.kick.leave();
        result
    }

    fn kicker(&self) -> Arc<dyn Kick> {
        self.kick.clone()
    }

    fn dump(&self) -> Result<RegisterDump> {
        let r = self.fd.get_regs().map_err(host_err("KVM_GET_REGS"))?;
        let s = self.fd.get_sregs().map_err(host_err("KVM_GET_SREGS"))?;
        Ok(regs::dump(&r, &s))
    }
}
