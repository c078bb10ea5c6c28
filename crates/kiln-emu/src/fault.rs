//! Exceptions and their delivery through the IDT.
//!
//! An instruction that faults returns an [`Exception`] before any architectural effect; the CPU
//! then delivers it ([`Cpu::raise`]): through the 64-bit IDT in long mode (interrupt and trap
//! gates, privilege change to the TSS RSP of the new CPL, IST stacks) or through the real-mode IVT.
//! A fault while delivering a fault escalates to #DF as the manuals classify them (benign,
//! contributory, page fault), and a fault while delivering #DF is a triple fault: the CPU shuts
//! down. Interrupt delivery in 32-bit protected mode (legacy IDT gates) is not implemented.

use crate::cpu::{Cpu, CR0_PE, CS, SS};
use crate::flags;
use crate::mmu::Priv;
use kiln_engine::IoHandler;

/// Architectural exception vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Vector {
    /// Divide error.
    DE = 0,
    /// Debug.
    DB = 1,
    NMI = 2,
    /// Breakpoint (INT3).
    BP = 3,
    /// Overflow (INTO).
    OF = 4,
    /// Bound range.
    BR = 5,
    /// Invalid opcode.
    UD = 6,
    /// Device not available.
    NM = 7,
    /// Double fault.
    DF = 8,
    /// Invalid TSS.
    TS = 10,
    /// Segment not present.
    NP = 11,
    /// Stack-segment fault.
    SS = 12,
    /// General protection.
    GP = 13,
    /// Page fault.
    PF = 14,
    /// x87 floating-point error.
    MF = 16,
    /// Alignment check.
    AC = 17,
    /// Machine check.
    MC = 18,
    /// SIMD floating-point.
    XM = 19,
}

/// A guest exception raised by an instruction (the guest's fault, never the VMM's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest exception {vector:?} (error code {error_code:?})")]
pub struct Exception {
    /// Which exception.
    pub vector: Vector,
    /// The error code pushed with it, for the vectors that have one.
    pub error_code: Option<u32>,
}

impl Exception {
    /// An exception without error code.
    pub const fn new(vector: Vector) -> Self {
        Exception { vector, error_code: None }
    }

    /// An exception with an error code.
    pub const fn with_code(vector: Vector, code: u32) -> Self {
        Exception { vector, error_code: Some(code) }
    }

    /// #GP with an error code.
    pub const fn gp(code: u32) -> Self {
        Self::with_code(Vector::GP, code)
    }

    /// #UD.
    pub const fn ud() -> Self {
        Self::new(Vector::UD)
    }
}

/// Why an instruction did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The guest raised an exception; the CPU delivers it.
    #[error(transparent)]
    Fault(#[from] Exception),
    /// The guest asked for a processor feature this CPU does not implement in a way that cannot
    /// be expressed as a guest exception (for example enabling legacy paging).
    #[error("the guest used a CPU feature the emulator does not implement: {0}")]
    Unsupported(&'static str),
}

/// Why a step stopped the CPU.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// A fault during #DF delivery: the processor shuts down.
    #[error("triple fault")]
    TripleFault,
    /// See [`ExecError::Unsupported`].
    #[error("the guest used a CPU feature the emulator does not implement: {0}")]
    Unsupported(&'static str),
}

/// What kind of event is delivered (it decides the pushed RIP, privilege checks and EXT bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A processor exception, with its error code.
    Exception(Option<u32>),
    /// A software interrupt (INT n, INT3, INTO): gate DPL is checked against CPL.
    Software,
    /// An external interrupt.
    External,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Benign,
    Contributory,
    PageFault,
}

fn class(v: Vector) -> Class {
    match v {
        Vector::DE | Vector::TS | Vector::NP | Vector::SS | Vector::GP => Class::Contributory,
        Vector::PF => Class::PageFault,
        _ => Class::Benign,
    }
}

