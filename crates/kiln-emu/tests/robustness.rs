//! Guest input is everything the guest executes: random bytes run as code, at CPL0 and CPL3,
//! with random registers and random page-table damage, must never panic the emulator (debug
//! builds also trap integer overflow). Faults, triple faults and unserved features are fine.

mod common;

use common::*;
use kiln_emu::sandbox::Sandbox;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_code_never_panics_the_emulator() {
    let seed =
        std::env::var("KILN_EMU_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    eprintln!("robustness: KILN_EMU_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let mut sb = Sandbox::new().expect("sandbox");
    let mut stops = 0;
    let mut executed = 0u64;
    for case in 0..3000 {
        // Fresh machine state, random registers, 64 random code bytes.
        let mut fresh = Sandbox::new().expect("sandbox");
        std::mem::swap(&mut sb, &mut fresh);
        let mut code = [0u8; 64];
        for chunk in code.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next().to_le_bytes());
        }
        load(&mut sb, CODE, &code);
        for g in sb.cpu.gpr.iter_mut() {
            *g = match rng.next() % 4 {
                0 => rng.next() % 0x40_0000,
                1 => 0x20_0000 + rng.next() % 0x1000,
                _ => rng.next(),
            };
        }
        sb.cpu.gpr[4] = 0x30_0000 - (rng.next() % 64) * 8;
        sb.cpu.rflags = 0x2 | (rng.next() & 0xcd5);
        if case % 3 == 0 {
            sb.enter_user();
        }
        if case % 7 == 0 {
            // Damage a page-table entry of the data area.
            let k = 0x200 + rng.next() % 0x100;
            sb.poke_u64(0x4000 + 8 * k, rng.next());
        }
        match sb.run(200) {
            Ok(n) => executed += n,
            Err(e) => {
                stops += 1;
                if std::env::var_os("KILN_EMU_DEBUG").is_some() {
                    eprintln!("stop: {e}");
                }
            }
        }
    }
    eprintln!(
        "robustness: 3000 random programs, {executed} instructions, {stops} ended in a stop \
         (triple fault or unserved)"
    );
    // The programs must really run (fault handlers included), not stop at the first byte.
    assert!(executed > 3000 * 3, "only {executed} instructions executed");
    assert!(stops < 300, "{stops} programs stopped the CPU");
}
