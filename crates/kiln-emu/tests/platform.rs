//! The platform around emu's CPUs, driven through the engine traits as the VMM drives them:
//! start-up of an AP by INIT/SIPI, the local APIC timer in guest time with the idle skip-ahead,
//! I/O APIC routing of an interrupt line, and locked instructions that stay atomic against plain
//! stores of another vCPU.

use iced_x86::code_asm::*;
use kiln_emu::sandbox::{RecordingIo, Sandbox};
use kiln_emu::EmuEngine;
use kiln_engine::{BootCpuState, Engine, Vcpu, VcpuStop, Vm, VmSpec};
use std::sync::Arc;
use std::time::Duration;

const CODE: u64 = 0x10_0000;
const CODE_AP: u64 = 0x18_0000;
const HANDLER: u64 = 0x11_0000;
const LAPIC: u64 = 0xfee0_0000;
const IOAPIC: u64 = 0xfec0_0000;
/// A stop that never comes: a test that would hang fails instead after this long.
const WATCHDOG: Duration = Duration::from_secs(60);

fn assemble_at(
    bits: u32,
    at: u64,
    f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Vec<u8> {
    let mut a = CodeAssembler::new(bits).expect("assembler");
    f(&mut a).expect("test code assembles");
    a.assemble(at).expect("test code assembles")
}

/// A VM of `vcpus` over the sandbox's memory, with the interrupt controllers mapped.
fn vm(sb: &Sandbox, vcpus: u32) -> Arc<dyn Vm> {
    sb.map_interrupt_controllers();
    EmuEngine::new().create_vm(&VmSpec { vcpus }, &sb.memory).expect("VM")
}

/// vCPU `index` booted in the sandbox's long mode at `rip` with stack `rsp`.
fn boot_vcpu(sb: &Sandbox, vm: &Arc<dyn Vm>, index: u32, rip: u64, stack: u64) -> Box<dyn Vcpu> {
    let mut vcpu = vm.create_vcpu(index).expect("vCPU");
    let d = sb.cpu.dump();
    let mut st = BootCpuState { regs: d.regs, sregs: d.sregs };
    st.regs.rip = rip;
    st.regs.rsp = stack;
    vcpu.set_boot_state(&st).expect("boot state");
    vcpu
}

/// Runs `vcpu` on its own thread until it stops with something other than a kick; a watchdog
/// kicks it after [`WATCHDOG`] so that a hang fails the test.
fn run_to_stop(mut vcpu: Box<dyn Vcpu>) -> std::thread::JoinHandle<(VcpuStop, Box<dyn Vcpu>)> {
    let kick = vcpu.kicker();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(WATCHDOG);
        kick.kick();
    });
    drop(watchdog);
    std::thread::spawn(move || {
        let io = RecordingIo::default();
        let stop = vcpu.run(&io).expect("vCPU runs");
        (stop, vcpu)
    })
}

fn emit_store32(a: &mut CodeAssembler, addr: u64, value: u32) -> Result<(), IcedError> {
    a.mov(rdi, addr)?;
    a.mov(dword_ptr(rdi), value)
}

#[test]
fn init_and_sipi_start_an_ap_in_real_mode_at_the_vector_page() {
    // The AP waiting before the IPIs arrive, and the AP looking only after both are pending
    // (INIT must not swallow the SIPI that follows it).
    start_an_ap(false);
    start_an_ap(true);
}

