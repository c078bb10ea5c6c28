//! Focused tests of exceptions, interrupt delivery, privilege changes, mode switches and
//! system instructions, run in the sandbox machine (`kiln_emu::sandbox`).

mod common;

use common::*;
use iced_x86::code_asm::*;
use kiln_emu::fault::StepError;
use kiln_emu::sandbox::{self as sb, Sandbox};

#[test]
fn a_loop_computes_fibonacci() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.mov(rax, 0u64)?;
        a.mov(rbx, 1u64)?;
        a.mov(ecx, 50u32)?;
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.lea(rdx, qword_ptr(rax + rbx))?;
        a.mov(rax, rbx)?;
        a.mov(rbx, rdx)?;
        a.loop_(top)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(10_000).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!(sb.cpu.gpr[0], 12_586_269_025); // fib(50)
}

#[test]
fn divide_by_zero_is_delivered_to_vector_0_on_the_same_stack() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.xor(ecx, ecx)?;
        a.mov(eax, 7u32)?;
        a.div(ecx)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.cpu.gpr[4] = 0x6_0008; // misaligned on purpose: delivery aligns to 16
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(0));
    assert_eq!(sb.cpu.gpr[4], 0x6_0000 - 40);
    let (_, f_rip, f_cs, _, f_rsp, _) = frame(&sb, sb.cpu.gpr[4], false);
    assert_eq!(f_rip, CODE + 7, "RIP of the DIV");
    assert_eq!(f_cs, u64::from(sb::KERNEL_CS));
    assert_eq!(f_rsp, 0x6_0008);
    assert_eq!(sb.cpu.gpr[0], 7, "DIV left RAX alone");
}

#[test]
fn ist_gate_switches_to_the_ist_stack() {
    let mut sb = Sandbox::new().expect("sandbox");
    sb.set_gate(6, sb::STUBS + 6 * 16, 0xe, 0, 1);
    let code = assemble(CODE, |a| a.ud2());
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(6));
    assert_eq!(sb.cpu.gpr[4], sb::IST1_TOP - 40);
    let (_, f_rip, ..) = frame(&sb, sb.cpu.gpr[4], false);
    assert_eq!(f_rip, CODE);
}

#[test]
fn exceptions_with_an_unusable_idt_end_in_a_triple_fault() {
    let mut sb = Sandbox::new().expect("sandbox");
    sb.cpu.idtr.limit = 0;
    let code = assemble(CODE, |a| a.ud2());
    load(&mut sb, CODE, &code);
    assert_eq!(sb.run(100), Err(StepError::TripleFault));
}

