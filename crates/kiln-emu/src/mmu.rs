//! Linear-to-physical translation: 4-level paging with permission checks, accessed/dirty bits
//! and a direct-mapped software TLB, plus the linear-address read/write helpers built on it.
//!
//! Supported paging modes: none (CR0.PG clear) and 4-level long-mode paging (4 KiB, 2 MiB and
//! 1 GiB pages, NX, global pages). Legacy 32-bit and PAE paging are not implemented yet; a guest
//! that enables them is stopped as unserved.

use crate::cpu::{Cpu, CR0_PG, CR0_WP, CR4_PGE, EFER_NXE};
use crate::fault::{Exception, Vector};
use kiln_engine::IoHandler;

/// What an access does, for permission checks and page-fault error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// A data read.
    Read,
    /// A data write.
    Write,
    /// An instruction fetch.
    Exec,
}

/// Who makes an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priv {
    /// An access at the current privilege level.
    Current,
    /// An implicit supervisor access (descriptor tables, TSS, interrupt stack pushes at CPL0).
    Supervisor,
    /// A user access regardless of CPL.
    User,
}

const PTE_P: u64 = 1 << 0;
const PTE_W: u64 = 1 << 1;
const PTE_U: u64 = 1 << 2;
const PTE_A: u64 = 1 << 5;
const PTE_D: u64 = 1 << 6;
const PTE_PS: u64 = 1 << 7;
const PTE_G: u64 = 1 << 8;
const PTE_NX: u64 = 1 << 63;
/// Physical-address bits the CPU reports (CPUID 0x80000008).
pub const PHYS_BITS: u32 = 40;
const ADDR_MASK: u64 = ((1u64 << PHYS_BITS) - 1) & !0xfff;
const RSVD_HIGH: u64 = ((1u64 << 52) - 1) & !((1u64 << PHYS_BITS) - 1);

/// Page-fault error-code bits.
pub mod pf {
    /// The fault was a protection violation (the page was present).
    pub const P: u32 = 1;
    /// The access was a write.
    pub const W: u32 = 2;
    /// The access was made at CPL3.
    pub const U: u32 = 4;
    /// A reserved bit was set in a paging-structure entry.
    pub const RSVD: u32 = 8;
    /// The access was an instruction fetch.
    pub const I: u32 = 16;
}

const TLB_SIZE: usize = 1024;
const INVALID: u64 = u64::MAX;

/// One cached translation of a 4 KiB linear page.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TlbEntry {
    /// Linear page number, or `INVALID`.
    vpn: u64,
    /// Physical address of the page.
    pub(crate) pa: u64,
    /// Host pointer to the page if it is RAM, else null.
    pub(crate) host: *mut u8,
    user: bool,
    writable: bool,
    nx: bool,
    dirty: bool,
    global: bool,
}

const EMPTY: TlbEntry = TlbEntry {
    vpn: INVALID,
    pa: 0,
    host: std::ptr::null_mut(),
    user: false,
    writable: false,
    nx: false,
    dirty: false,
    global: false,
};

/// A direct-mapped TLB of 4 KiB translations.
pub(crate) struct Tlb {
    entries: Box<[TlbEntry; TLB_SIZE]>,
    /// Some entry came from a 2 MiB or 1 GiB page (INVLPG must then flush more than one slot).
    has_large: bool,
}

impl Tlb {
    pub(crate) fn new() -> Self {
        Tlb { entries: Box::new([EMPTY; TLB_SIZE]), has_large: false }
    }

    /// Forgets every translation, global ones included.
    pub(crate) fn flush_all(&mut self) {
        self.entries.fill(EMPTY);
        self.has_large = false;
    }

    /// Forgets every non-global translation (a CR3 write with CR4.PGE set).
    pub(crate) fn flush_non_global(&mut self) {
        for e in self.entries.iter_mut() {
            if !e.global {
                *e = EMPTY;
            }
        }
    }

