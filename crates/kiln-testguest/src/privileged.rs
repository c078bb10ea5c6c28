//! A small kernel that exercises privileged behaviour and prints a transcript on COM1, to compare
//! Kiln's `emu` with another x86-64 implementation (QEMU's TCG) on the same bytes: KVM on these
//! hosts emulates CPL0 itself and is no reference for it.
//!
//! The image works under both boot paths: Kiln enters the 64-bit body at [`GUEST_BASE`] in long
//! mode; QEMU enters a 32-bit PVH stub placed after the body, which turns on long mode with its
//! own tables (at 0x10000) and jumps to the body. The body then builds everything it tests with
//! itself (page tables at 0x1000-0x4fff, GDT and TSS at 0x5000, IDT at 0x6000), so both runs
//! start the cases from the same state.
//!
//! Each case prints `T <n>`, then either a line `E` for the exception it raised (vector, error
//! code, CR2, the interrupted RIP/CS/RFLAGS/RSP/SS, and RCX/RSI/RDI at the fault) or what it
//! measured, then `-`. Cases: #UD, #DE, #PF (not present, write to read-only with CR0.WP, NX
//! fetch, user access to a supervisor page), a write through CR0.WP=0, #GP (non-canonical,
//! privileged instruction and CLI at CPL3, INT to a DPL0 gate), INT3, accessed/dirty bits,
//! an IST stack switch, IRETQ to CPL3, SYSCALL/SYSRET, INT 0x80 from CPL3, REP MOVSB faulting
//! half-way, EFER.

use crate::guests::{emit_drain_and_exit, emit_print, AsmError, SERIAL_PORT};
use crate::GUEST_BASE;
use iced_x86::code_asm::*;

type Result<T> = std::result::Result<T, AsmError>;

const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const PT: u64 = 0x4000;
const GDT: u64 = 0x5000;
const TSS: u64 = 0x5800;
const IDT: u64 = 0x6000;
const USER_STACK: u64 = 0x5_0000;
const IST1_STACK: u64 = 0x6_0000;
const KERNEL_STACK: u64 = 0x7_0000;
/// Where a case stores the address at which to continue after its exception.
const RESUME: u64 = 0x8_f000;
const PAGE_ABSENT: u64 = 0x8_0000;
const PAGE_READ_ONLY: u64 = 0x8_1000;
const PAGE_NX: u64 = 0x8_2000;
const PAGE_AD: u64 = 0x8_4000;
const PAGE_SUPERVISOR: u64 = 0x8_5000;
/// The PVH stub's own page tables (QEMU path only).
const STUB_TABLES: u64 = 0x1_0000;

const KERNEL_CS: u64 = 0x08;
const KERNEL_DS: u64 = 0x10;
const USER_DS: u64 = 0x1b;
const USER_CS: u64 = 0x23;
const TSS_SEL: u64 = 0x28;

/// Vectors that push an error code.
const WITH_ERROR_CODE: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// The probe: the bytes to load at [`GUEST_BASE`] and the 32-bit PVH entry address.
pub fn privileged_probe() -> Result<(Vec<u8>, u32)> {
    let body = body()?;
    let stub_at = GUEST_BASE + (body.len() as u64).next_multiple_of(16);
    let stub = pvh_stub(stub_at)?;
    let mut image = body;
    image.resize((stub_at - GUEST_BASE) as usize, 0xcc);
    image.extend(stub);
    Ok((image, stub_at as u32))
}