#[test]
fn page_fault_during_page_fault_delivery_becomes_double_fault() {
    let mut sb = Sandbox::new().expect("sandbox");
    sb.set_gate(8, sb::STUBS + 8 * 16, 0xe, 0, 1); // #DF on IST1 as Linux does
    let code = assemble(CODE, |a| {
        a.mov(rax, 0x20_4000u64)?;
        a.mov(rcx, qword_ptr(rax))?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.set_pte_flags(0x20_4000, 0);
    // The kernel stack is not mapped either: pushing the #PF frame faults.
    sb.cpu.gpr[4] = 0x20_5000;
    sb.set_pte_flags(0x20_4ff8, 0);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(8));
    let (err, f_rip, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(0));
    assert_eq!(f_rip, CODE + 10);
}

#[test]
fn syscall_enters_the_kernel_and_sysret_returns_to_user() {
    let mut sb = Sandbox::new().expect("sandbox");
    let kentry = 0x11_0000u64;
    let kcode = assemble(kentry, |a| {
        a.mov(rbx, 42u64)?;
        a.mov(r12, rsp)?;
        a.sysretq()
    });
    sb.poke(kentry, &kcode);
    let ucode = assemble(CODE, |a| {
        a.syscall()?;
        a.hlt() // privileged at CPL3: #GP
    });
    load(&mut sb, CODE, &ucode);
    sb.cpu.msr.star = (u64::from(sb::USER32_CS - 3) << 48) | (u64::from(sb::KERNEL_CS) << 32);
    sb.cpu.msr.lstar = kentry;
    sb.cpu.msr.sfmask = 0x200;
    sb.enter_user();
    sb.cpu.gpr[4] = 0x30_0000;
    sb.cpu.rflags |= 0x200;
    sb.run(100).expect("runs");
    assert_eq!(sb.cpu.gpr[3], 42, "kernel entry ran");
    assert_eq!(sb.cpu.gpr[12], 0x30_0000, "syscall keeps RSP");
    assert_eq!(sb.halted_vector(), Some(13));
    let (err, f_rip, f_cs, f_fl, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(0));
    assert_eq!(f_rip, CODE + 2, "the user HLT after SYSCALL");
    assert_eq!(f_cs, u64::from(sb::USER_CS));
    assert_ne!(f_fl & 0x200, 0, "SYSRET restored IF from R11");
}

#[test]
fn int_from_user_checks_gate_dpl_and_iretq_returns() {
    let mut sb = Sandbox::new().expect("sandbox");
    // Gate 0x80 is DPL0: INT 0x80 from CPL3 raises #GP((0x80 << 3) | 2).
    let ucode = assemble(CODE, |a| a.int(0x80));
    load(&mut sb, CODE, &ucode);
    sb.enter_user();
    sb.cpu.gpr[4] = 0x30_0000;
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(13));
    let (err, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(0x402));

    // Gate 0x80 with DPL3 to a handler that returns with IRETQ.
    let mut sb = Sandbox::new().expect("sandbox");
    let handler = 0x11_0000u64;
    let h = assemble(handler, |a| {
        a.mov(rbx, qword_ptr(rsp + 8))?; // the pushed CS
        a.iretq()
    });
    sb.poke(handler, &h);
    sb.set_gate(0x80, handler, 0xe, 3, 0);
    let ucode = assemble(CODE, |a| {
        a.int(0x80)?;
        a.mov(rcx, rsp)?;
        a.hlt()
    });
    load(&mut sb, CODE, &ucode);
    sb.enter_user();
    sb.cpu.gpr[4] = 0x30_0000;
    sb.run(100).expect("runs");
    assert_eq!(sb.cpu.gpr[3], u64::from(sb::USER_CS));
    assert_eq!(sb.cpu.gpr[1], 0x30_0000, "IRETQ restored the user stack");
    assert_eq!(sb.halted_vector(), Some(13), "back at CPL3, HLT faults");
}

#[test]
fn port_output_reaches_the_io_handler_and_user_port_io_faults() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.mov(al, 0x41)?;
        a.mov(dx, 0x3f8)?;
        a.out(dx, al)?;
        a.in_(eax, dx)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.cpu.gpr[0] = 0x1234_5678_0000_0000;
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    let w = sb.io.pio_writes.lock().expect("lock").clone();
    assert_eq!(w, vec![(0x3f8, vec![0x41])]);
    assert_eq!(sb.cpu.gpr[0], 0xffff_ffff, "IN EAX zero-extends");

    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| a.out(0x80, al));
    load(&mut sb, CODE, &code);
    sb.enter_user();
    sb.cpu.gpr[4] = 0x30_0000;
    sb.run(10).expect("runs");
    assert_eq!(sb.halted_vector(), Some(13));
}