    /// Forgets the translation of the page containing `la` (INVLPG).
    pub(crate) fn flush_page(&mut self, la: u64) {
        if self.has_large {
            self.flush_all();
        } else {
            let vpn = la >> 12;
            let e = &mut self.entries[(vpn as usize) % TLB_SIZE];
            if e.vpn == vpn {
                *e = EMPTY;
            }
        }
    }
}

#[inline]
fn page_fault(cpu: &mut Cpu, la: u64, code: u32) -> Exception {
    cpu.cr2 = la;
    Exception::with_code(Vector::PF, code)
}

impl Cpu {
    /// Translates linear address `la` for `access`, checking permissions, setting accessed and
    /// dirty bits and filling the TLB. Faults set CR2.
    pub(crate) fn translate(
        &mut self,
        la: u64,
        access: Access,
        who: Priv,
    ) -> Result<TlbEntry, Exception> {
        let user = match who {
            Priv::Current => self.cpl() == 3,
            Priv::Supervisor => false,
            Priv::User => true,
        };
        let vpn = la >> 12;
        let slot = (vpn as usize) % TLB_SIZE;
        let e = self.tlb.entries[slot];
        if e.vpn == vpn && self.permits(&e, access, user) && (access != Access::Write || e.dirty) {
            return Ok(e);
        }
        let e = self.walk(la, access, user)?;
        self.tlb.entries[slot] = e;
        Ok(e)
    }

    /// The host address of the RAM byte at linear `la` if the TLB already holds a translation
    /// of its page that lets the current privilege execute there (the fetch fast path; a miss
    /// goes through [`Cpu::translate`]).
    #[inline]
    pub(crate) fn tlb_exec_host(&self, la: u64) -> Option<*const u8> {
        let vpn = la >> 12;
        let e = &self.tlb.entries[(vpn as usize) % TLB_SIZE];
        if e.vpn != vpn || e.host.is_null() || e.nx || (!e.user && self.cpl() == 3) {
            return None;
        }
        Some(e.host.wrapping_add((la & 0xfff) as usize).cast_const())
    }

    /// The host address of `len` bytes at linear `la` if the TLB already holds a translation of
    /// their page that permits the access at the current privilege, the bytes are RAM within
    /// that page, and, for a write, the page is already dirty: the decoded-block fast path,
    /// which gives the access to the generic path (and [`Cpu::translate`]) otherwise.
    #[inline(always)]
    pub(crate) fn tlb_data_host(&self, la: u64, len: u32, write: bool) -> Option<*mut u8> {
        if (la & 0xfff) + u64::from(len) > 4096 {
            return None;
        }
        let vpn = la >> 12;
        let e = &self.tlb.entries[(vpn as usize) % TLB_SIZE];
        if e.vpn != vpn || e.host.is_null() {
            return None;
        }
        let user = self.cpl() == 3;
        if user && !e.user {
            return None;
        }
        if write && !(e.dirty && (e.writable || (!user && self.cr0 & CR0_WP == 0))) {
            return None;
        }
        Some(e.host.wrapping_add((la & 0xfff) as usize))
    }

    #[inline]
    fn permits(&self, e: &TlbEntry, access: Access, user: bool) -> bool {
        if user && !e.user {
            return false;
        }
        match access {
            Access::Read => true,
            Access::Write => e.writable || (!user && self.cr0 & CR0_WP == 0),
            Access::Exec => !e.nx,
        }
    }

