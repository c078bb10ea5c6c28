//! The emu engine through Kiln's engine traits: halting, interrupts, kicks, shutdown and stops
//! requested by the VMM.

use iced_x86::code_asm::*;
use kiln_emu::sandbox::{RecordingIo, Sandbox};
use kiln_emu::EmuEngine;
use kiln_engine::{BootCpuState, Engine, EngineError, IoHandler, Vcpu, VcpuStop, VmSpec};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const CODE: u64 = 0x10_0000;

fn assemble(f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Vec<u8> {
    let mut a = CodeAssembler::new(64).expect("64-bit assembler");
    f(&mut a).expect("test code assembles");
    a.assemble(CODE).expect("test code assembles")
}

/// A VM over a sandbox machine's memory, its vCPU 0 booted at `code` the way the VMM boots a
/// 64-bit kernel: long mode, paging on, flat CS, CPL0.
fn boot(sb: &Sandbox, code: &[u8]) -> (std::sync::Arc<dyn kiln_engine::Vm>, Box<dyn Vcpu>) {
    sb.poke(CODE, code);
    let engine = EmuEngine::new();
    let vm = engine.create_vm(&VmSpec { vcpus: 1 }, &sb.memory).expect("VM");
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    let d = sb.cpu.dump();
    let mut st = BootCpuState { regs: d.regs, sregs: d.sregs };
    st.regs.rip = CODE;
    vcpu.set_boot_state(&st).expect("boot state");
    (vm, vcpu)
}

#[test]
fn hlt_with_interrupts_disabled_returns_halted_after_port_output() {
    let sb = Sandbox::new().expect("sandbox");
    let code = assemble(|a| {
        a.mov(al, b'K' as u32)?;
        a.out(0xe9, al)?;
        a.cli()?;
        a.hlt()
    });
    let (_vm, mut vcpu) = boot(&sb, &code);
    let io = RecordingIo::default();
    assert_eq!(vcpu.run(&io).expect("runs"), VcpuStop::Halted);
    assert_eq!(*io.pio_writes.lock().expect("lock"), vec![(0xe9, vec![b'K'])]);
    assert_eq!(vcpu.dump().expect("dump").regs.rip, CODE + 6);
}

#[test]
fn an_interrupt_line_wakes_a_halted_vcpu_into_its_handler() {
    let sb = Sandbox::new().expect("sandbox");
    let handler = 0x11_0000u64;
    let mut a = CodeAssembler::new(64).expect("assembler");
    a.mov(rbx, 0x1234u64).expect("asm");
    a.mov(rcx, qword_ptr(rsp)).expect("asm"); // the interrupted RIP
    a.cli().expect("asm");
    a.hlt().expect("asm");
    let h = a.assemble(handler).expect("asm");
    sb.poke(handler, &h);
    sb.set_gate(0x34, handler, 0xe, 0, 0); // GSI 4 -> vector 0x34
    let code = assemble(|a| {
        a.sti()?;
        a.hlt()?;
        a.jmp(CODE + 2)
    });
    let (vm, mut vcpu) = boot(&sb, &code);
    let line = vm.irq_line(4).expect("line");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        line.trigger().expect("trigger");
    });
    let io = RecordingIo::default();
    assert_eq!(vcpu.run(&io).expect("runs"), VcpuStop::Halted);
    t.join().expect("trigger thread");
    let regs = vcpu.dump().expect("dump").regs;
    assert_eq!(regs.rbx, 0x1234, "the handler ran");
    assert_eq!(regs.rcx, CODE + 2, "interrupted after the HLT");
}

#[test]
fn a_kick_stops_a_spinning_vcpu() {
    let sb = Sandbox::new().expect("sandbox");
    let code = assemble(|a| {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        a.inc(rax)?;
        a.jmp(l)
    });
    let (_vm, mut vcpu) = boot(&sb, &code);
    let kick = vcpu.kicker();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        kick.kick();
    });
    let io = RecordingIo::default();
    assert_eq!(vcpu.run(&io).expect("runs"), VcpuStop::Kicked);
    t.join().expect("kick thread");
    assert!(vcpu.dump().expect("dump").regs.rax > 0);
}

#[test]
fn a_triple_fault_is_a_shutdown() {
    let mut sb = Sandbox::new().expect("sandbox");
    sb.cpu.idtr.limit = 0;
    let code = assemble(|a| a.ud2());
    let (_vm, mut vcpu) = boot(&sb, &code);
    assert_eq!(vcpu.run(&RecordingIo::default()).expect("runs"), VcpuStop::Shutdown);
}