/// User port I/O through the TSS I/O permission bitmap, as Linux's `ioperm` sets it up: clear
/// bits allow, set bits deny, and a bitmap byte pair that reaches past the TSS limit denies.
#[test]
fn user_port_io_is_allowed_by_the_tss_io_bitmap() {
    let bitmap = sb::TSS + 0x68;
    let run = |code: Vec<u8>| {
        let mut sb = Sandbox::new().expect("sandbox");
        // Bitmap bytes for ports 0..0x448 (0x89 bytes), the TSS limit just covering them.
        sb.poke(bitmap, &[0xff; 0x89]);
        sb.poke(bitmap + 0x88, &[0xfe]); // port 0x440 allowed, 0x441..0x447 denied
        sb.poke(bitmap + 0x89, &[0x00]); // the byte past the limit: never consulted
        sb.cpu.tr.limit = 0x68 + 0x89;
        load(&mut sb, CODE, &code);
        sb.enter_user();
        sb.cpu.gpr[4] = 0x30_0000;
        sb.run(20).expect("runs");
        let writes = sb.io.pio_writes.lock().expect("lock").clone();
        (writes, sb.halted_vector())
    };
    let allowed = assemble(CODE, |a| {
        a.mov(dx, 0x440u32)?;
        a.mov(al, 123u32)?;
        a.out(dx, al)?;
        a.out(0x80, al) // bit set: #GP(0)
    });
    let (writes, vector) = run(allowed);
    assert_eq!(writes, vec![(0x440, vec![123])], "the allowed port was written");
    assert_eq!(vector, Some(13), "the denied port faults");

    // A word access needs every port's bit clear: 0x440 is allowed, 0x441 is not.
    let (writes, vector) = run(assemble(CODE, |a| {
        a.mov(dx, 0x440u32)?;
        a.out(dx, ax)
    }));
    assert!(writes.is_empty());
    assert_eq!(vector, Some(13));

    // Port 0x448's byte is zero but lies past the limit.
    let (writes, vector) = run(assemble(CODE, |a| {
        a.mov(dx, 0x448u32)?;
        a.out(dx, al)
    }));
    assert!(writes.is_empty());
    assert_eq!(vector, Some(13));

    // OUTSB checks the bitmap like OUT.
    let (writes, vector) = run(assemble(CODE, |a| {
        a.mov(dx, 0x441u32)?;
        a.mov(rsi, 0x20_0000u64)?;
        a.outsb()
    }));
    assert!(writes.is_empty());
    assert_eq!(vector, Some(13));
}

#[test]
fn invalid_opcode_raises_ud_in_the_guest() {
    let mut sb = Sandbox::new().expect("sandbox");
    // 0x0f 0xff is UD0 without ModRM in some decoders; 0x06 (PUSH ES) is invalid in 64-bit mode.
    load(&mut sb, CODE, &[0x06]);
    sb.run(10).expect("runs");
    assert_eq!(sb.halted_vector(), Some(6));
}

#[test]
fn cpuid_advertises_long_mode_the_x86_64_baseline_and_v2() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.mov(eax, 0x8000_0001u32)?;
        a.cpuid()?;
        a.mov(r8d, edx)?;
        a.mov(r9d, ecx)?;
        a.mov(eax, 1u32)?;
        a.cpuid()?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_ne!(sb.cpu.gpr[8] & (1 << 29), 0, "LM");
    assert_ne!(sb.cpu.gpr[8] & (1 << 11), 0, "SYSCALL");
    assert_ne!(sb.cpu.gpr[2] & (1 << 26), 0, "SSE2");
    assert_ne!(sb.cpu.gpr[2] & (1 << 24), 0, "FXSR");
    assert_ne!(sb.cpu.gpr[2] & 1, 0, "FPU");
    assert_ne!(sb.cpu.gpr[2] & (1 << 23), 0, "MMX");
    // x86-64-v2: SSE3, SSSE3, CX16, SSE4.1, SSE4.2, POPCNT (ECX), LAHF-LM (0x80000001 ECX).
    for (bit, name) in
        [(0, "SSE3"), (9, "SSSE3"), (13, "CX16"), (19, "SSE4.1"), (20, "SSE4.2"), (23, "POPCNT")]
    {
        assert_ne!(sb.cpu.gpr[1] & (1 << bit), 0, "{name}");
    }
    assert_ne!(sb.cpu.gpr[9] & 1, 0, "LAHF-LM");
}

#[test]
fn lock_prefix_on_a_register_destination_is_undefined() {
    let mut sb = Sandbox::new().expect("sandbox");
    load(&mut sb, CODE, &[0xf0, 0x01, 0xc0]); // lock add eax, eax
    sb.run(10).expect("runs");
    assert_eq!(sb.halted_vector(), Some(6));
}