    fn walk(&mut self, la: u64, access: Access, user: bool) -> Result<TlbEntry, Exception> {
        if self.cr0 & CR0_PG == 0 {
            let pa = la & 0xffff_ffff_ffff_f000;
            return Ok(TlbEntry {
                vpn: la >> 12,
                pa,
                host: self.mem.host_page(pa).unwrap_or(std::ptr::null_mut()),
                user: true,
                writable: true,
                nx: false,
                dirty: true,
                global: false,
            });
        }
        // Only 4-level paging is implemented; the exec layer refuses to enable other modes.
        let nxe = self.efer & EFER_NXE != 0;
        let mut code = 0u32;
        if access == Access::Write {
            code |= pf::W;
        }
        if user {
            code |= pf::U;
        }
        if access == Access::Exec && nxe {
            code |= pf::I;
        }
        let mut table = self.cr3 & ADDR_MASK;
        let (mut u, mut w, mut nx) = (true, true, false);
        let mut entries = [0u64; 4];
        let mut addrs = [0u64; 4];
        let mut level = 4usize;
        let (frame, page_size) = loop {
            let shift = 12 + 9 * (level as u32 - 1);
            let idx = (la >> shift) & 0x1ff;
            let ea = table + idx * 8;
            let Some(ent) = self.mem.read_u64_ram(ea) else {
                // A paging structure outside RAM reads as all ones: reserved bits set.
                return Err(page_fault(self, la, code | pf::P | pf::RSVD));
            };
            if ent & PTE_P == 0 {
                return Err(page_fault(self, la, code));
            }
            let mut rsvd = ent & RSVD_HIGH != 0 || (!nxe && ent & PTE_NX != 0);
            let large = ent & PTE_PS != 0 && level <= 3;
            if level == 4 && ent & PTE_PS != 0 {
                rsvd = true;
            }
            if large {
                let low = if level == 3 { 0x3fff_e000 } else { 0x1f_e000 };
                rsvd |= ent & low != 0;
            }
            if rsvd {
                return Err(page_fault(self, la, code | pf::P | pf::RSVD));
            }
            entries[4 - level] = ent;
            addrs[4 - level] = ea;
            u &= ent & PTE_U != 0;
            w &= ent & PTE_W != 0;
            nx |= nxe && ent & PTE_NX != 0;
            if level == 1 || large {
                break (ent & ADDR_MASK, shift);
            }
            table = ent & ADDR_MASK;
            level -= 1;
        };
        let leaf = entries[4 - level];
        let probe = TlbEntry {
            vpn: la >> 12,
            pa: 0,
            host: std::ptr::null_mut(),
            user: u,
            writable: w,
            nx,
            dirty: true,
            global: false,
        };
        if !self.permits(&probe, access, user) {
            return Err(page_fault(self, la, code | pf::P));
        }
        for (i, ent) in entries.iter().enumerate().take(5 - level) {
            if ent & PTE_A == 0 {
                self.mem.or_u64_ram(addrs[i], PTE_A);
            }
        }
        let dirty = leaf & PTE_D != 0 || access == Access::Write;
        if access == Access::Write && leaf & PTE_D == 0 {
            self.mem.or_u64_ram(addrs[4 - level], PTE_D);
        }
        let offset_in_large = la & ((1u64 << page_size) - 1) & !0xfff;
        let pa = (frame & !((1u64 << page_size) - 1)) | offset_in_large;
        if page_size > 12 {
            self.tlb.has_large = true;
        }
        Ok(TlbEntry {
            vpn: la >> 12,
            pa,
            host: self.mem.host_page(pa).unwrap_or(std::ptr::null_mut()),
            user: u,
            writable: w,
            nx,
            dirty,
            global: self.cr4 & CR4_PGE != 0 && leaf & PTE_G != 0,
        })
    }

    /// Reads `buf.len()` bytes at linear address `la`.
    pub fn read_lin(
        &mut self,
        io: &dyn IoHandler,
        la: u64,
        buf: &mut [u8],
        who: Priv,
    ) -> Result<(), Exception> {
        self.access_lin(io, la, buf.len(), Access::Read, who, |mem, pa, host, range, io| {
            let dst = &mut buf[range];
            if host.is_null() {
                mem.read(pa, dst, io);
            } else {
                // SAFETY: `host` points to the RAM page of `pa`, and the chunk lies within that
                // page (access_lin splits at page boundaries); `dst` is a distinct host buffer.
                unsafe { std::ptr::copy_nonoverlapping(host, dst.as_mut_ptr(), dst.len()) };
            }
        })
    }

