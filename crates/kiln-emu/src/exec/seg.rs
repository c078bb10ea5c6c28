//! Segment descriptors: reading them from the GDT/LDT and loading segment registers.
//!
//! Protected-mode checks follow the manuals for data and stack segments (type, DPL/RPL/CPL,
//! presence); limits are recorded but not enforced on accesses yet, and the accessed bit of a
//! descriptor is not written back.

use crate::cpu::{Cpu, CR0_PE, CS, SS};
use crate::fault::{Exception, Vector};
use crate::flags;
use crate::mmu::Priv;
use kiln_engine::{IoHandler, Segment};

impl Cpu {
    /// Reads the 8-byte descriptor `sel` names. `ext` is the EXT bit for error codes.
    pub(crate) fn read_descriptor_raw(
        &mut self,
        io: &dyn IoHandler,
        sel: u16,
        ext: u32,
    ) -> Result<u64, Exception> {
        let err = Exception::gp(u32::from(sel & !3) | ext);
        let (base, limit) = if sel & 4 != 0 {
            if self.ldtr.unusable || !self.ldtr.present {
                return Err(err);
            }
            (self.ldtr.base, u64::from(self.ldtr.limit))
        } else {
            (self.gdtr.base, u64::from(self.gdtr.limit))
        };
        let off = u64::from(sel & !7);
        if off + 7 > limit {
            return Err(err);
        }
        self.read_lin_u(io, base.wrapping_add(off), 8, Priv::Supervisor)
    }

    /// Reads and decodes the code or data descriptor `sel` names.
    pub(crate) fn read_segment_descriptor(
        &mut self,
        io: &dyn IoHandler,
        sel: u16,
        ext: u32,
    ) -> Result<Segment, Exception> {
        let raw = self.read_descriptor_raw(io, sel, ext)?;
        Ok(Segment::from_gdt_entry(sel, raw))
    }

    /// Reads a 16-byte system descriptor (TSS, LDT) in long mode, or an 8-byte one otherwise.
    pub(crate) fn read_system_descriptor(
        &mut self,
        io: &dyn IoHandler,
        sel: u16,
    ) -> Result<Segment, Exception> {
        let raw = self.read_descriptor_raw(io, sel, 0)?;
        let mut seg = Segment::from_gdt_entry(sel, raw);
        if self.long_mode() {
            let off = u64::from(sel & !7) + 8;
            if off + 7 > u64::from(self.gdtr.limit) {
                return Err(Exception::gp(u32::from(sel & !3)));
            }
            let hi = self.read_lin_u(io, self.gdtr.base.wrapping_add(off), 8, Priv::Supervisor)?;
            seg.base |= (hi & 0xffff_ffff) << 32;
        }
        Ok(seg)
    }

    /// Loads data segment register `idx` (ES, SS, DS, FS, GS) with `sel`, as MOV/POP/LxS do.
    pub(crate) fn load_data_segment(
        &mut self,
        io: &dyn IoHandler,
        idx: usize,
        sel: u16,
    ) -> Result<(), Exception> {
        if self.cr0 & CR0_PE == 0 || self.rflags & flags::VM != 0 {
            let s = &mut self.seg[idx];
            s.selector = sel;
            s.base = u64::from(sel) << 4;
            s.unusable = false;
            return Ok(());
        }
        let cpl = self.cpl();
        let rpl = (sel & 3) as u8;
        if sel & !3 == 0 {
            if idx == SS && !(self.code64() && cpl < 3 && rpl == cpl) {
                return Err(Exception::gp(0));
            }
            let s = &mut self.seg[idx];
            s.selector = sel;
            s.unusable = true;
            if idx == SS {
                s.dpl = cpl;
            }
            return Ok(());
        }
        let d = self.read_segment_descriptor(io, sel, 0)?;
        let err = u32::from(sel & !3);
        let code = d.type_ & 8 != 0;
        let writable = !code && d.type_ & 2 != 0;
        let readable = !code || d.type_ & 2 != 0;
        let conforming = code && d.type_ & 4 != 0;
        if !d.s {
            return Err(Exception::gp(err));
        }
        if idx == SS {
            if rpl != cpl || !writable || d.dpl != cpl {
                return Err(Exception::gp(err));
            }
            if !d.present {
                return Err(Exception::with_code(Vector::SS, err));
            }
        } else {
            if !readable || (!conforming && (rpl > d.dpl || cpl > d.dpl)) {
                return Err(Exception::gp(err));
            }
            if !d.present {
                return Err(Exception::with_code(Vector::NP, err));
            }
        }
        self.seg[idx] = d;
        Ok(())
    }

    /// Loads CS for a far transfer to privilege `cpl` (checks done by the caller).
    pub(crate) fn set_cs(&mut self, mut d: Segment, sel: u16, cpl: u8) {
        d.selector = (sel & !3) | u16::from(cpl);
        self.seg[CS] = d;
    }

    /// Reads and checks a code-segment descriptor for a far return or IRET to privilege
    /// `rpl` (which must not be more privileged than the current CPL).
    pub(crate) fn check_return_cs(
        &mut self,
        io: &dyn IoHandler,
        sel: u16,
    ) -> Result<Segment, Exception> {
        let err = u32::from(sel & !3);
        if sel & !3 == 0 {
            return Err(Exception::gp(0));
        }
        let d = self.read_segment_descriptor(io, sel, 0)?;
        let rpl = (sel & 3) as u8;
        if !d.s || d.type_ & 8 == 0 || rpl < self.cpl() {
            return Err(Exception::gp(err));
        }
        let conforming = d.type_ & 4 != 0;
        if (conforming && d.dpl > rpl) || (!conforming && d.dpl != rpl) {
            return Err(Exception::gp(err));
        }
        if !d.present {
            return Err(Exception::with_code(Vector::NP, err));
        }
        Ok(d)
    }
}