#[test]
fn privileged_instructions_fault_at_cpl3() {
    for code in [
        &[0x0f, 0x22, 0xd8][..], // mov cr3, rax
        &[0x0f, 0x30],           // wrmsr
        &[0x0f, 0x32],           // rdmsr
        &[0xfa],                 // cli
        &[0x0f, 0x01, 0xf8],     // swapgs
        &[0x0f, 0x07],           // sysret
        &[0x0f, 0x01, 0x38],     // invlpg [rax]
    ] {
        let mut sb = Sandbox::new().expect("sandbox");
        load(&mut sb, CODE, code);
        sb.enter_user();
        sb.cpu.gpr[4] = 0x30_0000;
        sb.run(10).expect("runs");
        assert_eq!(sb.halted_vector(), Some(13), "{code:02x?}");
        let (err, f_rip, ..) = frame(&sb, sb.cpu.gpr[4], true);
        assert_eq!((err, f_rip), (Some(0), CODE), "{code:02x?}");
    }
}

#[test]
fn msrs_round_trip_and_unknown_msrs_fault() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.mov(ecx, 0xc000_0102u32)?; // KERNEL_GS_BASE
        a.mov(eax, 0x89ab_cdefu32)?;
        a.mov(edx, 0xffff_8000u32)?;
        a.wrmsr()?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.swapgs()?;
        a.mov(ecx, 0xc000_0101u32)?; // GS_BASE now holds it
        a.rdmsr()?;
        a.mov(r8, rdx)?;
        a.mov(r9, rax)?;
        a.mov(ecx, 0x8bu32)?; // BIOS_SIGN_ID: Linux writes 0, then reads the revision
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.mov(eax, 1u32)?;
        a.rdmsr()?;
        a.mov(r10, rax)?;
        a.mov(ecx, 0x1234u32)?;
        a.rdmsr()?; // #GP(0)
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!((sb.cpu.gpr[8], sb.cpu.gpr[9]), (0xffff_8000, 0x89ab_cdef));
    assert_eq!(sb.cpu.gpr[10], 0, "microcode revision 0");
    assert_eq!(sb.cpu.seg[kiln_emu::cpu::GS].base, 0xffff_8000_89ab_cdef);
    assert_eq!(sb.halted_vector(), Some(13));
}

#[test]
fn trap_flag_raises_a_debug_trap_after_the_next_instruction() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.pushfq()?;
        a.or(qword_ptr(rsp), 0x100)?;
        a.popfq()?; // TF takes effect after this instruction
        a.mov(eax, 1u32)?; // trapped after this one
        a.mov(eax, 2u32)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(1));
    assert_eq!(sb.cpu.gpr[0], 1);
    let (_, f_rip, _, f_fl, ..) = frame(&sb, sb.cpu.gpr[4], false);
    assert_eq!(f_rip, CODE + 1 + 8 + 1 + 5, "RIP after the trapped MOV");
    assert_ne!(f_fl & 0x100, 0, "the pushed RFLAGS still has TF");
    assert_ne!(sb.cpu.dr[6] & (1 << 14), 0, "DR6.BS");
}

#[test]
fn a_fault_pushes_rf_which_lasts_one_instruction_after_iret() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.ud2()?; // #UD: its handler below skips it and returns with IRETQ
        a.nop()?; // runs with RF set, which is cleared once it completes
        a.int3()?; // a trap: its frame has no RF
        a.hlt()?;
        // The #UD handler, at CODE + 5.
        a.add(qword_ptr(rsp), 2)?;
        a.iretq()
    });
    load(&mut sb, CODE, &code);
    sb.set_gate(6, CODE + 5, 0xe, 0, 0);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(3));
    let (_, f_rip, _, f_fl, ..) = frame(&sb, sb.cpu.gpr[4], false);
    assert_eq!(f_rip, CODE + 4, "after the INT3");
    assert_eq!(f_fl & (1 << 16), 0, "no RF in the trap's frame: {f_fl:#x}");
    assert_eq!(sb.cpu.rflags & (1 << 16), 0, "RF is clear");
}

#[test]
fn a_fault_frame_has_rf_set() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| a.ud2());
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(6));
    let (_, _, _, f_fl, ..) = frame(&sb, sb.cpu.gpr[4], false);
    assert_ne!(f_fl & (1 << 16), 0, "RF in the #UD frame: {f_fl:#x}");
}

