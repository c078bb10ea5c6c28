//! The decoded-block fast path (`kiln_emu::block`): it computes what the instruction-by-instruction
//! interpreter computes, notices code that changed under a cached block (its own stores, or
//! writes from outside the CPU), and leaves what it does not model to the generic path.

mod common;

use common::*;
use iced_x86::code_asm::*;
use kiln_emu::sandbox::Sandbox;

const DATA: u64 = 0x20_0000;

/// The offset of `needle` in `code`.
fn find(code: &[u8], needle: &[u8]) -> u64 {
    code.windows(needle.len()).position(|w| w == needle).expect("pattern in the code") as u64
}

#[test]
fn blocks_compute_what_single_steps_compute() {
    // A checksum loop with a call, stack traffic, flags consumed across instructions (ADC,
    // SETcc, CMOVcc, Jcc after DEC), shifts, IMUL and memory operands with an index.
    let code = assemble(CODE, |a| {
        let mut top = a.create_label();
        let mut f = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ecx, 200u32)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.set_label(&mut top)?;
        a.movzx(ebx, byte_ptr(rsi + rcx))?;
        a.imul_3(ebx, ebx, 31)?;
        a.add(eax, ebx)?;
        a.adc(edx, 0)?;
        a.call(f)?;
        a.mov(qword_ptr(rsi + rcx * 8 + 0x400), rax)?;
        a.dec(ecx)?;
        a.jnz(top)?;
        a.hlt()?;
        a.set_label(&mut f)?;
        a.push(rax)?;
        a.rol(eax, 3)?;
        a.xor(eax, edx)?;
        a.cmp(eax, 0x1000_0000)?;
        a.setb(bl)?;
        a.cmovb(edx, eax)?;
        a.shr(edx, 1)?;
        a.sbb(r8, r9)?;
        a.pop(rax)?;
        a.ret()
    });
    let data: Vec<u8> = (0..=255u8).map(|b| b.wrapping_mul(73).wrapping_add(11)).collect();
    let mut blocks = Sandbox::new().expect("sandbox");
    let mut steps = Sandbox::new().expect("sandbox");
    for sb in [&mut blocks, &mut steps] {
        load(sb, CODE, &code);
        sb.poke(DATA, &data);
        sb.cpu.gpr[4] = 0x30_0000;
        sb.cpu.gpr[8] = 0x1234;
        sb.cpu.gpr[9] = 0x5678_9abc;
    }
    let n = blocks.run(1_000_000).expect("runs through blocks");
    let mut m = 0;
    while !steps.cpu.halted {
        steps.cpu.step(&steps.io).expect("steps");
        m += 1;
    }
    assert!(blocks.cpu.halted);
    assert_eq!(n, m, "instructions retired");
    assert_eq!(blocks.cpu.icount, steps.cpu.icount);
    assert_eq!(blocks.cpu.gpr, steps.cpu.gpr);
    assert_eq!(blocks.cpu.rip, steps.cpu.rip);
    assert_eq!(blocks.cpu.rflags, steps.cpu.rflags);
    let (mut a, mut b) = (vec![0u8; 0x1000], vec![0u8; 0x1000]);
    blocks.peek(DATA, &mut a);
    steps.peek(DATA, &mut b);
    assert_eq!(a, b, "data written");
}

