//! String instructions: MOVS CMPS SCAS LODS STOS INS OUTS with REP/REPE/REPNE and DF.
//!
//! A repeated instruction runs at most [`MAX_ITERATIONS`] iterations per step and then continues
//! at the same RIP, so interrupts and kicks are taken inside long copies as on hardware. After a
//! fault the registers describe the iterations completed, and RIP still names the instruction.

use super::{Ctx, R};

use crate::flags::{self, mask, DF, ZF};
use crate::mmu::Priv;
use iced_x86::{Mnemonic, OpKind, Register};

/// Iterations of a REP string instruction per step.
pub const MAX_ITERATIONS: u64 = 16384;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Movs,
    Cmps,
    Scas,
    Lods,
    Stos,
    Ins,
    Outs,
}

/// Executes a string instruction.
pub(super) fn exec(c: &mut Ctx, m: Mnemonic) -> R {
    use Mnemonic as M;
    let kind = match m {
        M::Movsb | M::Movsw | M::Movsd | M::Movsq => Kind::Movs,
        M::Cmpsb | M::Cmpsw | M::Cmpsd | M::Cmpsq => Kind::Cmps,
        M::Scasb | M::Scasw | M::Scasd | M::Scasq => Kind::Scas,
        M::Lodsb | M::Lodsw | M::Lodsd | M::Lodsq => Kind::Lods,
        M::Stosb | M::Stosw | M::Stosd | M::Stosq => Kind::Stos,
        M::Insb | M::Insw | M::Insd => Kind::Ins,
        _ => Kind::Outs,
    };
    let size = c.i.memory_size().size() as u32;
    let asz = address_size(c);
    let am = mask(asz);
    let src_seg = c.i.memory_segment();
    let compare = matches!(kind, Kind::Cmps | Kind::Scas);
    let rep = c.i.has_rep_prefix() || c.i.has_repe_prefix() || c.i.has_repne_prefix();
    if matches!(kind, Kind::Ins | Kind::Outs) {
        super::system::check_io_privilege(c, c.cpu.gpr[2] as u16, size as usize)?;
    }
    let step = if c.cpu.flag(DF) { 0u64.wrapping_sub(u64::from(size)) } else { u64::from(size) };
    let mut done = 0u64;
    loop {
        if rep && c.cpu.gpr[1] & am == 0 {
            break;
        }
        if rep && done == MAX_ITERATIONS {
            c.next_rip = c.i.ip();
            return Ok(());
        }
        if rep && asz == 8 && step == u64::from(size) && matches!(kind, Kind::Stos | Kind::Movs) {
            let most = (c.cpu.gpr[1]).min(MAX_ITERATIONS - done);
            let k = bulk(c, kind, size, src_seg, most)?;
            if k > 0 {
                done += k;
                continue;
            }
        }
        let rsi = c.cpu.gpr[6] & am;
        let rdi = c.cpu.gpr[7] & am;
        let mut advance_si = false;
        let mut advance_di = false;
        match kind {
            Kind::Movs => {
                let la = c.lin(src_seg, rsi)?;
                let v = c.read_mem(la, size)?;
                let ld = c.lin(Register::ES, rdi)?;
                c.write_mem(ld, size, v)?;
                advance_si = true;
                advance_di = true;
            }
            Kind::Cmps => {
                let la = c.lin(src_seg, rsi)?;
                let a = c.read_mem(la, size)?;
                let ld = c.lin(Register::ES, rdi)?;
                let b = c.read_mem(ld, size)?;
                let r = a.wrapping_sub(b) & mask(size);
                c.cpu.set_arith(flags::sub(a, b, 0, r, size));
                advance_si = true;
                advance_di = true;
            }
            Kind::Scas => {
                let a = c.cpu.gpr[0] & mask(size);
                let ld = c.lin(Register::ES, rdi)?;
                let b = c.read_mem(ld, size)?;
                let r = a.wrapping_sub(b) & mask(size);
                c.cpu.set_arith(flags::sub(a, b, 0, r, size));
                advance_di = true;
            }
            Kind::Lods => {
                let la = c.lin(src_seg, rsi)?;
                let v = c.read_mem(la, size)?;
                c.cpu.set_gpr_sized(0, size, v);
                advance_si = true;
            }
            Kind::Stos => {
                let ld = c.lin(Register::ES, rdi)?;
                let v = c.cpu.gpr[0];
                c.write_mem(ld, size, v)?;
                advance_di = true;
            }
            Kind::Ins => {
                let ld = c.lin(Register::ES, rdi)?;
                c.cpu.probe_write(ld, size as usize, Priv::Current)?;
                let mut b = [0u8; 4];
                c.io.pio_read(c.cpu.gpr[2] as u16, &mut b[..size as usize]);
                c.write_mem(ld, size, u64::from(u32::from_le_bytes(b)))?;
                advance_di = true;
            }
            Kind::Outs => {
                let la = c.lin(src_seg, rsi)?;
                let v = c.read_mem(la, size)?;
                c.io.pio_write(c.cpu.gpr[2] as u16, &v.to_le_bytes()[..size as usize]);
                advance_si = true;
            }
        }
        if advance_si {
            c.cpu.set_gpr_sized(6, asz, rsi.wrapping_add(step));
        }
        if advance_di {
            c.cpu.set_gpr_sized(7, asz, rdi.wrapping_add(step));
        }
        if !rep {
            break;
        }
        let cnt = (c.cpu.gpr[1] & am).wrapping_sub(1);
        c.cpu.set_gpr_sized(1, asz, cnt);
        done += 1;
        if compare {
            let zf = c.cpu.flag(ZF);
            if (c.i.has_repe_prefix() && !zf) || (c.i.has_repne_prefix() && zf) {
                break;
            }
        }
        if matches!(kind, Kind::Ins | Kind::Outs) && c.io.stop_requested() {
            c.next_rip = if cnt & am == 0 { c.next_rip } else { c.i.ip() };
            return Ok(());
        }
    }
    Ok(())
}