#[test]
fn code_the_guest_rewrites_is_decoded_again() {
    let mut sb = Sandbox::new().expect("sandbox");
    // top: mov eax, imm32 (5 bytes at CODE + 5); then patch the immediate and loop once more.
    let code = assemble(CODE, |a| {
        a.mov(ecx, 2u32)?; // 5 bytes
        let mut top = a.create_label();
        a.set_label(&mut top)?;
        a.mov(eax, 1u32)?; // at CODE + 5, immediate at CODE + 6
        a.mov(byte_ptr(CODE + 6), 7u32)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!(sb.cpu.gpr[0], 7, "the second pass ran the patched instruction");
}

#[test]
fn lretq_reloads_cs_as_the_kernel_does_after_lgdt() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        let mut next = a.create_label();
        a.mov(rax, u64::from(sb::KERNEL_CS))?;
        a.push(rax)?;
        a.lea(rax, ptr(next))?;
        a.push(rax)?;
        a.db(&[0x48, 0xcb])?; // lretq
        a.set_label(&mut next)?;
        a.mov(rbx, 5u64)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.cpu.seg[kiln_emu::cpu::CS].selector = 0x08;
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!(sb.cpu.gpr[3], 5);
    assert_eq!(sb.cpu.gpr[4], sb::RSP0_TOP, "both words popped");
    assert_eq!(sb.cpu.seg[kiln_emu::cpu::CS].selector, sb::KERNEL_CS);
}

#[test]
fn real_mode_trampoline_reaches_long_mode_through_protected_mode() {
    // The path an application processor's start-up code takes: real mode -> 32-bit protected
    // mode (far jump) -> PAE, EFER.LME, CR0.PG -> 64-bit code (far jump).
    let mut sb = Sandbox::new().expect("sandbox");
    sb.poke_u64(sb::GDT + 0x18, 0x00cf_9a00_0000_ffff); // 32-bit flat code
    sb.poke(0x7f00, &[0x47, 0x00, 0x00, 0x80, 0x00, 0x00]); // GDT limit 0x47, base 0x8000
    let real: &[u8] = &[
        0x0f, 0x01, 0x16, 0x00, 0x0f, // lgdt [0x0f00]
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0x66, 0x83, 0xc8, 0x01, // or eax, 1
        0x0f, 0x22, 0xc0, // mov cr0, eax
        0x66, 0xea, 0x00, 0x71, 0x00, 0x00, 0x18, 0x00, // jmp dword 0x18:0x7100
    ];
    let prot: &[u8] = &[
        0x66, 0xb8, 0x10, 0x00, // mov ax, 0x10
        0x8e, 0xd8, // mov ds, ax
        0x8e, 0xd0, // mov ss, ax
        0x0f, 0x20, 0xe0, // mov eax, cr4
        0x83, 0xc8, 0x20, // or eax, PAE
        0x0f, 0x22, 0xe0, // mov cr4, eax
        0xb8, 0x00, 0x10, 0x00, 0x00, // mov eax, PML4
        0x0f, 0x22, 0xd8, // mov cr3, eax
        0xb9, 0x80, 0x00, 0x00, 0xc0, // mov ecx, EFER
        0x0f, 0x32, // rdmsr
        0x0d, 0x00, 0x01, 0x00, 0x00, // or eax, LME
        0x0f, 0x30, // wrmsr
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0x0d, 0x00, 0x00, 0x00, 0x80, // or eax, PG
        0x0f, 0x22, 0xc0, // mov cr0, eax
        0xea, 0x00, 0x72, 0x00, 0x00, 0x08, 0x00, // jmp 0x08:0x7200
    ];
    let long: &[u8] = &[0x48, 0xc7, 0xc3, 0x64, 0x00, 0x00, 0x00, 0xf4]; // mov rbx, 0x64; hlt
    sb.poke(0x7000, real);
    sb.poke(0x7100, prot);
    sb.poke(0x7200, long);
    // Reset-like real-mode state at 0x0700:0000.
    let cpu = &mut sb.cpu;
    for s in cpu.seg.iter_mut() {
        *s = kiln_engine::Segment {
            selector: 0x0700,
            base: 0x7000,
            limit: 0xffff,
            type_: 3,
            present: true,
            s: true,
            ..Default::default()
        };
    }
    cpu.seg[kiln_emu::cpu::CS].type_ = 0xb;
    cpu.cr0 = kiln_emu::cpu::CR0_ET;
    cpu.cr4 = 0;
    cpu.efer = 0;
    cpu.rip = 0;
    cpu.gpr[4] = 0x0ff0;
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted, "reached the HLT at rip {:#x}", sb.cpu.rip);
    assert_eq!(sb.cpu.gpr[3], 0x64);
    assert!(sb.cpu.code64());
    assert_eq!(sb.cpu.seg[kiln_emu::cpu::CS].selector, sb::KERNEL_CS);
    assert_ne!(sb.cpu.efer & kiln_emu::cpu::EFER_LMA, 0);
}