#[test]
fn vector_and_generic_instructions_in_blocks_compute_what_single_steps_compute() {
    // Generic instructions between block operations: consumers of the lazily computed flags
    // of the operations before them (LAHF, CMC, RCL, ADC after them), SSE/SSSE3/SSE4.2 arithmetic,
    // a vector load and store, BSF and a shift by CL (the count PCMPISTRI leaves in ECX).
    let code = assemble(CODE, |a| {
        let mut top = a.create_label();
        a.mov(rsi, DATA)?;
        a.mov(ebp, 100u32)?;
        a.pxor(xmm2, xmm2)?;
        a.set_label(&mut top)?;
        a.add(eax, ebp)?;
        a.lahf()?;
        a.cmc()?;
        a.rcl(edx, 1)?;
        a.movd(xmm0, eax)?;
        a.pshufd(xmm0, xmm0, 0)?;
        a.movdqu(xmm1, xmmword_ptr(rsi + rbp))?;
        a.pshufb(xmm1, xmm0)?;
        a.paddd(xmm2, xmm1)?;
        a.pcmpeqb(xmm1, xmm2)?;
        a.pmovmskb(ebx, xmm1)?;
        a.pcmpistri(xmm2, xmmword_ptr(rsi), 0x0c)?;
        a.bsf(r8d, ebx)?;
        a.shl(r9, cl)?;
        a.or(r9, rbx)?;
        a.adc(r10, rbx)?;
        a.movdqu(xmmword_ptr(rsi + rbp * 8 + 0x400), xmm2)?;
        a.dec(ebp)?;
        a.jnz(top)?;
        a.hlt()
    });
    let data: Vec<u8> = (0..=255u8).map(|b| b.wrapping_mul(73).wrapping_add(11)).collect();
    let mut blocks = Sandbox::new().expect("sandbox");
    let mut steps = Sandbox::new().expect("sandbox");
    for sb in [&mut blocks, &mut steps] {
        load(sb, CODE, &code);
        sb.poke(DATA, &data);
        sb.cpu.gpr[4] = 0x30_0000;
        sb.cpu.gpr[9] = 0x5678_9abc;
        sb.cpu.cr4 |= kiln_emu::cpu::CR4_OSFXSR | kiln_emu::cpu::CR4_OSXMMEXCPT;
    }
    let n = blocks.run(1_000_000).expect("runs through blocks");
    let mut m = 0;
    while !steps.cpu.halted {
        steps.cpu.step(&steps.io).expect("steps");
        m += 1;
    }
    assert!(blocks.cpu.halted);
    assert_eq!(
        blocks.cpu.rip,
        CODE + code.len() as u64,
        "halted at the end, not in a handler (cr2 {:#x})",
        blocks.cpu.cr2
    );
    assert_eq!(n, m, "instructions retired");
    assert!(n > 100 * 19, "the loop ran: {n} instructions");
    assert_eq!(blocks.cpu.icount, steps.cpu.icount);
    assert_eq!(blocks.cpu.gpr, steps.cpu.gpr);
    assert_eq!(blocks.cpu.xmm, steps.cpu.xmm);
    assert_eq!(blocks.cpu.rflags, steps.cpu.rflags);
    let (mut a, mut b) = (vec![0u8; 0x1000], vec![0u8; 0x1000]);
    blocks.peek(DATA, &mut a);
    steps.peek(DATA, &mut b);
    assert_eq!(a, b, "data written");
}

#[test]
fn a_vector_store_into_the_running_block_changes_its_next_instruction() {
    // As below, with the rewriting store a generic instruction (MOVD from XMM).
    let code = |target: u64| {
        assemble(CODE, |a| {
            a.mov(rax, target)?;
            a.mov(dword_ptr(rax), 0x1111_1111u32)?;
            a.mov(edx, 0x2222_2222u32)?;
            a.movd(xmm0, edx)?;
            a.movd(dword_ptr(rax), xmm0)?;
            a.mov(ecx, 0x1111_1111u32)?;
            a.hlt()
        })
    };
    let first = code(0);
    let at = find(&first, &[0xb9, 0x11, 0x11, 0x11, 0x11]);
    let mut sb = Sandbox::new().expect("sandbox");
    sb.cpu.cr4 |= kiln_emu::cpu::CR4_OSFXSR | kiln_emu::cpu::CR4_OSXMMEXCPT;
    load(&mut sb, CODE, &code(CODE + at + 1));
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!(sb.cpu.gpr[1], 0x2222_2222, "the rewritten immediate was executed");
}

#[test]
fn a_store_into_the_running_block_changes_its_next_instruction() {
    // The first store makes the page dirty (a store to a clean page goes to the generic path,
    // which ends the block); the block after it is [store, mov ecx, hlt], whose store rewrites
    // the next instruction's immediate.
    let code = |target: u64| {
        assemble(CODE, |a| {
            a.mov(rax, target)?;
            a.mov(dword_ptr(rax), 0x1111_1111u32)?;
            a.mov(dword_ptr(rax), 0x2222_2222u32)?;
            a.mov(ecx, 0x1111_1111u32)?;
            a.hlt()
        })
    };
    let first = code(0);
    let at = find(&first, &[0xb9, 0x11, 0x11, 0x11, 0x11]);
    let mut sb = Sandbox::new().expect("sandbox");
    load(&mut sb, CODE, &code(CODE + at + 1));
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!(sb.cpu.gpr[1], 0x2222_2222, "the rewritten immediate was executed");
}

#[test]
fn code_rewritten_outside_the_cpu_is_decoded_again() {
    let code = assemble(CODE, |a| {
        a.mov(eax, 1u32)?;
        a.add(ebx, eax)?;
        a.hlt()
    });
    let mut sb = Sandbox::new().expect("sandbox");
    load(&mut sb, CODE, &code);
    // Twice: the first run fills the TLB (the first fetch is a miss), the second runs the
    // cached block.
    for _ in 0..2 {
        sb.cpu.rip = CODE;
        sb.cpu.halted = false;
        sb.run(100).expect("runs");
    }
    assert_eq!(sb.cpu.gpr[3], 2);
    // As a device or another vCPU would: new bytes behind the cached block's back.
    let imm = CODE + find(&code, &1u32.to_le_bytes());
    sb.poke(imm, &5u32.to_le_bytes());
    sb.cpu.rip = CODE;
    sb.cpu.halted = false;
    sb.run(100).expect("runs");
    assert_eq!(sb.cpu.gpr[3], 7, "the new immediate was executed");
}