struct StopAfterWrite(AtomicBool);

impl IoHandler for StopAfterWrite {
    fn pio_read(&self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn pio_write(&self, _port: u16, _data: &[u8]) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn mmio_write(&self, _addr: u64, _data: &[u8]) {}
    fn stop_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[test]
fn a_stop_requested_by_a_device_returns_kicked_after_the_access() {
    let sb = Sandbox::new().expect("sandbox");
    let code = assemble(|a| {
        a.out(0x64, al)?;
        a.mov(rbx, 1u64)?;
        a.hlt()
    });
    let (_vm, mut vcpu) = boot(&sb, &code);
    let io = StopAfterWrite(AtomicBool::new(false));
    assert_eq!(vcpu.run(&io).expect("runs"), VcpuStop::Kicked);
    let regs = vcpu.dump().expect("dump").regs;
    assert_eq!(regs.rip, CODE + 2, "stopped right after the OUT");
    assert_eq!(regs.rbx, 0);
}

#[test]
fn far_jump_through_a_call_gate_is_unserved_with_registers() {
    let sb = Sandbox::new().expect("sandbox");
    // GDT entry 0x18: a present 64-bit call gate (call gates are not implemented).
    sb.poke_u64(kiln_emu::sandbox::GDT + 0x18, 0x0000_8c00_0000_0000);
    // jmp far [rip+0] (REX.W FF /5), followed by the far pointer 0x18:0.
    let code = [0x48, 0xff, 0x2d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x18, 0];
    let (_vm, mut vcpu) = boot(&sb, &code);
    match vcpu.run(&RecordingIo::default()) {
        Err(EngineError::Unserved(msg)) => {
            assert!(msg.contains("call gate"), "{msg}");
            assert!(msg.contains("rip=0x100000"), "{msg}");
        }
        other => panic!("expected an unserved stop, got {other:?}"),
    }
}

#[test]
fn mmio_outside_ram_reaches_the_io_handler() {
    let sb = Sandbox::new().expect("sandbox");
    // Map linear 0x3ff000 to guest-physical 0xd000_0000 (no RAM there).
    sb.poke_u64(Sandbox::pte_addr(0x3f_f000), 0xd000_0000 | 3);
    let code = assemble(|a| {
        a.mov(rax, 0x3f_f010u64)?;
        a.mov(dword_ptr(rax), 0x55aa_u32)?;
        a.mov(ebx, dword_ptr(rax + 4))?;
        a.hlt()
    });
    let (_vm, mut vcpu) = boot(&sb, &code);
    let io = RecordingIo::default();
    assert_eq!(vcpu.run(&io).expect("runs"), VcpuStop::Halted);
    assert_eq!(*io.mmio_writes.lock().expect("lock"), vec![(0xd000_0010, vec![0xaa, 0x55, 0, 0])]);
    assert_eq!(vcpu.dump().expect("dump").regs.rbx, 0xffff_ffff);
}

#[test]
fn simd_is_advertised_only_when_configured() {
    let sb = Sandbox::new().expect("sandbox");
    let code = assemble(|a| {
        a.mov(eax, 1u32)?;
        a.cpuid()?;
        a.hlt()
    });
    sb.poke(CODE, &code);
    let d = sb.cpu.dump();
    let mut st = BootCpuState { regs: d.regs, sregs: d.sregs };
    st.regs.rip = CODE;
    for (config, expect) in [(false, 0), (true, (1 << 26) | (1 << 25) | (1 << 24) | 1)] {
        let engine =
            kiln_emu::EmuEngine::with_config(kiln_emu::EmuConfig { advertise_simd: config });
        let vm = engine.create_vm(&VmSpec { vcpus: 1 }, &sb.memory).expect("VM");
        let mut vcpu = vm.create_vcpu(0).expect("vCPU");
        vcpu.set_boot_state(&st).expect("boot state");
        assert_eq!(vcpu.run(&RecordingIo::default()).expect("runs"), VcpuStop::Halted);
        let features = vcpu.dump().expect("dump").regs.rdx;
        assert_eq!(features & expect, expect);
        assert_eq!(features & 1, u64::from(config), "FPU bit follows the option");
    }
}