#[test]
fn control_register_writes_check_their_rules() {
    // Each snippet must raise #GP(0) at CPL0.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "CR4 reserved bit (SMEP is not implemented)",
            assemble(CODE, |a| {
                a.mov(rax, cr4)?;
                a.or(rax, 1 << 20)?;
                a.mov(cr4, rax)
            }),
        ),
        (
            "CR4.PAE cleared in long mode",
            assemble(CODE, |a| {
                a.mov(rax, cr4)?;
                a.and(rax, !0x20i32)?;
                a.mov(cr4, rax)
            }),
        ),
        (
            "CR0.PG cleared while executing 64-bit code",
            assemble(CODE, |a| {
                a.mov(rax, cr0)?;
                a.btr(rax, 31)?;
                a.mov(cr0, rax)
            }),
        ),
        (
            "CR0 upper half",
            assemble(CODE, |a| {
                a.mov(rax, cr0)?;
                a.bts(rax, 40)?;
                a.mov(cr0, rax)
            }),
        ),
        (
            "EFER.LME changed with paging on",
            assemble(CODE, |a| {
                a.mov(ecx, 0xc000_0080u32)?;
                a.rdmsr()?;
                a.btr(eax, 8)?;
                a.wrmsr()
            }),
        ),
        (
            "non-canonical LSTAR",
            assemble(CODE, |a| {
                a.mov(ecx, 0xc000_0082u32)?;
                a.xor(eax, eax)?;
                a.mov(edx, 0x8000u32)?;
                a.wrmsr()
            }),
        ),
        (
            "CR8 reserved bits",
            assemble(CODE, |a| {
                a.mov(eax, 0x10u32)?;
                a.mov(cr8, rax)
            }),
        ),
    ];
    for (what, code) in cases {
        let mut sb = Sandbox::new().expect("sandbox");
        let old_cr0 = sb.cpu.cr0;
        let old_cr4 = sb.cpu.cr4;
        load(&mut sb, CODE, &code);
        sb.run(20).expect("runs");
        assert_eq!(sb.halted_vector(), Some(13), "{what}");
        let (err, ..) = frame(&sb, sb.cpu.gpr[4], true);
        assert_eq!(err, Some(0), "{what}");
        assert_eq!((sb.cpu.cr0, sb.cpu.cr4), (old_cr0, old_cr4), "{what}: nothing changed");
    }
}