fn start_an_ap(ap_late: bool) {
    let sb = Sandbox::new().expect("sandbox");
    let vm = vm(&sb, 2);
    const FLAG: u64 = 0x2_0100;
    // The AP: real mode at 0x20000 (SIPI vector 0x20), CS = 0x2000; it writes 0x5a to
    // 0x2000:0x100 and stops with interrupts off.
    let ap_code = assemble_at(16, 0, |a| {
        a.mov(ax, 0x2000u32)?;
        a.mov(ds, ax)?;
        a.mov(byte_ptr(0x100), 0x5au32)?;
        a.cli()?;
        a.hlt()
    });
    sb.poke(0x2_0000, &ap_code);
    let bsp_code = assemble_at(64, CODE, |a| {
        emit_store32(a, LAPIC + 0x310, 1 << 24)?; // ICR high: APIC 1
        emit_store32(a, LAPIC + 0x300, 0x4500)?; // INIT, assert
        emit_store32(a, LAPIC + 0x300, 0x4620)?; // SIPI, vector 0x20
        let mut wait = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(rsi, FLAG)?;
        a.cmp(byte_ptr(rsi), 0x5a)?;
        a.jne(wait)?;
        a.mov(rbx, 0xbeefu64)?;
        a.cli()?;
        a.hlt()
    });
    sb.poke(CODE, &bsp_code);
    let bsp = boot_vcpu(&sb, &vm, 0, CODE, 0x30_0000);
    let ap = vm.create_vcpu(1).expect("AP");
    let (bsp, ap) = if ap_late {
        let bsp = run_to_stop(bsp);
        std::thread::sleep(Duration::from_millis(50));
        (bsp, run_to_stop(ap))
    } else {
        let ap = run_to_stop(ap);
        (run_to_stop(bsp), ap)
    };
    let (bsp_stop, bsp) = bsp.join().expect("BSP thread");
    let (ap_stop, ap) = ap.join().expect("AP thread");
    assert_eq!(bsp_stop, VcpuStop::Halted, "the BSP saw the AP's store and stopped");
    assert_eq!(bsp.dump().expect("dump").regs.rbx, 0xbeef);
    assert_eq!(ap_stop, VcpuStop::Halted);
    let ap_regs = ap.dump().expect("dump");
    assert_eq!(ap_regs.sregs.cs.selector, 0x2000, "the AP started at the SIPI page");
    assert_eq!(ap_regs.sregs.cs.base, 0x2_0000);
    assert_eq!(ap_regs.sregs.cr0 & 1, 0, "in real mode");
}

#[test]
fn a_local_apic_timer_fires_in_guest_time_and_an_idle_vm_skips_to_it() {
    let sb = Sandbox::new().expect("sandbox");
    let vm = vm(&sb, 1);
    sb.set_gate(0x40, HANDLER, 0xe, 0, 0);
    let handler = assemble_at(64, HANDLER, |a| {
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mov(r9, rax)?; // TSC when the timer interrupt arrived
        a.cli()?;
        a.hlt()
    });
    sb.poke(HANDLER, &handler);
    // Four seconds of guest time: 4e9 ticks of the 1 GHz APIC clock, divided by 1.
    const COUNT: u32 = 4_000_000_000;
    let code = assemble_at(64, CODE, |a| {
        emit_store32(a, LAPIC + 0xf0, 0x1ff)?; // SVR: enabled, spurious vector 0xff
        emit_store32(a, LAPIC + 0x3e0, 0xb)?; // divide by 1
        emit_store32(a, LAPIC + 0x320, 0x40)?; // LVT timer: one-shot, vector 0x40
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mov(r8, rax)?; // TSC when the timer was armed
        emit_store32(a, LAPIC + 0x380, COUNT)?;
        a.sti()?;
        let mut idle = a.create_label();
        a.set_label(&mut idle)?;
        a.hlt()?;
        a.jmp(idle)
    });
    sb.poke(CODE, &code);
    let vcpu = boot_vcpu(&sb, &vm, 0, CODE, 0x30_0000);
    let (stop, vcpu) = run_to_stop(vcpu).join().expect("vCPU thread");
    assert_eq!(stop, VcpuStop::Halted, "the timer interrupt arrived (the guest idled to it)");
    let regs = vcpu.dump().expect("dump").regs;
    let waited = regs.r9.wrapping_sub(regs.r8);
    assert!(
        (u64::from(COUNT)..u64::from(COUNT) + 100_000).contains(&waited),
        "the interrupt came {waited} TSC ticks after arming, expected just over {COUNT}"
    );
}