/// Runs up to `most` iterations of a forward REP STOS or REP MOVS with 64-bit addresses at once,
/// as far as the operands stay within pages the TLB already maps as accessible RAM (dirty for
/// the destination); returns how many ran (0: none, the element-wise loop goes on, translating
/// and faulting as it must). Clearing and copying pages is most of what a booting kernel's
/// string instructions do, and this costs a few host instructions per element instead of two
/// translations.
fn bulk(
    c: &mut Ctx,
    kind: Kind,
    size: u32,
    src_seg: Register,
    most: u64,
) -> Result<u64, crate::fault::Exception> {
    let sz = u64::from(size);
    let dst_la = c.lin(Register::ES, c.cpu.gpr[7])?;
    let room = |la: u64| (4096 - (la & 0xfff)) / sz;
    let mut k = most.min(room(dst_la));
    let src = if kind == Kind::Movs {
        let src_la = c.lin(src_seg, c.cpu.gpr[6])?;
        k = k.min(room(src_la));
        if k == 0 {
            return Ok(0);
        }
        match c.cpu.tlb_data_host(src_la, (k * sz) as u32, false) {
            Some(p) => p.cast_const(),
            None => return Ok(0),
        }
    } else {
        std::ptr::null()
    };
    if k == 0 {
        return Ok(0);
    }
    let len = (k * sz) as usize;
    let Some(dst) = c.cpu.tlb_data_host(dst_la, len as u32, true) else {
        return Ok(0);
    };
    if kind == Kind::Stos {
        let v = c.cpu.gpr[0].to_le_bytes();
        for e in 0..k as usize {
            // SAFETY: `dst` addresses `len` bytes of one mapped RAM page (tlb_data_host checked
            // the range); element `e` lies within them.
            unsafe {
                std::ptr::copy_nonoverlapping(v.as_ptr(), dst.add(e * size as usize), size as usize)
            };
        }
    } else if (dst as usize) + len <= src as usize || (src as usize) + len <= dst as usize {
        // SAFETY: both ranges are `len` bytes of mapped RAM (checked by tlb_data_host) and do
        // not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
    } else {
        // Overlapping: element by element, forward, as the instruction does.
        for e in 0..k as usize {
            let at = e * size as usize;
            let mut v = [0u8; 8];
            // SAFETY: element `e` of both `len`-byte RAM ranges; `v` is a distinct buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(src.add(at), v.as_mut_ptr(), size as usize);
                std::ptr::copy_nonoverlapping(v.as_ptr(), dst.add(at), size as usize);
            }
        }
    }
    c.cpu.gpr[7] = c.cpu.gpr[7].wrapping_add(k * sz);
    if kind == Kind::Movs {
        c.cpu.gpr[6] = c.cpu.gpr[6].wrapping_add(k * sz);
    }
    c.cpu.gpr[1] -= k;
    Ok(k)
}

/// The address size of a string instruction, from its memory operand kinds.
fn address_size(c: &Ctx) -> u32 {
    for n in 0..c.i.op_count() {
        match c.i.op_kind(n) {
            OpKind::MemorySegRSI | OpKind::MemoryESRDI => return 8,
            OpKind::MemorySegESI | OpKind::MemoryESEDI => return 4,
            OpKind::MemorySegSI | OpKind::MemoryESDI => return 2,
            _ => {}
        }
    }
    if c.cpu.code64() {
        8
    } else {
        4
    }
}