#[test]
fn descriptor_table_instructions_round_trip_and_ltr_marks_the_tss_busy() {
    let mut sb = Sandbox::new().expect("sandbox");
    // Make the TSS descriptor available again so LTR may load it.
    let lo = sb.peek_u64(sb::GDT + 0x38);
    sb.poke_u64(sb::GDT + 0x38, lo & !(2 << 40));
    let code = assemble(CODE, |a| {
        a.sgdt(ptr(0x20_0000u64))?;
        a.sidt(ptr(0x20_0010u64))?;
        a.mov(ax, u32::from(sb::TSS_SEL))?;
        a.ltr(ax)?;
        a.str(ebx)?;
        a.ltr(ax)?; // busy now: #GP(0x38)
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.peek_u64(0x20_0000) & 0xffff, 0x47);
    assert_eq!(sb.peek_u64(0x20_0002), sb::GDT);
    assert_eq!(sb.peek_u64(0x20_0012), sb::IDT);
    assert_eq!(sb.cpu.gpr[3], u64::from(sb::TSS_SEL));
    assert_ne!(sb.peek_u64(sb::GDT + 0x38) & (2 << 40), 0, "descriptor marked busy");
    assert_eq!(sb.halted_vector(), Some(13));
    let (err, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(u64::from(sb::TSS_SEL)));
}

#[test]
fn sysret_to_compatibility_mode_runs_32_bit_code() {
    let mut sb = Sandbox::new().expect("sandbox");
    // 32-bit user code at 0x120000: inc eax (0x40 is INC in 32-bit code), push eax, hlt.
    sb.poke(0x12_0000, &[0x40, 0x50, 0xf4]);
    let code = assemble(CODE, |a| {
        a.mov(ecx, 0x12_0000u32)?;
        a.mov(r11d, 0x2u32)?;
        a.mov(eax, 41u32)?;
        a.mov(esp, 0x30_0000u32)?;
        a.sysret() // 32-bit SYSRET: CS = STAR[63:48] | 3
    });
    load(&mut sb, CODE, &code);
    sb.cpu.msr.star = (u64::from(sb::USER32_CS - 3) << 48) | (u64::from(sb::KERNEL_CS) << 32);
    sb.run(100).expect("runs");
    // HLT at CPL3 faults into the 64-bit kernel.
    assert_eq!(sb.halted_vector(), Some(13));
    let (_, f_rip, f_cs, _, f_rsp, _) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(f_cs, u64::from(sb::USER32_CS));
    assert_eq!(f_rip, 0x12_0002);
    assert_eq!(f_rsp, 0x30_0000 - 4, "32-bit push");
    assert_eq!(sb.peek_u64(0x30_0000 - 4) & 0xffff_ffff, 42);
}

#[test]
fn iretq_to_the_same_privilege_serializes_like_sync_core() {
    // Linux's sync_core(): push SS, RSP, RFLAGS, CS, RIP and IRETQ to the next instruction.
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        let mut after = a.create_label();
        a.mov(eax, u32::from(sb::KERNEL_DS))?;
        a.push(rax)?;
        a.lea(rax, qword_ptr(rsp + 8))?;
        a.push(rax)?;
        a.pushfq()?;
        a.or(qword_ptr(rsp), 0x1)?; // set CF in the restored flags
        a.mov(eax, u32::from(sb::KERNEL_CS))?;
        a.push(rax)?;
        a.lea(rax, ptr(after))?;
        a.push(rax)?;
        a.iretq()?;
        a.set_label(&mut after)?;
        a.setc(bl)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted, "reached the HLT after IRETQ");
    assert_eq!(sb.cpu.gpr[3] & 0xff, 1, "RFLAGS came from the frame");
    assert_eq!(sb.cpu.gpr[4], sb::RSP0_TOP, "the whole frame was popped");
    assert_eq!(sb.cpu.seg[kiln_emu::cpu::SS].selector, sb::KERNEL_DS);
}

#[test]
fn cpuid_reports_the_tsc_frequency_so_linux_need_not_calibrate() {
    let mut sb = Sandbox::new().expect("sandbox");
    let code = assemble(CODE, |a| {
        a.xor(eax, eax)?;
        a.cpuid()?;
        a.mov(r8d, eax)?; // max basic leaf
        a.mov(eax, 0x15u32)?;
        a.cpuid()?;
        a.mov(r9d, eax)?;
        a.mov(r10d, ebx)?;
        a.mov(r11d, ecx)?;
        a.mov(eax, 0x16u32)?;
        a.cpuid()?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.gpr[8] >= 0x16);
    let (den, num, crystal) = (sb.cpu.gpr[9], sb.cpu.gpr[10], sb.cpu.gpr[11]);
    assert_eq!(crystal * num / den, kiln_emu::cpu::TSC_HZ);
    assert_eq!(sb.cpu.gpr[0], kiln_emu::cpu::TSC_HZ / 1_000_000, "base MHz");
}
