//! Focused tests of paging: fault error codes and CR2, accessed/dirty bits, permission bits,
//! large and global pages, TLB flushes, run in the sandbox machine (`kiln_emu::sandbox`).

mod common;

use common::*;
use iced_x86::code_asm::*;
use kiln_emu::sandbox::{self as sb, Sandbox};

#[test]
fn user_write_to_read_only_page_faults_with_protection_code_and_cr2() {
    let mut sb = Sandbox::new().expect("sandbox");
    let target = 0x20_0000u64;
    sb.set_pte_flags(target, 0x5); // present, user, read-only
    let code = assemble(CODE, |a| {
        a.mov(rax, target)?;
        a.mov(rcx, qword_ptr(rax))?; // reads are fine
        a.mov(qword_ptr(rax), rcx)?; // the write faults
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.enter_user();
    sb.cpu.gpr[4] = 0x30_0000;
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(14));
    assert_eq!(sb.cpu.cr2, target);
    assert_eq!(sb.cpu.cpl(), 0);
    // Privilege change: the frame is on the TSS RSP0 stack and holds the user context.
    let top = sb::RSP0_TOP - 48;
    assert_eq!(sb.cpu.gpr[4], top);
    let (err, f_rip, f_cs, _fl, ursp, f_ss) = frame(&sb, top, true);
    assert_eq!(err, Some(0x7), "P|W|U");
    assert_eq!(f_rip, CODE + 10 + 3, "RIP of the faulting store");
    assert_eq!(f_cs, u64::from(sb::USER_CS));
    assert_eq!(ursp, 0x30_0000);
    assert_eq!(f_ss, u64::from(sb::USER_DS));
}

#[test]
fn kernel_read_of_not_present_page_faults_with_code_zero() {
    let mut sb = Sandbox::new().expect("sandbox");
    let target = 0x20_1008u64;
    sb.set_pte_flags(target, 0);
    let code = assemble(CODE, |a| {
        a.mov(rax, target)?;
        a.mov(rcx, qword_ptr(rax))?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(14));
    assert_eq!(sb.cpu.cr2, target);
    let (err, f_rip, f_cs, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(0));
    assert_eq!(f_rip, CODE + 10);
    assert_eq!(f_cs, u64::from(sb::KERNEL_CS));
}

#[test]
fn fetch_from_no_execute_page_faults_with_instruction_bit() {
    let mut sb = Sandbox::new().expect("sandbox");
    let target = 0x20_2000u64;
    sb.poke(target, &[0x90, 0xf4]);
    sb.set_pte_flags(target, 0x7 | (1 << 63));
    let code = assemble(CODE, |a| {
        a.mov(rax, target)?;
        a.jmp(rax)
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(14));
    assert_eq!(sb.cpu.cr2, target);
    let (err, f_rip, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(0x11), "P|I");
    assert_eq!(f_rip, target);
}

#[test]
fn reserved_bit_in_a_page_table_entry_faults_with_rsvd() {
    let mut sb = Sandbox::new().expect("sandbox");
    let target = 0x20_3000u64;
    sb.poke_u64(Sandbox::pte_addr(target), target | 7 | (1 << 45));
    let code = assemble(CODE, |a| {
        a.mov(rax, target)?;
        a.mov(qword_ptr(rax), rax)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.halted_vector(), Some(14));
    let (err, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(0xb), "P|W|RSVD");
}

#[test]
fn accessed_and_dirty_bits_are_set_by_reads_and_writes() {
    let mut sb = Sandbox::new().expect("sandbox");
    let (r, w) = (0x20_6000u64, 0x20_7000u64);
    sb.set_pte_flags(r, 7);
    sb.set_pte_flags(w, 7);
    let code = assemble(CODE, |a| {
        a.mov(rax, r)?;
        a.mov(rcx, qword_ptr(rax))?;
        a.mov(rax, w)?;
        a.mov(qword_ptr(rax), rcx)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    let pr = sb.peek_u64(Sandbox::pte_addr(r));
    let pw = sb.peek_u64(Sandbox::pte_addr(w));
    assert_eq!(pr & 0x60, 0x20, "read: accessed, not dirty");
    assert_eq!(pw & 0x60, 0x60, "write: accessed and dirty");
    assert_ne!(sb.peek_u64(sb::PML4) & 0x20, 0, "upper levels accessed");
}

#[test]
fn invlpg_drops_a_stale_translation_and_cr3_reload_flushes() {
    let mut sb = Sandbox::new().expect("sandbox");
    let va = 0x20_8000u64;
    sb.poke_u64(0x20_8000, 111);
    sb.poke_u64(0x20_9000, 222);
    let code = assemble(CODE, |a| {
        a.mov(rax, va)?;
        a.mov(rbx, qword_ptr(rax))?; // 111, now cached
        a.mov(rdx, Sandbox::pte_addr(va))?;
        a.mov(rcx, 0x20_9007u64)?;
        a.mov(qword_ptr(rdx), rcx)?; // remap va -> 0x209000
        a.mov(rsi, qword_ptr(rax))?; // still 111: stale TLB entry
        a.invlpg(qword_ptr(rax))?;
        a.mov(rdi, qword_ptr(rax))?; // 222
        a.mov(rcx, 0x20_8007u64)?;
        a.mov(qword_ptr(rdx), rcx)?; // map back
        a.mov(rcx, cr3)?;
        a.mov(cr3, rcx)?;
        a.mov(r8, qword_ptr(rax))?; // 111 again
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!(sb.cpu.gpr[3], 111);
    assert_eq!(sb.cpu.gpr[6], 111);
    assert_eq!(sb.cpu.gpr[7], 222);
    assert_eq!(sb.cpu.gpr[8], 111);
}

#[test]
fn instruction_spanning_into_an_unmapped_page_faults_on_the_second_page() {
    let mut sb = Sandbox::new().expect("sandbox");
    let at = 0x20_afffu64; // the last byte of a page
    sb.poke(at, &[0x48]); // REX.W; the rest would be on the next page
    sb.set_pte_flags(0x20_b000, 0);
    sb.cpu.rip = at;
    sb.run(10).expect("runs");
    assert_eq!(sb.halted_vector(), Some(14));
    assert_eq!(sb.cpu.cr2, 0x20_b000);
}

#[test]
fn a_2mib_page_translates_and_gets_its_dirty_bit() {
    let mut sb = Sandbox::new().expect("sandbox");
    // PD[1] (linear 2..4 MiB) becomes one 2 MiB page at guest-physical 4 MiB.
    let pde = 0x3000 + 8;
    sb.poke_u64(pde, 0x40_0000 | 0x80 | 7);
    let code = assemble(CODE, |a| {
        a.mov(rax, 0x21_2340u64)?;
        a.mov(qword_ptr(rax), rax)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!(sb.peek_u64(0x41_2340), 0x21_2340);
    assert_eq!(sb.peek_u64(pde) & 0x60, 0x60, "large page accessed and dirty");
}

#[test]
fn global_pages_survive_a_cr3_reload_but_not_invlpg() {
    let mut sb = Sandbox::new().expect("sandbox");
    let va = 0x20_c000u64;
    sb.poke_u64(0x20_c000, 1);
    sb.poke_u64(0x20_d000, 2);
    sb.set_pte_flags(va, 0x107); // global
    let code = assemble(CODE, |a| {
        a.mov(rax, va)?;
        a.mov(rbx, qword_ptr(rax))?; // 1, cached as global
        a.mov(rdx, Sandbox::pte_addr(va))?;
        a.mov(rcx, 0x20_d107u64)?;
        a.mov(qword_ptr(rdx), rcx)?;
        a.mov(rcx, cr3)?;
        a.mov(cr3, rcx)?;
        a.mov(rsi, qword_ptr(rax))?; // still 1: global entries survive CR3 loads
        a.invlpg(qword_ptr(rax))?;
        a.mov(rdi, qword_ptr(rax))?; // 2
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert!(sb.cpu.halted);
    assert_eq!((sb.cpu.gpr[3], sb.cpu.gpr[6], sb.cpu.gpr[7]), (1, 1, 2));
}

#[test]
fn supervisor_writes_to_read_only_pages_obey_cr0_wp() {
    let mut sb = Sandbox::new().expect("sandbox");
    let target = 0x20_e000u64;
    sb.set_pte_flags(target, 0x5); // present, user, read-only
    let code = assemble(CODE, |a| {
        a.mov(rax, target)?;
        a.mov(rcx, cr0)?;
        a.btr(rcx, 16)?;
        a.mov(cr0, rcx)?; // WP off: the write succeeds
        a.mov(qword_ptr(rax), 1)?;
        a.bts(rcx, 16)?;
        a.mov(cr0, rcx)?; // WP on: the write faults
        a.mov(qword_ptr(rax), 2)?;
        a.hlt()
    });
    load(&mut sb, CODE, &code);
    sb.run(100).expect("runs");
    assert_eq!(sb.peek_u64(target), 1);
    assert_eq!(sb.halted_vector(), Some(14));
    let (err, ..) = frame(&sb, sb.cpu.gpr[4], true);
    assert_eq!(err, Some(0x3), "P|W, supervisor");
}