/// 32-bit protected mode, paging off (the PVH entry state) -> long mode -> the body.
fn pvh_stub(at: u64) -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(32)?;
    let (pml4, pdpt, pd) = (STUB_TABLES, STUB_TABLES + 0x1000, STUB_TABLES + 0x2000);
    a.mov(dword_ptr(pml4 as i32), (pdpt | 3) as u32)?;
    a.mov(dword_ptr(pml4 as i32 + 4), 0u32)?;
    a.mov(dword_ptr(pdpt as i32), (pd | 3) as u32)?;
    a.mov(dword_ptr(pdpt as i32 + 4), 0u32)?;
    // 512 2 MiB pages: the first GiB.
    a.xor(ecx, ecx)?;
    let mut fill = a.create_label();
    a.set_label(&mut fill)?;
    a.mov(eax, ecx)?;
    a.shl(eax, 21)?;
    a.or(eax, 0x83)?;
    a.mov(dword_ptr(ecx * 8 + pd as i32), eax)?;
    a.mov(dword_ptr(ecx * 8 + pd as i32 + 4), 0u32)?;
    a.inc(ecx)?;
    a.cmp(ecx, 512)?;
    a.jne(fill)?;
    // A GDT (null, 64-bit code, data) after the tables, its GDTR image, then LGDT.
    let gdt = (STUB_TABLES + 0x3000) as i32;
    for (k, e) in [0u64, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff].iter().enumerate() {
        a.mov(dword_ptr(gdt + 8 * k as i32), *e as u32)?;
        a.mov(dword_ptr(gdt + 8 * k as i32 + 4), (*e >> 32) as u32)?;
    }
    a.mov(word_ptr(gdt + 0x20), 23u32)?;
    a.mov(dword_ptr(gdt + 0x22), gdt as u32)?;
    a.lgdt(ptr(gdt + 0x20))?;
    a.mov(eax, cr4)?;
    a.or(eax, 1 << 5)?; // PAE
    a.mov(cr4, eax)?;
    a.mov(eax, pml4 as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, 0xc000_0080u32)?;
    a.rdmsr()?;
    a.or(eax, 1 << 8)?; // LME
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0001u32 as i32)?; // PG, PE
    a.mov(cr0, eax)?;
    a.mov(esp, KERNEL_STACK as u32)?;
    // Far return into the 64-bit code segment of the stub's GDT, at the body.
    a.push(KERNEL_CS as u32)?;
    a.push(GUEST_BASE as u32)?;
    a.retf()?;
    Ok(a.assemble(at)?)
}

/// Prints `rax` as 16 hex digits. Clobbers rax, rcx, rdx, rbx.
fn emit_print_hex_fn(a: &mut CodeAssembler, label: &mut CodeLabel) -> Result<()> {
    a.set_label(label)?;
    a.mov(rbx, rax)?;
    a.mov(ecx, 16)?;
    a.mov(dx, SERIAL_PORT as u32)?;
    let mut digit = a.create_label();
    let mut letter = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut digit)?;
    a.rol(rbx, 4)?;
    a.mov(al, bl)?;
    a.and(al, 0xf)?;
    a.cmp(al, 10)?;
    a.jae(letter)?;
    a.add(al, b'0' as i32)?;
    a.jmp(out)?;
    a.set_label(&mut letter)?;
    a.add(al, (b'a' - 10) as i32)?;
    a.set_label(&mut out)?;
    a.out(dx, al)?;
    a.dec(ecx)?;
    a.jnz(digit)?;
    Ok(a.ret()?)
}

struct Ctx {
    hex: CodeLabel,
}

impl Ctx {
    /// Prints `text` then the value of `reg` in hex.
    fn field(&self, a: &mut CodeAssembler, text: &str, reg: AsmRegister64) -> Result<()> {
        a.push(reg)?;
        emit_print(a, text)?;
        a.pop(rax)?;
        Ok(a.call(self.hex)?)
    }

    /// Starts case `n`: prints its name and arms the resume point.
    fn case(&self, a: &mut CodeAssembler, n: u32, resume: CodeLabel) -> Result<()> {
        emit_print(a, &format!("T {n}\n"))?;
        a.lea(rax, ptr(resume))?;
        a.mov(rdi, RESUME)?;
        a.mov(qword_ptr(rdi), rax)?;
        // Known values for the registers an exception line shows.
        a.mov(ecx, 0x1111 * n)?;
        a.mov(esi, 0x2222 * n)?;
        Ok(a.mov(edi, 0x3333 * n)?)
    }

    /// Ends a case: its resume point, then `-`.
    fn end(&self, a: &mut CodeAssembler, resume: &mut CodeLabel) -> Result<()> {
        a.set_label(resume)?;
        a.mov(rsp, KERNEL_STACK)?;
        emit_print(a, "-\n")
    }
}

