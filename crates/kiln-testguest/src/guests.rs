//! Small 64-bit guests, assembled with iced-x86 at [`GUEST_BASE`](crate::GUEST_BASE).
//!
//! Every guest starts in the state `kiln-boot` gives the boot processor: long mode, identity
//! page tables for 4 GiB at 0x9000, the boot GDT at 0x500, stack at 0x8ff0. Guests that need
//! their own tables build them in the free pages 0x1000-0x6fff.

use crate::GUEST_BASE;
use iced_x86::code_asm::*;

/// COM1 data port.
pub const SERIAL_PORT: u16 = 0x3f8;
/// The boot-timer port and magic value.
pub const BOOT_TIMER_PORT: u16 = 0x440;
const BOOT_TIMER_MAGIC: i32 = 123;
/// i8042 command port; 0xfe pulses the reset line.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// An MMIO address in the hole below 4 GiB where no device lives.
pub const TEST_MMIO_ADDR: u64 = 0xd000_0000;

/// Assembly failed (a bug in the guest program, not in the code under test).
#[derive(Debug, thiserror::Error)]
#[error("assembling test guest: {0}")]
pub struct AsmError(#[from] IcedError);

type Result<T> = std::result::Result<T, AsmError>;

fn new_asm() -> Result<CodeAssembler> {
    Ok(CodeAssembler::new(64)?)
}

fn finish(mut a: CodeAssembler) -> Result<Vec<u8>> {
    Ok(a.assemble(GUEST_BASE)?)
}

/// Writes `text` to COM1, one `out` per byte.
pub fn emit_print(a: &mut CodeAssembler, text: &str) -> Result<()> {
    a.mov(dx, SERIAL_PORT as u32)?;
    for byte in text.bytes() {
        a.mov(al, byte as u32)?;
        a.out(dx, al)?;
    }
    Ok(())
}

/// Writes the boot-timer magic.
pub fn emit_boot_timer(a: &mut CodeAssembler) -> Result<()> {
    a.mov(dx, BOOT_TIMER_PORT as u32)?;
    a.mov(al, BOOT_TIMER_MAGIC as u32)?;
    a.out(dx, al)?;
    Ok(())
}

/// Resets through the i8042, then halts in a loop should the reset not take.
pub fn emit_reset(a: &mut CodeAssembler) -> Result<()> {
    a.mov(al, 0xfe_u32)?;
    a.out(I8042_COMMAND_PORT as u32, al)?;
    let mut spin = a.create_label();
    a.set_label(&mut spin)?;
    a.hlt()?;
    a.jmp(spin)?;
    Ok(())
}

/// Waits until the UART has sent everything (LSR bit 6, transmitter empty; QEMU drops output
/// still queued when `isa-debug-exit` ends the process), exits through QEMU's `isa-debug-exit`
/// at port 0xf4 (unclaimed in Kiln), then resets through the i8042.
pub(crate) fn emit_drain_and_exit(a: &mut CodeAssembler) -> Result<()> {
    let mut drain = a.create_label();
    a.set_label(&mut drain)?;
    a.mov(dx, (SERIAL_PORT + 5) as u32)?;
    a.in_(al, dx)?;
    a.test(al, 0x40)?;
    a.jz(drain)?;
    a.mov(al, 0_u32)?;
    a.out(0xf4, al)?;
    emit_reset(a)
}

/// Marks boot, prints `text`, resets.
pub fn hello(text: &str) -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_boot_timer(&mut a)?;
    emit_print(&mut a, text)?;
    emit_reset(&mut a)?;
    finish(a)
}

/// Resets at its first instruction: the smallest guest, for start-up benchmarks.
pub fn reset_at_once() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_boot_timer(&mut a)?;
    emit_reset(&mut a)?;
    finish(a)
}

