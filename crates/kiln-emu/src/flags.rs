//! RFLAGS bits and the arithmetic that computes them.
//!
//! Flags are computed eagerly, one helper per instruction family, so every instruction's flag
//! effect is visible in one place and can be checked against the manuals and the host CPU.

use iced_x86::ConditionCode;

/// Carry flag.
pub const CF: u64 = 1 << 0;
/// Reserved bit 1, always set.
pub const FIXED: u64 = 1 << 1;
/// Parity flag (even parity of the low byte).
pub const PF: u64 = 1 << 2;
/// Auxiliary carry flag (carry out of bit 3).
pub const AF: u64 = 1 << 4;
/// Zero flag.
pub const ZF: u64 = 1 << 6;
/// Sign flag.
pub const SF: u64 = 1 << 7;
/// Trap flag.
pub const TF: u64 = 1 << 8;
/// Interrupt enable flag.
pub const IF: u64 = 1 << 9;
/// Direction flag.
pub const DF: u64 = 1 << 10;
/// Overflow flag.
pub const OF: u64 = 1 << 11;
/// I/O privilege level (two bits).
pub const IOPL: u64 = 3 << 12;
/// Nested task.
pub const NT: u64 = 1 << 14;
/// Resume flag.
pub const RF: u64 = 1 << 16;
/// Virtual-8086 mode.
pub const VM: u64 = 1 << 17;
/// Alignment check.
pub const AC: u64 = 1 << 18;
/// Virtual interrupt flag.
pub const VIF: u64 = 1 << 19;
/// Virtual interrupt pending.
pub const VIP: u64 = 1 << 20;
/// CPUID available.
pub const ID: u64 = 1 << 21;
/// The six arithmetic status flags.
pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
/// Every bit software can ever see set in RFLAGS.
pub const DEFINED: u64 = ARITH | FIXED | TF | IF | DF | IOPL | NT | RF | VM | AC | VIF | VIP | ID;

/// All ones in the low `size` bytes (`size` is 1, 2, 4 or 8).
#[inline]
pub fn mask(size: u32) -> u64 {
    // Branch-free: this runs several times per instruction.
    u64::MAX >> (64u32.wrapping_sub(size.min(8) * 8) & 63)
}

/// The sign bit of a `size`-byte value.
#[inline]
pub fn sign_bit(size: u32) -> u64 {
    1u64 << (size * 8 - 1)
}

/// Sign-extends the low `size` bytes of `v` to 64 bits.
#[inline]
pub fn sext(v: u64, size: u32) -> u64 {
    let shift = 64 - size * 8;
    (((v << shift) as i64) >> shift) as u64
}

/// PF for a result: set when its low byte has an even number of ones.
#[inline]
pub fn parity(v: u64) -> u64 {
    // 0x9669 holds, at bit n, the even parity of the nibble n; fold the byte into a nibble
    // first (without POPCNT, which the x86-64 baseline lacks, count_ones is a bit-twiddling
    // sequence on every flag computation).
    let nibble = (v ^ (v >> 4)) & 0xf;
    ((0x9669 >> nibble) & 1) << 2
}

/// SF, ZF and PF of a `size`-byte result.
#[inline]
pub fn szp(res: u64, size: u32) -> u64 {
    let res = res & mask(size);
    let mut f = parity(res);
    if res == 0 {
        f |= ZF;
    }
    if res & sign_bit(size) != 0 {
        f |= SF;
    }
    f
}

/// Flags of `res = a + b + carry` on `size` bytes.
#[inline]
pub fn add(a: u64, b: u64, carry: u64, res: u64, size: u32) -> u64 {
    let m = mask(size);
    let (a, b, res) = (a & m, b & m, res & m);
    let mut f = szp(res, size);
    let wide = u128::from(a) + u128::from(b) + u128::from(carry);
    if wide > u128::from(m) {
        f |= CF;
    }
    if (a ^ res) & (b ^ res) & sign_bit(size) != 0 {
        f |= OF;
    }
    f | ((a ^ b ^ res) & AF)
}