    /// Writes `data` at linear address `la`. Every page is translated before any byte is written.
    pub fn write_lin(
        &mut self,
        io: &dyn IoHandler,
        la: u64,
        data: &[u8],
        who: Priv,
    ) -> Result<(), Exception> {
        self.access_lin(io, la, data.len(), Access::Write, who, |mem, pa, host, range, io| {
            let src = &data[range];
            if host.is_null() {
                mem.write(pa, src, io);
            } else {
                // SAFETY: `host` points to the RAM page of `pa`, and the chunk lies within that
                // page (access_lin splits at page boundaries); `src` is a distinct host buffer.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), host, src.len()) };
            }
        })
    }

    /// Checks that `len` bytes at `la` may be written, without writing (used before multi-part
    /// stores so that a fault leaves no partial effect).
    pub fn probe_write(&mut self, la: u64, len: usize, who: Priv) -> Result<(), Exception> {
        let end = la.wrapping_add(len.max(1) as u64 - 1);
        self.translate(la, Access::Write, who)?;
        if end >> 12 != la >> 12 {
            self.translate(end, Access::Write, who)?;
        }
        Ok(())
    }

    fn access_lin(
        &mut self,
        io: &dyn IoHandler,
        la: u64,
        len: usize,
        access: Access,
        who: Priv,
        mut f: impl FnMut(&crate::mem::PhysMem, u64, *mut u8, std::ops::Range<usize>, &dyn IoHandler),
    ) -> Result<(), Exception> {
        let la = if self.long_mode() { la } else { la & 0xffff_ffff };
        let first = 4096 - (la & 0xfff) as usize;
        if len <= first {
            let e = self.translate(la, access, who)?;
            let off = (la & 0xfff) as usize;
            let host = if e.host.is_null() { e.host } else { e.host.wrapping_add(off) };
            f(&self.mem, e.pa + off as u64, host, 0..len, io);
            return Ok(());
        }
        // Crosses into the next page: translate both before touching either.
        let la2 = la.wrapping_add(first as u64);
        let la2 = if self.long_mode() { la2 } else { la2 & 0xffff_ffff };
        let e1 = self.translate(la, access, who)?;
        let e2 = self.translate(la2, access, who)?;
        let off = (la & 0xfff) as usize;
        let h1 = if e1.host.is_null() { e1.host } else { e1.host.wrapping_add(off) };
        f(&self.mem, e1.pa + off as u64, h1, 0..first, io);
        f(&self.mem, e2.pa, e2.host, first..len, io);
        Ok(())
    }

    /// Reads a little-endian value of `size` bytes (1, 2, 4, 8) at linear `la`.
    #[inline]
    pub fn read_lin_u(
        &mut self,
        io: &dyn IoHandler,
        la: u64,
        size: u32,
        who: Priv,
    ) -> Result<u64, Exception> {
        let mut b = [0u8; 8];
        self.read_lin(io, la, &mut b[..(size as usize).min(8)], who)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes the low `size` bytes of `v` at linear `la`.
    #[inline]
    pub fn write_lin_u(
        &mut self,
        io: &dyn IoHandler,
        la: u64,
        size: u32,
        v: u64,
        who: Priv,
    ) -> Result<(), Exception> {
        self.write_lin(io, la, &v.to_le_bytes()[..(size as usize).min(8)], who)
    }

    /// The host address of `len` bytes of guest RAM at linear `la`, writable at the current
    /// privilege, if they lie in one RAM page and are aligned to `align` (for host atomics).
    /// Faults as a write would; `Ok(None)` for MMIO, page-crossing or misaligned operands.
    pub(crate) fn host_for_atomic(
        &mut self,
        la: u64,
        len: usize,
        align: usize,
    ) -> Result<Option<*mut u8>, Exception> {
        let la = if self.long_mode() { la } else { la & 0xffff_ffff };
        if (la & 0xfff) as usize + len > 4096 {
            return Ok(None);
        }
        let e = self.translate(la, Access::Write, Priv::Current)?;
        if e.host.is_null() {
            return Ok(None);
        }
        let p = e.host.wrapping_add((la & 0xfff) as usize);
        Ok(((p as usize) % align == 0).then_some(p))
    }

    /// Compare-and-swap of `size` bytes (1, 2, 4, 8) at linear `la`: writes `new` if memory
    /// still holds `old`. `Ok(None)` when the operand cannot be a host atomic (MMIO,
    /// misaligned, page-crossing); the caller then writes it plainly under its lock.
    pub(crate) fn cas_lin(
        &mut self,
        la: u64,
        size: u32,
        old: u64,
        new: u64,
    ) -> Result<Option<bool>, Exception> {
        use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering::SeqCst};
        let Some(p) = self.host_for_atomic(la, size as usize, size as usize)? else {
            return Ok(None);
        };
        // Each arm: `p` points to `size` bytes of mapped guest RAM within one page, aligned to
        // `size` (host_for_atomic checked both), kept alive by `self.mem`; guest memory is only
        // accessed by atomics or plain copies, which may race by the guest's own design.
        let swapped = match size {
            // SAFETY: see above, for 1 byte.
            1 => unsafe { AtomicU8::from_ptr(p) }
                .compare_exchange(old as u8, new as u8, SeqCst, SeqCst)
                .is_ok(),
            // SAFETY: see above, for 2 bytes.
            2 => unsafe { AtomicU16::from_ptr(p.cast()) }
                .compare_exchange(old as u16, new as u16, SeqCst, SeqCst)
                .is_ok(),
            // SAFETY: see above, for 4 bytes.
            4 => unsafe { AtomicU32::from_ptr(p.cast()) }
                .compare_exchange(old as u32, new as u32, SeqCst, SeqCst)
                .is_ok(),
            // SAFETY: see above, for 8 bytes.
            8 => unsafe { AtomicU64::from_ptr(p.cast()) }
                .compare_exchange(old, new, SeqCst, SeqCst)
                .is_ok(),
            _ => return Ok(None),
        };
        Ok(Some(swapped))
    }