/// Goes to CPL3 at `target` with the user stack, interrupts off.
fn emit_enter_user(a: &mut CodeAssembler, target: CodeLabel) -> Result<()> {
    a.push(USER_DS as i32)?;
    a.mov(rax, USER_STACK)?;
    a.push(rax)?;
    a.push(0x2)?; // RFLAGS: IF clear
    a.push(USER_CS as i32)?;
    a.lea(rax, ptr(target))?;
    a.push(rax)?;
    Ok(a.iretq()?)
}

fn body() -> Result<Vec<u8>> {
    let mut a = CodeAssembler::new(64)?;
    let mut hex = a.create_label();
    let mut common = a.create_label();
    let mut syscall_entry = a.create_label();
    let mut main = a.create_label();
    a.jmp(main)?;
    emit_print_hex_fn(&mut a, &mut hex)?;
    let g = Ctx { hex };

    // Exception entry stubs: push a zero error code where the CPU pushes none, then the vector.
    let mut stubs = Vec::new();
    for v in (0u8..32).chain([0x80, 0x81]) {
        let mut l = a.create_label();
        a.set_label(&mut l)?;
        if !WITH_ERROR_CODE.contains(&v) {
            a.push(0)?;
        }
        a.push(i32::from(v))?;
        a.jmp(common)?;
        stubs.push((v, l));
    }

    // Common handler: [rsp] vector, [rsp+8] error code, then RIP, CS, RFLAGS, RSP, SS.
    a.set_label(&mut common)?;
    a.push(rdi)?;
    a.push(rsi)?;
    a.push(rcx)?;
    emit_print(&mut a, "E v=")?;
    a.mov(rax, qword_ptr(rsp + 24))?;
    a.call(hex)?;
    a.mov(r8, qword_ptr(rsp + 32))?;
    g.field(&mut a, " e=", r8)?;
    a.mov(r8, cr2)?;
    g.field(&mut a, " cr2=", r8)?;
    for (name, off) in [(" ip=", 40), (" cs=", 48), (" fl=", 56), (" sp=", 64), (" ss=", 72)] {
        a.mov(r8, qword_ptr(rsp + off))?;
        g.field(&mut a, name, r8)?;
    }
    a.lea(r8, qword_ptr(rsp + 40))?;
    g.field(&mut a, " frame=", r8)?;
    for (name, off) in [(" rcx=", 0), (" rsi=", 8), (" rdi=", 16)] {
        a.mov(r8, qword_ptr(rsp + off))?;
        g.field(&mut a, name, r8)?;
    }
    emit_print(&mut a, "\n")?;
    a.mov(ax, KERNEL_DS as u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(rsp, KERNEL_STACK)?;
    a.mov(rdi, RESUME)?;
    a.jmp(qword_ptr(rdi))?;

    // SYSCALL entry (CPL0, still on the user stack): report, then SYSRET.
    a.set_label(&mut syscall_entry)?;
    a.push(rcx)?;
    a.push(r11)?;
    a.push(rax)?;
    emit_print(&mut a, "S")?;
    a.mov(r8, qword_ptr(rsp + 16))?;
    g.field(&mut a, " rcx=", r8)?;
    a.mov(r8, qword_ptr(rsp + 8))?;
    g.field(&mut a, " r11=", r8)?;
    a.mov(r8, qword_ptr(rsp))?;
    g.field(&mut a, " rax=", r8)?;
    a.mov(r8, cs)?;
    g.field(&mut a, " cs=", r8)?;
    emit_print(&mut a, "\n")?;
    a.pop(rax)?;
    a.pop(r11)?;
    a.pop(rcx)?;
    a.sysretq()?;

    a.set_label(&mut main)?;
    a.cli()?;
    a.mov(rsp, KERNEL_STACK)?;
    emit_print(&mut a, "\nKILN-PRIV-START\n")?;
    emit_paging(&mut a)?;
    emit_descriptors(&mut a, &stubs, syscall_entry)?;
    emit_cases(&mut a, &g)?;
    emit_print(&mut a, "KILN-PRIV-END\n")?;
    emit_drain_and_exit(&mut a)?;
    Ok(a.assemble(GUEST_BASE)?)
}

/// EFER.NXE/SCE, CR0.WP, then 4-level tables: 4 KiB pages for the first 2 MiB (user, writable,
/// except the test pages), 2 MiB pages up to 1 GiB.
fn emit_paging(a: &mut CodeAssembler) -> Result<()> {
    a.mov(ecx, 0xc000_0080u32)?;
    a.rdmsr()?;
    a.or(eax, (1 << 11) | 1)?; // NXE, SCE
    a.wrmsr()?;
    a.mov(rax, cr0)?;
    a.or(eax, 1 << 16)?; // WP
    a.mov(cr0, rax)?;
    // PT: identity, present | writable | user.
    a.xor(ecx, ecx)?;
    let mut pt = a.create_label();
    a.set_label(&mut pt)?;
    a.mov(eax, ecx)?;
    a.shl(eax, 12)?;
    a.or(eax, 7)?;
    a.mov(qword_ptr(rcx * 8 + PT as i32), rax)?;
    a.inc(ecx)?;
    a.cmp(ecx, 512)?;
    a.jne(pt)?;
    let pte = |page: u64| (PT + (page >> 12) * 8) as i32;
    a.mov(qword_ptr(pte(PAGE_ABSENT)), 0)?;
    a.mov(qword_ptr(pte(PAGE_READ_ONLY)), (PAGE_READ_ONLY | 5) as i32)?;
    a.mov(rax, PAGE_NX | 7 | (1 << 63))?;
    a.mov(qword_ptr(pte(PAGE_NX)), rax)?;
    a.mov(qword_ptr(pte(PAGE_AD)), (PAGE_AD | 3) as i32)?;
    a.mov(qword_ptr(pte(PAGE_SUPERVISOR)), (PAGE_SUPERVISOR | 3) as i32)?;
    // PD: the PT, then 2 MiB pages.
    a.mov(qword_ptr(PD as i32), (PT | 7) as i32)?;
    a.mov(ecx, 1)?;
    let mut pd = a.create_label();
    a.set_label(&mut pd)?;
    a.mov(eax, ecx)?;
    a.shl(eax, 21)?;
    a.or(eax, 0x87)?;
    a.mov(qword_ptr(rcx * 8 + PD as i32), rax)?;
    a.inc(ecx)?;
    a.cmp(ecx, 512)?;
    a.jne(pd)?;
    a.mov(qword_ptr(PDPT as i32), (PD | 7) as i32)?;
    a.mov(qword_ptr(PML4 as i32), (PDPT | 7) as i32)?;
    a.mov(eax, PML4 as u32)?;
    a.mov(cr3, rax)?;
    Ok(())
}

/// GDT with user segments and a TSS (RSP0, IST1), the IDT, and the SYSCALL MSRs.
fn emit_descriptors(
    a: &mut CodeAssembler,
    stubs: &[(u8, CodeLabel)],
    syscall_entry: CodeLabel,
) -> Result<()> {
    let tss_low = 0x67 | ((TSS & 0xff_ffff) << 16) | (0x89 << 40) | (((TSS >> 24) & 0xff) << 56);
    let entries = [
        0,
        0x00af_9b00_0000_ffffu64,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
        tss_low,
        TSS >> 32,
    ];
    for (k, e) in entries.iter().enumerate() {
        a.mov(rax, *e)?;
        a.mov(qword_ptr(GDT as i32 + k as i32 * 8), rax)?;
    }
    // The GDTR image at GDT + 0x100, then LGDT and reloads.
    a.mov(word_ptr(GDT as i32 + 0x100), (entries.len() * 8 - 1) as u32)?;
    a.mov(qword_ptr(GDT as i32 + 0x102), GDT as i32)?;
    a.lgdt(ptr(GDT as i32 + 0x100))?;
    let mut reloaded = a.create_label();
    a.push(KERNEL_CS as i32)?;
    a.lea(rax, ptr(reloaded))?;
    a.push(rax)?;
    a.db(&[0x48, 0xcb])?; // RETFQ
    a.set_label(&mut reloaded)?;
    a.mov(ax, KERNEL_DS as u32)?;
    for s in [ds, es, ss] {
        a.mov(s, ax)?;
    }
    // TSS: zero it, RSP0 at +4, IST1 at +0x24, no I/O bitmap.
    for off in (0..0x68).step_by(8) {
        a.mov(qword_ptr(TSS as i32 + off), 0)?;
    }
    a.mov(qword_ptr(TSS as i32 + 4), KERNEL_STACK as i32)?;
    a.mov(qword_ptr(TSS as i32 + 0x24), IST1_STACK as i32)?;
    a.mov(word_ptr(TSS as i32 + 0x66), 0x68u32)?;
    a.mov(ax, TSS_SEL as u32)?;
    a.ltr(ax)?;
    // IDT: interrupt gates; vector 2 on IST1; 0x80 callable from CPL3.
    for (v, label) in stubs {
        let gate = IDT as i32 + i32::from(*v) * 16;
        let ist: u64 = if *v == 2 { 1 } else { 0 };
        let dpl: u64 = if *v == 0x80 { 3 } else { 0 };
        a.lea(rax, ptr(*label))?;
        a.mov(rdx, rax)?;
        a.and(eax, 0xffff)?;
        a.mov(rcx, (KERNEL_CS << 16) | (ist << 32) | ((0x8e | (dpl << 5)) << 40))?;
        a.or(rax, rcx)?;
        a.mov(rcx, rdx)?;
        a.shr(rcx, 16)?;
        a.and(ecx, 0xffff)?;
        a.shl(rcx, 48)?;
        a.or(rax, rcx)?;
        a.mov(qword_ptr(gate), rax)?;
        a.shr(rdx, 32)?;
        a.mov(qword_ptr(gate + 8), rdx)?;
    }
    a.mov(word_ptr(GDT as i32 + 0x110), 0xfffu32)?;
    a.mov(qword_ptr(GDT as i32 + 0x112), IDT as i32)?;
    a.lidt(ptr(GDT as i32 + 0x110))?;
    // SYSCALL: STAR (kernel CS 0x08, user base 0x10: SYSRET gives CS 0x23, SS 0x1b), LSTAR, SFMASK.
    a.mov(ecx, 0xc000_0081u32)?;
    a.xor(eax, eax)?;
    a.mov(edx, ((KERNEL_DS << 16) | KERNEL_CS) as u32)?;
    a.wrmsr()?;
    a.mov(ecx, 0xc000_0082u32)?;
    a.lea(rax, ptr(syscall_entry))?;
    a.mov(rdx, rax)?;
    a.shr(rdx, 32)?;
    a.wrmsr()?;
    a.mov(ecx, 0xc000_0084u32)?;
    a.mov(eax, 0x4700u32)?; // clear NT, DF, IF, TF
    a.xor(edx, edx)?;
    a.wrmsr()?;
    Ok(())
}

/// The CPL3 code of one case.
type UserCase = dyn Fn(&mut CodeAssembler) -> Result<()>;

fn emit_cases(a: &mut CodeAssembler, g: &Ctx) -> Result<()> {
    let mut n = 0;
    let mut next = |a: &mut CodeAssembler| -> Result<(u32, CodeLabel)> {
        n += 1;
        Ok((n, a.create_label()))
    };

    // #UD
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.ud2()?;
    g.end(a, &mut r)?;
    // #DE
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.xor(edx, edx)?;
    a.mov(eax, 1)?;
    a.xor(ecx, ecx)?;
    a.div(ecx)?;
    g.end(a, &mut r)?;
    // #PF: not present
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.mov(rax, qword_ptr(PAGE_ABSENT as i32 + 8))?;
    g.end(a, &mut r)?;
    // #PF: write to a read-only page with CR0.WP
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.mov(byte_ptr(PAGE_READ_ONLY as i32 + 3), 1)?;
    g.end(a, &mut r)?;
    // CR0.WP clear: the supervisor write goes through
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.mov(rax, cr0)?;
    a.btr(rax, 16)?;
    a.mov(cr0, rax)?;
    a.mov(byte_ptr(PAGE_READ_ONLY as i32 + 3), 7)?;
    a.movzx(r8, byte_ptr(PAGE_READ_ONLY as i32 + 3))?;
    g.field(a, "V ", r8)?;
    emit_print(a, "\n")?;
    a.mov(rax, cr0)?;
    a.bts(rax, 16)?;
    a.mov(cr0, rax)?;
    g.end(a, &mut r)?;
    // #PF: fetch from an NX page
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.mov(rax, PAGE_NX)?;
    a.call(rax)?;
    g.end(a, &mut r)?;
    // #GP: non-canonical
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.mov(rax, 0x8000_0000_0000_0000u64)?;
    a.mov(rbx, qword_ptr(rax))?;
    g.end(a, &mut r)?;
    // INT3: a trap, RIP after it
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.int3()?;
    g.end(a, &mut r)?;
    // Accessed and dirty bits of a fresh PTE
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    let pte = (PT + (PAGE_AD >> 12) * 8) as i32;
    a.invlpg(byte_ptr(PAGE_AD as i32))?;
    a.mov(r8, qword_ptr(pte))?;
    g.field(a, "P0 ", r8)?;
    a.mov(al, byte_ptr(PAGE_AD as i32))?;
    a.mov(r8, qword_ptr(pte))?;
    g.field(a, " P1 ", r8)?;
    a.mov(byte_ptr(PAGE_AD as i32), 1)?;
    a.mov(r8, qword_ptr(pte))?;
    g.field(a, " P2 ", r8)?;
    emit_print(a, "\n")?;
    g.end(a, &mut r)?;
    // IST: vector 2 runs on IST1
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.int(2)?;
    g.end(a, &mut r)?;
    // REP MOVSB that faults half-way: RCX/RSI/RDI show the iterations done
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.mov(esi, (PAGE_ABSENT - 5) as u32)?;
    a.mov(edi, 0x9_0000u32)?;
    a.mov(ecx, 16)?;
    a.cld()?;
    a.rep().movsb()?;
    g.end(a, &mut r)?;
    // EFER
    let (k, mut r) = next(a)?;
    g.case(a, k, r)?;
    a.mov(ecx, 0xc000_0080u32)?;
    a.rdmsr()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(r8, rax)?;
    g.field(a, "EFER ", r8)?;
    emit_print(a, "\n")?;
    g.end(a, &mut r)?;

    // CPL3 cases: each enters user mode at its own code.
    let user_cases: [&UserCase; 6] = [
        // SYSCALL and SYSRET, then INT 0x80 back to the kernel
        &|a| {
            a.mov(eax, 0x1234)?;
            a.syscall()?;
            Ok(a.int(0x80)?)
        },
        // INT to a DPL0 gate: #GP with the gate in the error code
        &|a| Ok(a.int(0x81)?),
        // Read of a supervisor page: #PF, user|present
        &|a| Ok(a.mov(al, byte_ptr(PAGE_SUPERVISOR as i32))?),
        // CLI at CPL3 with IOPL 0: #GP(0)
        &|a| Ok(a.cli()?),
        // A privileged instruction: #GP(0)
        &|a| Ok(a.mov(rax, cr0)?),
        // HLT at CPL3: #GP(0)
        &|a| Ok(a.hlt()?),
    ];
    for user in user_cases {
        let (k, mut r) = next(a)?;
        let mut code = a.create_label();
        g.case(a, k, r)?;
        emit_enter_user(a, code)?;
        a.set_label(&mut code)?;
        user(a)?;
        // Should the case not trap, INT 0x80 reports it and gets back to the kernel.
        a.int(0x80)?;
        g.end(a, &mut r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_assembles_with_its_stub_after_the_body() {
        let (image, entry) = privileged_probe().expect("assembles");
        assert!(u64::from(entry) > GUEST_BASE);
        assert_eq!(u64::from(entry) % 16, 0);
        assert!((entry as usize - GUEST_BASE as usize) < image.len());
        assert!(image.len() < 0x8000, "the probe stays small: {} bytes", image.len());
    }
}