/// Flags of `res = a - b - borrow` on `size` bytes.
#[inline]
pub fn sub(a: u64, b: u64, borrow: u64, res: u64, size: u32) -> u64 {
    let m = mask(size);
    let (a, b, res) = (a & m, b & m, res & m);
    let mut f = szp(res, size);
    if u128::from(a) < u128::from(b) + u128::from(borrow) {
        f |= CF;
    }
    if (a ^ b) & (a ^ res) & sign_bit(size) != 0 {
        f |= OF;
    }
    f | ((a ^ b ^ res) & AF)
}

/// Condition code `cc` evaluated on the flags word `f`.
#[inline]
pub fn condition(cc: ConditionCode, f: u64) -> bool {
    use ConditionCode as C;
    let cf = f & CF != 0;
    let zf = f & ZF != 0;
    let sf = f & SF != 0;
    let of = f & OF != 0;
    let pf = f & PF != 0;
    match cc {
        C::None => true,
        C::o => of,
        C::no => !of,
        C::b => cf,
        C::ae => !cf,
        C::e => zf,
        C::ne => !zf,
        C::be => cf || zf,
        C::a => !cf && !zf,
        C::s => sf,
        C::ns => !sf,
        C::p => pf,
        C::np => !pf,
        C::l => sf != of,
        C::ge => sf == of,
        C::le => zf || sf != of,
        C::g => !zf && sf == of,
    }
}

/// Flags of a logical operation (AND, OR, XOR, TEST): CF and OF clear, AF clear (architecturally
/// undefined; every current CPU clears it).
#[inline]
pub fn logic(res: u64, size: u32) -> u64 {
    szp(res, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_sets_carry_and_overflow_at_the_operand_size() {
        // 0x7f + 1 = 0x80 on a byte: signed overflow, no carry, AF from bit 3.
        let f = add(0x7f, 1, 0, 0x80, 1);
        assert_eq!(f & (CF | OF | SF | ZF | AF), OF | SF | AF);
        // 0xff + 1 = 0 on a byte: carry and zero, no overflow.
        let f = add(0xff, 1, 0, 0x100, 1);
        assert_eq!(f & (CF | OF | ZF), CF | ZF);
        // u64::MAX + 0 + carry 1 carries out of 64 bits.
        assert_ne!(add(u64::MAX, 0, 1, 0, 8) & CF, 0);
    }

    #[test]
    fn sub_with_borrow_counts_the_borrow_in_the_carry() {
        // 0 - 0 - 1 borrows.
        let f = sub(0, 0, 1, u64::MAX, 8);
        assert_eq!(f & (CF | SF | ZF), CF | SF);
        // 0x80 - 1 on a byte overflows signed.
        assert_ne!(sub(0x80, 1, 0, 0x7f, 1) & OF, 0);
    }

    #[test]
    fn mask_covers_the_operand_size() {
        assert_eq!(mask(1), 0xff);
        assert_eq!(mask(2), 0xffff);
        assert_eq!(mask(4), 0xffff_ffff);
        assert_eq!(mask(8), u64::MAX);
        assert_eq!(mask(16), u64::MAX);
    }

    #[test]
    fn parity_matches_the_bit_count_for_every_byte() {
        for b in 0..=255u64 {
            let even = b.count_ones() % 2 == 0;
            assert_eq!(parity(b | 0xff00), if even { PF } else { 0 }, "byte {b:#x}");
        }
    }

    #[test]
    fn parity_counts_only_the_low_byte() {
        assert_eq!(parity(0x0300), PF);
        assert_eq!(parity(0x01), 0);
        assert_eq!(parity(0x03), PF);
    }

    #[test]
    fn sext_extends_from_the_given_size() {
        assert_eq!(sext(0x80, 1), 0xffff_ffff_ffff_ff80);
        assert_eq!(sext(0x7fff, 2), 0x7fff);
        assert_eq!(sext(0x8000_0000, 4), 0xffff_ffff_8000_0000);
    }
}