    /// CMPXCHG16B on guest RAM at linear `la` (16-byte aligned): returns whether it swapped and
    /// the value memory held. `Ok(None)` when the operand is not RAM.
    pub(crate) fn cmpxchg16_lin(
        &mut self,
        la: u64,
        old: u128,
        new: u128,
    ) -> Result<Option<(bool, u128)>, Exception> {
        let Some(p) = self.host_for_atomic(la, 16, 16)? else {
            return Ok(None);
        };
        let (mut lo, mut hi) = (old as u64, (old >> 64) as u64);
        let swapped: u8;
        // SAFETY: `p` is 16-byte aligned and points to 16 bytes of mapped guest RAM in one page
        // (host_for_atomic); the host CPU has CMPXCHG16B (every x86-64 host Kiln supports).
        // RBX is reserved by the compiler, so the new low half is swapped into it and back.
        unsafe {
            std::arch::asm!(
                "xchg {nlo}, rbx",
                "lock cmpxchg16b [{p}]",
                "sete {ok}",
                "xchg {nlo}, rbx",
                p = in(reg) p,
                nlo = inout(reg) new as u64 => _,
                ok = out(reg_byte) swapped,
                in("rcx") (new >> 64) as u64,
                inout("rax") lo,
                inout("rdx") hi,
                options(nostack),
            );
        }
        Ok(Some((swapped != 0, u128::from(lo) | (u128::from(hi) << 64))))
    }

    /// Forgets cached translations after a CR3 load.
    pub(crate) fn flush_tlb_for_cr3(&mut self) {
        if self.cr4 & CR4_PGE != 0 {
            self.tlb.flush_non_global();
        } else {
            self.tlb.flush_all();
        }
    }

    /// Forgets every cached translation (CR0.PG, CR4.PGE/PAE changes, EFER changes).
    pub(crate) fn flush_tlb_all(&mut self) {
        self.tlb.flush_all();
    }

    /// Forgets the translation of one page (INVLPG).
    pub(crate) fn flush_tlb_page(&mut self, la: u64) {
        self.tlb.flush_page(la);
    }
}

// SAFETY: the raw host pointers in the TLB point into guest memory that the CPU's `PhysMem` keeps
// mapped; moving the TLB to another thread does not change their validity.
unsafe impl Send for Tlb {}