/// Whether exception `vector` is of the fault class, whose pushed RFLAGS image has RF set so
/// that the faulting instruction, restarted by IRET, does not raise an instruction breakpoint
/// again (SDM vol. 3 6.12.1 and 18.3.1.1, APM vol. 2 13.1.1.6). #DB is left out (emu raises it
/// only as a trap, for single steps), as are traps and aborts (#BP, #OF, #DF, #MC).
fn is_fault(vector: u8) -> bool {
    matches!(vector, 0 | 5 | 6 | 7 | 10..=14 | 16 | 17 | 19..=21)
}

const TSS_RSP0: u64 = 4;
const TSS_IST1: u64 = 0x24;

impl Cpu {
    /// Delivers exception `exc` raised by the instruction at `self.rip`, escalating to #DF and
    /// triple fault as the architecture does.
    pub fn raise(&mut self, io: &dyn IoHandler, exc: Exception) -> Result<(), StepError> {
        let mut current = exc;
        for _ in 0..3 {
            let rip = self.rip;
            match self.deliver(
                io,
                current.vector as u8,
                EventKind::Exception(current.error_code),
                rip,
            ) {
                Ok(()) => return Ok(()),
                Err(ExecError::Unsupported(w)) => return Err(StepError::Unsupported(w)),
                Err(ExecError::Fault(second)) => {
                    if current.vector == Vector::DF {
                        return Err(StepError::TripleFault);
                    }
                    let (a, b) = (class(current.vector), class(second.vector));
                    let double = matches!(
                        (a, b),
                        (Class::Contributory, Class::Contributory)
                            | (Class::PageFault, Class::Contributory)
                            | (Class::PageFault, Class::PageFault)
                    );
                    current = if double { Exception::with_code(Vector::DF, 0) } else { second };
                }
            }
        }
        Err(StepError::TripleFault)
    }