#[test]
fn block_memory_operations_on_mmio_reach_the_device() {
    let mut sb = Sandbox::new().expect("sandbox");
    sb.map_interrupt_controllers();
    let code = assemble(CODE, |a| {
        a.mov(rdi, 0xfec0_0000u64)?;
        a.mov(eax, 0x17u32)?;
        a.mov(dword_ptr(rdi), eax)?;
        a.add(eax, 1)?;
        a.mov(dword_ptr(rdi + 0x10), eax)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    let writes = sb.io.mmio_writes.lock().expect("records").clone();
    assert_eq!(
        writes,
        vec![(0xfec0_0000, 0x17u32.to_le_bytes().to_vec()), (0xfec0_0010, vec![0x18, 0, 0, 0])]
    );
}

#[test]
fn a_fault_in_the_middle_of_a_block_is_precise() {
    // The load faults (not present); the instructions before it completed, the ones after it
    // did not, and the flags are those of the CMP before it.
    let mut sb = Sandbox::new().expect("sandbox");
    let target = 0x20_0000u64;
    sb.set_pte_flags(target, 0);
    let code = assemble(CODE, |a| {
        a.mov(rbx, target)?;
        a.mov(ecx, 5u32)?;
        a.cmp(ecx, 7)?;
        a.mov(rdx, qword_ptr(rbx))?;
        a.mov(ecx, 9u32)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.cpu.gpr[4] = 0x30_0000;
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(14), "#PF delivered");
    assert_eq!(sb.cpu.cr2, target);
    assert_eq!(sb.cpu.gpr[1], 5, "the MOV after the fault did not run");
    // The frame's RFLAGS has CF and SF from 5 - 7.
    let (_, rip, _, fl, _, _) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(rip, CODE + find(&code, &[0x48, 0x8b, 0x13]), "RIP of the faulting load");
    assert_eq!(fl & 0x81, 0x81, "CF and SF of the CMP");
}

#[test]
fn vector_operations_in_a_block_leave_their_faults_to_the_generic_path() {
    // An aligned vector load from a misaligned address raises #GP and CR0.TS raises #NM, at
    // the vector instruction, with the instructions before it done and those after it not;
    // the unaligned form of the same load completes.
    let code = |aligned: bool| {
        assemble(CODE, |a| {
            a.mov(rbx, DATA + 8)?;
            // A generic load first (the TLB miss), so the block after it finds DATA mapped.
            a.mov(rax, qword_ptr(rbx))?;
            a.mov(ecx, 5u32)?;
            if aligned {
                a.movdqa(xmm1, xmmword_ptr(rbx))?;
            } else {
                a.movdqu(xmm1, xmmword_ptr(rbx))?;
            }
            a.pcmpeqb(xmm1, xmm0)?;
            a.pmovmskb(edx, xmm1)?;
            a.mov(ecx, 9u32)?;
            a.hlt()
        })
    };
    for (aligned, ts, vector) in
        [(true, false, Some(13)), (false, true, Some(7)), (false, false, None)]
    {
        let mut sb = Sandbox::new().expect("sandbox");
        sb.cpu.cr4 |= kiln_emu::cpu::CR4_OSFXSR | kiln_emu::cpu::CR4_OSXMMEXCPT;
        if ts {
            sb.cpu.cr0 |= kiln_emu::cpu::CR0_TS;
        }
        sb.poke(DATA, &[0x5a; 32]);
        sb.cpu.xmm[0] = 0x5a5a_0000_5a5a_0000_5a5a_0000_5a5a_5a5a;
        let code = code(aligned);
        load(&mut sb, CODE, &code);
        sb.cpu.gpr[4] = 0x30_0000;
        sb.run(100).expect("runs");
        let case = format!("aligned {aligned}, CR0.TS {ts}");
        match vector {
            Some(v) => {
                assert_eq!(sb.halted_vector(), Some(v), "{case}: the exception delivered");
                assert_eq!(sb.cpu.gpr[1], 5, "{case}: the MOV after the fault did not run");
                // #GP pushes an error code, #NM none.
                let (_, rip, _, _, _, _) = frame(&sb, sb.cpu.gpr[4], v == 13);
                let load =
                    if aligned { [0x66, 0x0f, 0x6f, 0x0b] } else { [0xf3, 0x0f, 0x6f, 0x0b] };
                assert_eq!(rip, CODE + find(&code, &load), "{case}: RIP of the vector load");
            }
            None => {
                assert!(sb.cpu.halted, "{case}");
                assert_eq!(sb.cpu.gpr[1], 9, "{case}");
                assert_eq!(sb.cpu.gpr[2], 0b1100_1100_1100_1111, "{case}: PMOVMSKB of the compare");
            }
        }
    }
}
