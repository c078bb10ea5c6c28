//! Lazily computed arithmetic flags for the decoded-block fast path.
//!
//! Most flag results are overwritten before anything reads them, so a block's ALU operations
//! record their operands and result instead of computing six flags; a conditional jump after
//! `cmp`/`sub`/`dec`/`test` then evaluates its condition straight from the operands. The
//! record lives only while blocks run: [`Lazy::materialize`] writes it into RFLAGS before
//! anything else (a generic instruction, an exception, the end of the run) can look.

use crate::flags::{self, condition, sext, sign_bit, CF};
use iced_x86::ConditionCode;

/// Which operation produced the pending flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// RFLAGS holds the current flags.
    None,
    /// `res = a + b` (ADD).
    Add,
    /// `res = a - b` (SUB, CMP, NEG with a = 0).
    Sub,
    /// A logical operation (AND, OR, XOR, TEST): CF and OF clear.
    Logic,
    /// `res = a + 1` (INC): CF is `carry`, kept from before.
    Inc,
    /// `res = a - 1` (DEC): CF is `carry`, kept from before.
    Dec,
}

/// The pending arithmetic flags: an operation, its size and its masked operands and result.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Lazy {
    kind: Kind,
    size: u32,
    a: u64,
    b: u64,
    res: u64,
    carry: u64,
}

impl Lazy {
    /// No pending flags.
    pub(crate) const NONE: Lazy = Lazy { kind: Kind::None, size: 8, a: 0, b: 0, res: 0, carry: 0 };

    /// Records a flag-setting operation on `size`-byte values (`a`, `b`, `res` masked).
    #[inline(always)]
    pub(crate) fn set(&mut self, kind: Kind, size: u32, a: u64, b: u64, res: u64) {
        *self = Lazy { kind, size, a, b, res, carry: self.carry };
    }

    /// Records INC or DEC, which keep CF: the current CF is captured first.
    #[inline(always)]
    pub(crate) fn set_keep_cf(&mut self, kind: Kind, size: u32, a: u64, res: u64, rflags: u64) {
        let carry = self.cf(rflags);
        *self = Lazy { kind, size, a, b: 1, res, carry };
    }

    /// CF (0 or 1) as it is now.
    #[inline(always)]
    pub(crate) fn cf(&self, rflags: u64) -> u64 {
        match self.kind {
            Kind::None => rflags & CF,
            Kind::Add => u64::from(self.res < self.a),
            Kind::Sub => u64::from(self.a < self.b),
            Kind::Logic => 0,
            Kind::Inc | Kind::Dec => self.carry,
        }
    }

    /// The six arithmetic flags as they are now.
    fn arith(&self, rflags: u64) -> u64 {
        let (a, b, res, size) = (self.a, self.b, self.res, self.size);
        match self.kind {
            Kind::None => rflags & flags::ARITH,
            Kind::Add => flags::add(a, b, 0, res, size),
            Kind::Sub => flags::sub(a, b, 0, res, size),
            Kind::Logic => flags::logic(res, size),
            Kind::Inc => (flags::add(a, 1, 0, res, size) & !CF) | self.carry,
            Kind::Dec => (flags::sub(a, 1, 0, res, size) & !CF) | self.carry,
        }
    }

    /// Writes the pending flags into `rflags`; afterwards RFLAGS is current.
    #[inline]
    pub(crate) fn materialize(&mut self, rflags: &mut u64) {
        if self.kind != Kind::None {
            *rflags = (*rflags & !flags::ARITH) | self.arith(*rflags);
            self.kind = Kind::None;
        }
    }

    /// Evaluates condition `cc`: the common conditions come straight from the operands, the
    /// rest from the computed flags.
    #[inline(always)]
    pub(crate) fn cond(&self, cc: ConditionCode, rflags: u64) -> bool {
        use ConditionCode as C;
        if self.kind == Kind::None {
            return condition(cc, rflags);
        }
        match cc {
            C::e => self.res == 0,
            C::ne => self.res != 0,
            C::s => self.res & sign_bit(self.size) != 0,
            C::ns => self.res & sign_bit(self.size) == 0,
            _ => self.cond_other(cc, rflags),
        }
    }