/// The start-up benchmark guest, runnable by Kiln (64-bit entry) and by QEMU (PVH 32-bit entry):
/// its instructions encode the same in both modes. Writes the boot-timer magic and `!` to COM1
/// (the first-instruction mark the benchmark times), waits for the UART to drain, writes 0 to
/// port 0xf4 (QEMU's `isa-debug-exit`, unclaimed in Kiln), then resets through the i8042.
pub fn startup_probe() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    // The boot-timer write comes first: QEMU's microvm loses a COM1 byte written by the very
    // first instruction of a PVH guest (seen with QEMU 7.2), which would make it look hung.
    emit_boot_timer(&mut a)?;
    emit_print(&mut a, "!")?;
    emit_drain_and_exit(&mut a)?;
    finish(a)
}

/// Prints, then enters ACPI S5 the way Linux's `poweroff` does on a hardware-reduced
/// platform: SLP_TYP 5 with SLP_EN to the sleep control register at port 0x600.
pub fn acpi_power_off() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_print(&mut a, "powering off\n")?;
    a.mov(dx, 0x600_u32)?;
    a.mov(al, (5 << 2) | (1 << 5))?;
    a.out(dx, al)?;
    let mut spin = a.create_label();
    a.set_label(&mut spin)?;
    a.hlt()?;
    a.jmp(spin)?;
    finish(a)
}

/// Prints, then executes `ud2` with an empty IDT: #UD cannot be delivered, nor can the #DF that
/// follows, so the CPU shuts down (a triple fault).
pub fn triple_fault() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_print(&mut a, "faulting\n")?;
    a.ud2()?;
    finish(a)
}

/// Prints, then halts with interrupts disabled: nothing can wake it.
pub fn halt_forever() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_print(&mut a, "halting\n")?;
    a.cli()?;
    a.hlt()?;
    emit_print(&mut a, "woke from cli;hlt\n")?;
    emit_reset(&mut a)?;
    finish(a)
}

/// Prints `idle`, then idles with interrupts enabled and nothing to wake it, as an idle guest
/// kernel does: the VMM must keep it alive until told to stop.
pub fn idle_forever() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_print(&mut a, "idle\n")?;
    let mut idle = a.create_label();
    a.set_label(&mut idle)?;
    a.sti()?;
    a.hlt()?;
    a.jmp(idle)?;
    finish(a)
}

/// Echoes what arrives on COM1 back to COM1, polling the line status register, until it has
/// echoed a `q`; then resets. Exercises the console input path.
pub fn serial_echo() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    let mut poll = a.create_label();
    a.set_label(&mut poll)?;
    a.mov(dx, (SERIAL_PORT + 5) as u32)?; // line status register
    a.in_(al, dx)?;
    a.test(al, 1)?; // data ready
    a.jz(poll)?;
    a.mov(dx, SERIAL_PORT as u32)?;
    a.in_(al, dx)?;
    a.out(dx, al)?;
    a.cmp(al, b'q' as i32)?;
    a.jne(poll)?;
    emit_reset(&mut a)?;
    finish(a)
}

/// Reads the 32-bit register at `addr` and prints its four bytes (little-endian) to COM1, then
/// resets. At a virtio-mmio window this prints `virt`, the transport's magic value.
pub fn print_mmio_word(addr: u64) -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    a.mov(rbx, addr)?;
    a.mov(ecx, dword_ptr(rbx))?;
    a.mov(dx, SERIAL_PORT as u32)?;
    for _ in 0..4 {
        a.mov(al, cl)?;
        a.out(dx, al)?;
        a.shr(ecx, 8)?;
    }
    emit_reset(&mut a)?;
    finish(a)
}

/// Port and MMIO traffic with known values, for engine tests:
/// `out 0x80, 0x42`; `in al, 0x81` then `out 0x82, al`; `mov dword [MMIO], 0x11223344`;
/// `mov eax, [MMIO+0x10]` then `out 0x83, eax` (32-bit); reset.
pub fn port_and_mmio() -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    a.mov(al, 0x42_u32)?;
    a.out(0x80, al)?;
    a.in_(al, 0x81)?;
    a.out(0x82, al)?;
    a.mov(rbx, TEST_MMIO_ADDR)?;
    a.mov(dword_ptr(rbx), 0x1122_3344_u32)?;
    a.mov(eax, dword_ptr(rbx + 0x10))?;
    a.out(0x83, eax)?;
    emit_reset(&mut a)?;
    finish(a)
}

