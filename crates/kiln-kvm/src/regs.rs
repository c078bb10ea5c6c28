//! Conversions between Kiln's engine-neutral register state and KVM's structures.

use kiln_engine::{RegisterDump, Segment, SpecialRegisters, StandardRegisters};
use kvm_bindings::{kvm_dtable, kvm_regs, kvm_segment, kvm_sregs};

pub(crate) fn to_kvm_regs(r: &StandardRegisters) -> kvm_regs {
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

pub(crate) fn from_kvm_regs(r: &kvm_regs) -> StandardRegisters {
    StandardRegisters {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn to_kvm_segment(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present.into(),
        dpl: s.dpl,
        db: s.db.into(),
        s: s.s.into(),
        l: s.l.into(),
        g: s.g.into(),
        avl: s.avl.into(),
        unusable: s.unusable.into(),
        padding: 0,
    }
}

fn from_kvm_segment(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

/// Applies Kiln's special registers over KVM's current ones (keeping fields Kiln does not model,
/// such as the APIC base and the pending-interrupt bitmap).
pub(crate) fn apply_sregs(k: &mut kvm_sregs, s: &SpecialRegisters) {
    k.cs = to_kvm_segment(&s.cs);
    k.ds = to_kvm_segment(&s.ds);
    k.es = to_kvm_segment(&s.es);
    k.fs = to_kvm_segment(&s.fs);
    k.gs = to_kvm_segment(&s.gs);
    k.ss = to_kvm_segment(&s.ss);
    k.tr = to_kvm_segment(&s.tr);
    k.ldt = to_kvm_segment(&s.ldt);
    k.gdt = kvm_dtable { base: s.gdt_base, limit: s.gdt_limit, padding: [0; 3] };
    k.idt = kvm_dtable { base: s.idt_base, limit: s.idt_limit, padding: [0; 3] };
    k.cr0 = s.cr0;
    k.cr2 = s.cr2;
    k.cr3 = s.cr3;
    k.cr4 = s.cr4;
    k.efer = s.efer;
}

pub(crate) fn from_kvm_sregs(k: &kvm_sregs) -> SpecialRegisters {
    SpecialRegisters {
        cs: from_kvm_segment(&k.cs),
        ds: from_kvm_segment(&k.ds),
        es: from_kvm_segment(&k.es),
        fs: from_kvm_segment(&k.fs),
        gs: from_kvm_segment(&k.gs),
        ss: from_kvm_segment(&k.ss),
        tr: from_kvm_segment(&k.tr),
        ldt: from_kvm_segment(&k.ldt),
        gdt_base: k.gdt.base,
        gdt_limit: k.gdt.limit,
        idt_base: k.idt.base,
        idt_limit: k.idt.limit,
        cr0: k.cr0,
        cr2: k.cr2,
        cr3: k.cr3,
        cr4: k.cr4,
        efer: k.efer,
    }
}

pub(crate) fn dump(regs: &kvm_regs, sregs: &kvm_sregs) -> RegisterDump {
    RegisterDump { regs: from_kvm_regs(regs), sregs: from_kvm_sregs(sregs) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_engine::BootCpuState;

    fn round_trip(state: &BootCpuState) -> BootCpuState {
        let mut k = kvm_sregs::default();
        apply_sregs(&mut k, &state.sregs);
        BootCpuState { regs: from_kvm_regs(&to_kvm_regs(&state.regs)), sregs: from_kvm_sregs(&k) }
    }

    #[test]
    fn boot_state_survives_conversion_to_kvm_layout() {
        let mut state = BootCpuState::default();
        state.regs.rip = 0x100_0000;
        state.regs.rsi = 0x7000;
        state.sregs.cs = Segment::from_gdt_entry(0x10, 0x00af_9b00_0000_ffff);
        state.sregs.efer = 0x500;
        state.sregs.cr3 = 0x9000;
        assert_eq!(round_trip(&state), state);
    }
}