    /// The conditions other than e/ne/s/ns with flags pending.
    fn cond_other(&self, cc: ConditionCode, rflags: u64) -> bool {
        use ConditionCode as C;
        match (self.kind, cc) {
            (Kind::Sub, C::b) => self.a < self.b,
            (Kind::Sub, C::ae) => self.a >= self.b,
            (Kind::Sub, C::be) => self.a <= self.b,
            (Kind::Sub, C::a) => self.a > self.b,
            (Kind::Sub, C::l) => self.signed_a() < self.signed_b(),
            (Kind::Sub, C::ge) => self.signed_a() >= self.signed_b(),
            (Kind::Sub, C::le) => self.signed_a() <= self.signed_b(),
            (Kind::Sub, C::g) => self.signed_a() > self.signed_b(),
            (Kind::Logic, C::b | C::o) => false,
            (Kind::Logic, C::ae | C::no) => true,
            (Kind::Logic, C::be) => self.res == 0,
            (Kind::Logic, C::a) => self.res != 0,
            _ => condition(cc, self.arith(rflags)),
        }
    }

    fn signed_a(&self) -> i64 {
        sext(self.a, self.size) as i64
    }

    fn signed_b(&self) -> i64 {
        sext(self.b, self.size) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::mask;

    const CONDS: [ConditionCode; 16] = [
        ConditionCode::o,
        ConditionCode::no,
        ConditionCode::b,
        ConditionCode::ae,
        ConditionCode::e,
        ConditionCode::ne,
        ConditionCode::be,
        ConditionCode::a,
        ConditionCode::s,
        ConditionCode::ns,
        ConditionCode::p,
        ConditionCode::np,
        ConditionCode::l,
        ConditionCode::ge,
        ConditionCode::le,
        ConditionCode::g,
    ];

    /// xorshift64*, seeded, so a failure names its case.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// Values near the edges (0, 1, sign bits, all ones) as often as random ones.
        fn value(&mut self, size: u32) -> u64 {
            let edges = [0, 1, sign_bit(size), sign_bit(size) - 1, mask(size), mask(size) - 1];
            let r = self.next();
            if r % 2 == 0 {
                edges[(r / 2 % 6) as usize]
            } else {
                self.next() & mask(size)
            }
        }
    }

    /// Every condition evaluated lazily equals the condition on the eagerly computed flags,
    /// for every kind, size and carry-in, on 20000 seeded cases per kind.
    #[test]
    fn lazy_conditions_and_flags_equal_the_eager_computation() {
        let seed = 0x5eed_f1a9_u64;
        println!("seed {seed:#x}");
        let mut rng = Rng(seed);
        for kind in [Kind::Add, Kind::Sub, Kind::Logic, Kind::Inc, Kind::Dec] {
            for case in 0..20000 {
                let size = [1, 2, 4, 8][(rng.next() % 4) as usize];
                let (a, b) = (rng.value(size), rng.value(size));
                let before = flags::FIXED | (rng.next() & flags::ARITH);
                let m = mask(size);
                let (res, eager) = match kind {
                    Kind::Add => {
                        let r = a.wrapping_add(b) & m;
                        (r, flags::add(a, b, 0, r, size))
                    }
                    Kind::Sub => {
                        let r = a.wrapping_sub(b) & m;
                        (r, flags::sub(a, b, 0, r, size))
                    }
                    Kind::Logic => (a & b, flags::logic(a & b, size)),
                    Kind::Inc => {
                        let r = a.wrapping_add(1) & m;
                        (r, (flags::add(a, 1, 0, r, size) & !CF) | (before & CF))
                    }
                    _ => {
                        let r = a.wrapping_sub(1) & m;
                        (r, (flags::sub(a, 1, 0, r, size) & !CF) | (before & CF))
                    }
                };
                let mut lazy = Lazy::NONE;
                match kind {
                    Kind::Inc | Kind::Dec => lazy.set_keep_cf(kind, size, a, res, before),
                    Kind::Logic => lazy.set(kind, size, a & b, 0, res),
                    _ => lazy.set(kind, size, a, b, res),
                }
                let want = (before & !flags::ARITH) | eager;
                for cc in CONDS {
                    assert_eq!(
                        lazy.cond(cc, before),
                        condition(cc, want),
                        "{kind:?} case {case} size {size} a {a:#x} b {b:#x} {cc:?} (seed {seed:#x})"
                    );
                }
                assert_eq!(lazy.cf(before), want & CF, "{kind:?} case {case}: CF");
                let mut f = before;
                lazy.materialize(&mut f);
                assert_eq!(f, want, "{kind:?} case {case}: materialized flags");
            }
        }
    }
}
