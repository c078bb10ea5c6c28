//! Engine-neutral architectural state: what boot code sets and what crash reports print.

use std::fmt;

/// The general-purpose registers, `rip` and `rflags`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct StandardRegisters {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register with its hidden part, in the layout of a GDT descriptor's fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by granularity).
    pub limit: u32,
    /// Selector.
    pub selector: u16,
    /// Descriptor type (4 bits).
    pub type_: u8,
    /// Present.
    pub present: bool,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (32-bit segment).
    pub db: bool,
    /// Code/data (true) or system (false) descriptor.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Granularity (limit in 4 KiB units).
    pub g: bool,
    /// Available for software.
    pub avl: bool,
    /// Unusable (a null selector was loaded).
    pub unusable: bool,
}

impl Segment {
    /// Decodes a 64-bit GDT descriptor into the hidden segment state it loads.
    pub fn from_gdt_entry(selector: u16, entry: u64) -> Self {
        let base = ((entry >> 16) & 0xff_ffff) | (((entry >> 56) & 0xff) << 24);
        let raw_limit = ((entry & 0xffff) | (((entry >> 48) & 0xf) << 16)) as u32;
        let g = (entry >> 55) & 1 == 1;
        let limit = if g { (raw_limit << 12) | 0xfff } else { raw_limit };
        Segment {
            base,
            limit,
            selector,
            type_: ((entry >> 40) & 0xf) as u8,
            s: (entry >> 44) & 1 == 1,
            dpl: ((entry >> 45) & 3) as u8,
            present: (entry >> 47) & 1 == 1,
            avl: (entry >> 52) & 1 == 1,
            l: (entry >> 53) & 1 == 1,
            db: (entry >> 54) & 1 == 1,
            g,
            unusable: false,
        }
    }
}

/// Control registers, segments and descriptor tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SpecialRegisters {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt_base: u64,
    pub gdt_limit: u16,
    pub idt_base: u64,
    pub idt_limit: u16,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
}

/// Everything a vCPU needs to start executing: what the boot protocol prescribes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootCpuState {
    /// General registers, `rip`, `rflags`.
    pub regs: StandardRegisters,
    /// Control registers and segments.
    pub sregs: SpecialRegisters,
}

/// A snapshot of a vCPU's registers for crash reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterDump {
    /// General registers.
    pub regs: StandardRegisters,
    /// Special registers.
    pub sregs: SpecialRegisters,
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.regs;
        let s = &self.sregs;
        write!(
            f,
            "rip={:#x} rsp={:#x} rflags={:#x} rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} \
             rsi={:#x} rdi={:#x} cs={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            r.rip,
            r.rsp,
            r.rflags,
            r.rax,
            r.rbx,
            r.rcx,
            r.rdx,
            r.rsi,
            r.rdi,
            s.cs.selector,
            s.cr0,
            s.cr2,
            s.cr3,
            s.cr4,
            s.efer
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_64bit_code_descriptor_decodes_to_long_mode_segment() {
        // The Linux boot GDT's __BOOT_CS: base 0, limit 0xfffff pages, type 0xb, L=1.
        let seg = Segment::from_gdt_entry(0x10, 0x00af_9b00_0000_ffff);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert!(seg.l && !seg.db && seg.g && seg.present && seg.s);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.dpl, 0);
    }
}