/// Runs on every vCPU at once (each given its own stack): reads its APIC ID from CPUID,
/// prints it as one character `'0' + id`, counts itself in a shared counter at 0x3000, and the
/// vCPU that completes the count of `vcpus` prints `all\n` and resets. The others halt.
pub fn smp_rollcall(vcpus: u32) -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    a.mov(eax, 1_u32)?;
    a.cpuid()?;
    a.shr(ebx, 24)?;
    a.lea(eax, ebx + 0x30)?;
    a.mov(dx, SERIAL_PORT as u32)?;
    a.out(dx, al)?;
    a.mov(eax, 1_u32)?;
    a.mov(rcx, 0x3000_u64)?;
    a.lock().xadd(dword_ptr(rcx), eax)?;
    a.inc(eax)?;
    a.cmp(eax, vcpus)?;
    let mut last = a.create_label();
    a.je(last)?;
    a.cli()?;
    let mut park = a.create_label();
    a.set_label(&mut park)?;
    a.hlt()?;
    a.jmp(park)?;
    a.set_label(&mut last)?;
    emit_print(&mut a, "\nall\n")?;
    emit_reset(&mut a)?;
    finish(a)
}

/// How the CPL3 part of [`cpl3`] reports its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cpl3Exit {
    /// `int 0x80` back to CPL0 through a DPL3 gate; the handler checks the saved CS has RPL 3
    /// and rbx is 500500, prints `cpl3 ok` or `cpl3 bad`, and resets.
    Interrupt,
    /// Still at CPL3: writes rbx to [`TEST_MMIO_ADDR`] and then writes [`TEST_MMIO_DONE`], which
    /// the harness treats as the end of the run.
    Mmio,
}

/// The harness ends a run when the guest writes here.
pub const TEST_MMIO_DONE: u64 = TEST_MMIO_ADDR + 0x100;

