//! Interpreter speed, measured on a tight integer loop. Ignored by default (it measures, it does
//! not assert); run with `cargo test -p kiln-emu --release --test speed -- --ignored --nocapture`.

use iced_x86::code_asm::*;
use kiln_emu::sandbox::Sandbox;

/// Five instructions per iteration: two ALU operations on registers, a store, DEC, JNZ.
fn integer_loop(a: &mut CodeAssembler, iterations: u32) {
    let mut top = a.create_label();
    a.mov(ecx, iterations).expect("asm");
    a.set_label(&mut top).expect("asm");
    a.add(rax, rcx).expect("asm");
    a.xor(rbx, rax).expect("asm");
    a.mov(qword_ptr(0x20_0000u64), rbx).expect("asm");
    a.dec(ecx).expect("asm");
    a.jnz(top).expect("asm");
}

#[test]
#[ignore = "a measurement, not a check"]
fn interpreter_speed_on_an_integer_loop() {
    let mut sb = Sandbox::new().expect("sandbox");
    let ip = 0x10_0000u64;
    let mut a = CodeAssembler::new(64).expect("assembler");
    integer_loop(&mut a, 2_000_000);
    a.hlt().expect("asm");
    let code = a.assemble(ip).expect("asm");
    sb.poke(ip, &code);
    sb.cpu.rip = ip;
    let t = std::time::Instant::now();
    let n = sb.run(u64::MAX).expect("runs");
    let s = t.elapsed().as_secs_f64();
    println!("{n} instructions in {s:.3} s: {:.1} MIPS", n as f64 / s / 1e6);
}

/// Runs `code` (at 0x100000, ending in HLT) on an emu vCPU as the VMM does; returns seconds.
fn run_on_engine(code: impl FnOnce(&mut CodeAssembler)) -> f64 {
    use kiln_engine::{BootCpuState, Engine, VmSpec};
    let sb = Sandbox::new().expect("sandbox");
    let ip = 0x10_0000u64;
    let mut a = CodeAssembler::new(64).expect("assembler");
    code(&mut a);
    a.hlt().expect("asm");
    sb.poke(ip, &a.assemble(ip).expect("asm"));
    let vm = kiln_emu::EmuEngine::new().create_vm(&VmSpec { vcpus: 1 }, &sb.memory).expect("VM");
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    let d = sb.cpu.dump();
    let mut st = BootCpuState { regs: d.regs, sregs: d.sregs };
    st.regs.rip = ip;
    // SSE enabled, as an operating system does.
    st.sregs.cr4 |= kiln_emu::cpu::CR4_OSFXSR;
    vcpu.set_boot_state(&st).expect("boot state");
    let io = kiln_emu::sandbox::RecordingIo::default();
    let t = std::time::Instant::now();
    vcpu.run(&io).expect("runs");
    t.elapsed().as_secs_f64()
}

#[test]
#[ignore = "a measurement, not a check"]
fn engine_speed_on_an_integer_loop() {
    let s = run_on_engine(|a| integer_loop(a, 10_000_000));
    println!("engine: 50M instructions in {s:.3} s: {:.1} MIPS", 50.0 / s);
}

#[test]
#[ignore = "a measurement, not a check"]
fn engine_speed_on_the_benchmarks_two_instruction_loop() {
    let s = run_on_engine(|a| {
        let mut top = a.create_label();
        a.mov(ecx, 50_000_000u32).expect("asm");
        a.set_label(&mut top).expect("asm");
        a.dec(ecx).expect("asm");
        a.jnz(top).expect("asm");
    });
    println!("engine, dec+jnz: 100M instructions in {s:.3} s: {:.1} MIPS", 100.0 / s);
}

#[test]
#[ignore = "a measurement, not a check"]
fn engine_speed_on_an_sse2_string_scan() {
    // The inner loop of glibc's SSE2 strlen/memchr: an aligned 16-byte load, a byte compare,
    // PMOVMSKB and a test per 16 bytes, over one page (no byte matches).
    const ITERATIONS: u32 = 5_000_000;
    let s = run_on_engine(|a| {
        let (mut top, mut found) = (a.create_label(), a.create_label());
        a.mov(rdi, 0x20_0000u64).expect("asm");
        a.mov(ecx, ITERATIONS).expect("asm");
        a.pcmpeqd(xmm0, xmm0).expect("asm");
        a.set_label(&mut top).expect("asm");
        a.movdqa(xmm1, xmmword_ptr(rdi)).expect("asm");
        a.pcmpeqb(xmm1, xmm0).expect("asm");
        a.pmovmskb(eax, xmm1).expect("asm");
        a.test(eax, eax).expect("asm");
        a.jnz(found).expect("asm");
        a.add(rdi, 16).expect("asm");
        a.and(edi, 0x20_0ff0).expect("asm");
        a.dec(ecx).expect("asm");
        a.jnz(top).expect("asm");
        a.set_label(&mut found).expect("asm");
    });
    let n = f64::from(ITERATIONS) * 9.0 / 1e6;
    println!("engine, SSE2 string scan: {n:.0}M instructions in {s:.3} s: {:.1} MIPS", n / s);
}