    /// Delivers event `vector` of `kind`, pushing `return_rip`.
    pub fn deliver(
        &mut self,
        io: &dyn IoHandler,
        vector: u8,
        kind: EventKind,
        return_rip: u64,
    ) -> Result<(), ExecError> {
        self.halted = false;
        if self.cr0 & CR0_PE == 0 {
            return self.deliver_real(io, vector, return_rip);
        }
        if !self.long_mode() {
            return Err(ExecError::Unsupported("interrupt delivery in 32-bit protected mode"));
        }
        let ext = u32::from(kind != EventKind::Software);
        let idt_err = u32::from(vector) * 8 + 2 + ext;
        let off = u64::from(vector) * 16;
        if off + 15 > u64::from(self.idtr.limit) {
            return Err(Exception::gp(idt_err).into());
        }
        let lo = self.read_lin_u(io, self.idtr.base.wrapping_add(off), 8, Priv::Supervisor)?;
        let hi = self.read_lin_u(io, self.idtr.base.wrapping_add(off + 8), 8, Priv::Supervisor)?;
        let typ = (lo >> 40) & 0xf;
        let dpl = ((lo >> 45) & 3) as u8;
        let present = (lo >> 47) & 1 == 1;
        let ist = (lo >> 32) & 7;
        let sel = ((lo >> 16) & 0xffff) as u16;
        let target = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | (hi << 32);
        if typ != 0xe && typ != 0xf {
            return Err(Exception::gp(idt_err).into());
        }
        let cpl = self.cpl();
        if kind == EventKind::Software && dpl < cpl {
            return Err(Exception::gp(idt_err).into());
        }
        if !present {
            return Err(Exception::with_code(Vector::NP, idt_err).into());
        }
        if sel & !3 == 0 {
            return Err(Exception::gp(ext).into());
        }
        let cs = self.read_segment_descriptor(io, sel, ext)?;
        if !cs.s || cs.type_ & 8 == 0 || !cs.l || cs.db {
            return Err(Exception::gp(u32::from(sel & !3) | ext).into());
        }
        if cs.dpl > cpl {
            return Err(Exception::gp(u32::from(sel & !3) | ext).into());
        }
        if !cs.present {
            return Err(Exception::with_code(Vector::NP, u32::from(sel & !3) | ext).into());
        }
        let conforming = cs.type_ & 4 != 0;
        let new_cpl = if conforming { cpl } else { cs.dpl };
        let old_rsp = self.gpr[4];
        let old_ss = self.seg[SS].selector;
        let mut rsp = if ist != 0 {
            self.read_tss_u64(io, TSS_IST1 + 8 * (ist - 1))?
        } else if new_cpl < cpl {
            self.read_tss_u64(io, TSS_RSP0 + 8 * u64::from(new_cpl))?
        } else {
            old_rsp
        };
        rsp &= !0xf;
        let mut frame = [0u64; 6];
        let mut n = 0;
        if let EventKind::Exception(Some(code)) = kind {
            frame[n] = u64::from(code);
            n += 1;
        }
        frame[n] = return_rip;
        frame[n + 1] = u64::from(self.seg[CS].selector);
        let fault = matches!(kind, EventKind::Exception(_)) && is_fault(vector);
        frame[n + 2] = if fault { self.rflags | flags::RF } else { self.rflags };
        frame[n + 3] = old_rsp;
        frame[n + 4] = u64::from(old_ss);
        n += 5;
        let mut bytes = [0u8; 48];
        for (k, v) in frame[..n].iter().enumerate() {
            bytes[k * 8..k * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        let new_rsp = rsp.wrapping_sub(8 * n as u64);
        if !is_canonical(new_rsp) || !is_canonical(rsp.wrapping_sub(1)) {
            return Err(Exception::with_code(Vector::SS, ext).into());
        }
        let who = if new_cpl == 3 { Priv::User } else { Priv::Supervisor };
        self.write_lin(io, new_rsp, &bytes[..n * 8], who)?;
        // Commit.
        if new_cpl < cpl {
            let mut ss = self.seg[SS];
            ss.selector = u16::from(new_cpl);
            ss.unusable = true;
            ss.dpl = new_cpl;
            self.seg[SS] = ss;
        }
        let mut cs = cs;
        cs.selector = (sel & !3) | u16::from(new_cpl);
        self.seg[CS] = cs;
        self.gpr[4] = new_rsp;
        self.rip = target;
        self.rflags &= !(flags::TF | flags::NT | flags::RF | flags::VM);
        if typ == 0xe {
            self.rflags &= !flags::IF;
        }
        Ok(())
    }

    fn read_tss_u64(&mut self, io: &dyn IoHandler, off: u64) -> Result<u64, ExecError> {
        if off + 7 > u64::from(self.tr.limit) || !self.tr.present {
            return Err(Exception::with_code(Vector::TS, u32::from(self.tr.selector & !3)).into());
        }
        Ok(self.read_lin_u(io, self.tr.base.wrapping_add(off), 8, Priv::Supervisor)?)
    }

    fn deliver_real(
        &mut self,
        io: &dyn IoHandler,
        vector: u8,
        return_rip: u64,
    ) -> Result<(), ExecError> {
        let off = u64::from(vector) * 4;
        if off + 3 > u64::from(self.idtr.limit) {
            return Err(Exception::gp(0).into());
        }
        let ent = self.read_lin_u(io, self.idtr.base.wrapping_add(off), 4, Priv::Supervisor)?;
        let sp = self.gpr[4] as u16;
        let ss_base = self.seg[SS].base;
        let frame = [return_rip as u16, self.seg[CS].selector, self.rflags as u16];
        let mut bytes = [0u8; 6];
        for (k, v) in frame.iter().enumerate() {
            bytes[k * 2..k * 2 + 2].copy_from_slice(&v.to_le_bytes());
        }
        let new_sp = sp.wrapping_sub(6);
        self.write_lin(io, ss_base.wrapping_add(u64::from(new_sp)), &bytes, Priv::Supervisor)?;
        self.gpr[4] = (self.gpr[4] & !0xffff) | u64::from(new_sp);
        let sel = (ent >> 16) as u16;
        self.seg[CS].selector = sel;
        self.seg[CS].base = u64::from(sel) << 4;
        self.rip = ent & 0xffff;
        self.rflags &= !(flags::IF | flags::TF | flags::AC);
        Ok(())
    }
}

/// True if `a` is a canonical 48-bit address.
#[inline]
pub fn is_canonical(a: u64) -> bool {
    ((a as i64) << 16 >> 16) as u64 == a
}