/// Drops to CPL3: builds a GDT with user segments and a TSS, an IDT whose vector 0x80 is a DPL3
/// interrupt gate, marks the first 2 MiB and the test MMIO page user-accessible, and `iretq`s to
/// user code at CPL3 that sums 1..=1000 into rbx and reports as `exit` says.
pub fn cpl3(exit: Cpl3Exit) -> Result<Vec<u8>> {
    const GDT: u64 = 0x1000;
    const TSS: u64 = 0x1100;
    const IDT: u64 = 0x2000;
    const KERNEL_STACK: u64 = 0x6000;
    const USER_STACK: u64 = 0x4ff0;
    const USER_DS: u64 = 0x20 | 3;
    const USER_CS: u64 = 0x28 | 3;
    const TSS_SEL: u32 = 0x30;
    let mut a = new_asm()?;
    let mut handler = a.create_label();
    let mut user = a.create_label();
    let mut gdtr = a.create_label();
    let mut idtr = a.create_label();
    let mut bad = a.create_label();

    // User-accessible: set U (bit 2) in the PML4, PDPT and PD entries covering 0-2 MiB.
    // Likewise the PDPT and PD entries of the test MMIO page at 3.25 GiB.
    for entry in [0x9000_u64, 0xa000, 0xb000, 0xa018, 0xe400] {
        a.mov(rax, entry)?;
        a.or(qword_ptr(rax), 4)?;
    }
    a.mov(rax, cr3)?;
    a.mov(cr3, rax)?;
    // GDT: null, -, kernel code 0x10, kernel data 0x18, user data 0x20, user code 0x28, TSS 0x30.
    let descriptors: [(u64, u64); 6] = [
        (0x10, 0x00af_9b00_0000_ffff),
        (0x18, 0x00cf_9300_0000_ffff),
        (0x20, 0x00cf_f300_0000_ffff),
        (0x28, 0x00af_fb00_0000_ffff),
        (0x30, 0x0000_8900_0000_0067 | ((TSS & 0xff_ffff) << 16)),
        (0x38, 0),
    ];
    a.mov(rbx, GDT)?;
    for (selector, value) in descriptors {
        a.mov(rax, value)?;
        a.mov(qword_ptr(rbx + selector as i32), rax)?;
    }
    a.mov(rbx, TSS)?;
    a.mov(rax, KERNEL_STACK)?;
    a.mov(qword_ptr(rbx + 4), rax)?; // RSP0
    a.lgdt(ptr(gdtr))?;
    a.mov(ax, TSS_SEL)?;
    a.ltr(ax)?;
    // IDT gate 0x80: interrupt gate, DPL3, selector 0x10, offset = handler.
    a.lea(rax, ptr(handler))?;
    a.mov(rbx, IDT + 0x80 * 16)?;
    a.mov(word_ptr(rbx), ax)?;
    a.mov(word_ptr(rbx + 2), 0x10_u32)?;
    a.mov(word_ptr(rbx + 4), 0xee00_u32)?;
    a.shr(rax, 16)?;
    a.mov(word_ptr(rbx + 6), ax)?;
    a.shr(rax, 16)?;
    a.mov(dword_ptr(rbx + 8), eax)?;
    a.mov(dword_ptr(rbx + 12), 0_u32)?;
    a.lidt(ptr(idtr))?;
    // iretq to user code.
    a.push(USER_DS as i32)?;
    a.push(USER_STACK as i32)?;
    a.push(0x2_i32)?;
    a.push(USER_CS as i32)?;
    a.lea(rax, ptr(user))?;
    a.push(rax)?;
    a.iretq()?;

    a.set_label(&mut user)?;
    a.xor(ebx, ebx)?;
    a.mov(ecx, 1000_u32)?;
    let mut sum = a.create_label();
    a.set_label(&mut sum)?;
    a.add(rbx, rcx)?;
    a.loop_(sum)?;
    match exit {
        Cpl3Exit::Interrupt => a.int(0x80)?,
        Cpl3Exit::Mmio => {
            a.mov(rax, TEST_MMIO_ADDR)?;
            a.mov(qword_ptr(rax), rbx)?;
            a.mov(rax, TEST_MMIO_DONE)?;
            a.mov(byte_ptr(rax), 1_u32)?;
        }
    }
    a.ud2()?;

    a.set_label(&mut handler)?;
    a.mov(rax, qword_ptr(rsp + 8))?; // saved CS
    a.and(eax, 3)?;
    a.cmp(eax, 3)?;
    a.jne(bad)?;
    a.cmp(rbx, 500_500)?;
    a.jne(bad)?;
    emit_print(&mut a, "cpl3 ok\n")?;
    emit_reset(&mut a)?;
    a.set_label(&mut bad)?;
    emit_print(&mut a, "cpl3 bad\n")?;
    emit_reset(&mut a)?;

    a.set_label(&mut gdtr)?;
    a.dw(&[0x3f])?;
    a.dq(&[GDT])?;
    a.set_label(&mut idtr)?;
    a.dw(&[0x81 * 16 - 1])?;
    a.dq(&[IDT])?;
    finish(a)
}

/// The interpreter-speed benchmark guest (mode-neutral like [`startup_probe`], so QEMU boots it
/// through its PVH note): prints `!`, runs `iterations` of a two-instruction loop, prints `#`,
/// waits for the UART, then exits through QEMU's `isa-debug-exit` or Kiln's i8042 reset. The host
/// times the two marks.
pub fn speed_probe(iterations: u32) -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_boot_timer(&mut a)?;
    emit_print(&mut a, "!")?;
    a.mov(ecx, iterations)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    emit_print(&mut a, "#")?;
    emit_drain_and_exit(&mut a)?;
    finish(a)
}

/// Busy work at CPL0: counts `iterations` down in a register, then prints `done` and resets.
pub fn spin(iterations: u32) -> Result<Vec<u8>> {
    let mut a = new_asm()?;
    emit_boot_timer(&mut a)?;
    a.mov(ecx, iterations)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.dec(ecx)?;
    a.jnz(top)?;
    emit_print(&mut a, "done\n")?;
    emit_reset(&mut a)?;
    finish(a)
}