#[test]
fn an_interrupt_line_is_routed_by_its_io_apic_redirection_entry() {
    let sb = Sandbox::new().expect("sandbox");
    let vm = vm(&sb, 1);
    sb.set_gate(0x41, HANDLER, 0xe, 0, 0);
    let handler = assemble_at(64, HANDLER, |a| {
        a.mov(rbx, 0x41u64)?;
        emit_store32(a, LAPIC + 0xb0, 0)?; // EOI
        a.cli()?;
        a.hlt()
    });
    sb.poke(HANDLER, &handler);
    let code = assemble_at(64, CODE, |a| {
        emit_store32(a, LAPIC + 0xf0, 0x1ff)?;
        // Pin 9: high half (destination APIC 0), then low half (vector 0x41, edge, unmasked).
        emit_store32(a, IOAPIC, 0x10 + 2 * 9 + 1)?;
        emit_store32(a, IOAPIC + 0x10, 0)?;
        emit_store32(a, IOAPIC, 0x10 + 2 * 9)?;
        emit_store32(a, IOAPIC + 0x10, 0x41)?;
        a.mov(rcx, 1u64)?; // ready
        a.sti()?;
        let mut idle = a.create_label();
        a.set_label(&mut idle)?;
        a.hlt()?;
        a.jmp(idle)
    });
    sb.poke(CODE, &code);
    let vcpu = boot_vcpu(&sb, &vm, 0, CODE, 0x30_0000);
    let line = vm.irq_line(9).expect("line 9");
    let running = run_to_stop(vcpu);
    // The guest idles with no timer armed: it waits for the line however long it takes.
    std::thread::sleep(Duration::from_millis(50));
    line.trigger().expect("trigger");
    let (stop, vcpu) = running.join().expect("vCPU thread");
    assert_eq!(stop, VcpuStop::Halted);
    let regs = vcpu.dump().expect("dump").regs;
    assert_eq!(regs.rbx, 0x41, "the handler of the vector the I/O APIC names ran");
}

#[test]
fn a_locked_add_does_not_lose_a_plain_store_of_another_vcpu_to_the_same_word() {
    // vCPU 0 adds to the high half of a dword with LOCK ADD while vCPU 1 increments the low
    // half with plain loads and stores. Real CPUs lose nothing; an emulator that implements the
    // locked add as read, lock-free window, write loses some of vCPU 1's stores (the Linux
    // qspinlock deadlock this test was written for).
    const WORD: u64 = 0x2_0000;
    const ROUNDS: u32 = 40_000;
    let sb = Sandbox::new().expect("sandbox");
    let vm = vm(&sb, 2);
    let adder = assemble_at(64, CODE, |a| {
        a.mov(rsi, WORD)?;
        a.mov(ecx, ROUNDS)?;
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.lock().add(dword_ptr(rsi), 0x1_0000)?;
        a.dec(ecx)?;
        a.jnz(again)?;
        a.cli()?;
        a.hlt()
    });
    let incrementer = assemble_at(64, CODE_AP, |a| {
        a.mov(rsi, WORD)?;
        a.mov(ecx, ROUNDS)?;
        let mut again = a.create_label();
        a.set_label(&mut again)?;
        a.mov(ax, word_ptr(rsi))?;
        a.inc(ax)?;
        a.mov(word_ptr(rsi), ax)?;
        a.dec(ecx)?;
        a.jnz(again)?;
        a.cli()?;
        a.hlt()
    });
    sb.poke(CODE, &adder);
    sb.poke(CODE_AP, &incrementer);
    let v0 = run_to_stop(boot_vcpu(&sb, &vm, 0, CODE, 0x30_0000));
    let v1 = run_to_stop(boot_vcpu(&sb, &vm, 1, CODE_AP, 0x2f_0000));
    assert_eq!(v0.join().expect("vCPU 0").0, VcpuStop::Halted);
    assert_eq!(v1.join().expect("vCPU 1").0, VcpuStop::Halted);
    let mut b = [0u8; 4];
    sb.peek(WORD, &mut b);
    let word = u32::from_le_bytes(b);
    assert_eq!(word >> 16, ROUNDS, "every locked add landed");
    assert_eq!(word & 0xffff, ROUNDS, "no plain store of the other vCPU was overwritten");
}
