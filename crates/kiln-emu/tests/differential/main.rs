//! Differential testing against the host CPU.
//!
//! Generated instruction sequences run natively in a ptrace'd child (see `native`) and in the
//! emulator at CPL3 in the sandbox machine, one instruction at a time. After every instruction
//! the test compares all general registers, RIP, the arithmetic flags and DF (minus the flags the
//! manuals leave undefined for that instruction, which are then copied from the host so later
//! instructions see the same inputs), and the data and stack pages. Faults are compared too:
//! SIGFPE must be #DE, SIGSEGV/SIGBUS #GP/#SS/#PF, SIGILL #UD, with the registers unchanged.
//!
//! emu is the vendor its CPUID names; cases where Intel and AMD differ are compared against that
//! vendor's result when the host is the other one (see `vendor`). Instructions the host CPU
//! lacks are left out of the programs, and the test says which. The report names the host's
//! vendor and counts the cases of each vendor-difference class; `KILN_VENDOR_LOG=<file>` also
//! writes it there (`scripts/test` prints it in its summary).
//!
//! `KILN_EMU_SEED=<n>` reproduces a run (the seed is printed); `KILN_EMU_CASES=<n>` sets the
//! number of programs (default 4000).

mod gen;
mod native;
mod tables;
mod vendor;

use gen::{Gen, Rng};
use iced_x86::{Decoder, DecoderOptions, FastFormatter};
use kiln_emu::fault::{ExecError, Vector};
use kiln_emu::flags;
use kiln_emu::sandbox::Sandbox;
use native::{Native, Stop, CODE, DATA, DATA_LEN, STACK_TOP};
use std::collections::BTreeMap;
use tables::Family;
use vendor::{Class, Host, Tally, X87Pointers};

const COMPARED: u64 = flags::ARITH | flags::DF;
const CMP_START: u64 = DATA;
const CMP_LEN: usize = DATA_LEN + 0x1000;

fn disasm(code: &[u8], ip: u64) -> String {
    let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut f = FastFormatter::new();
    let mut out = String::new();
    for i in d.iter() {
        let mut s = String::new();
        f.format(&i, &mut s);
        out.push_str(&format!("    {:#x}: {s}\n", i.ip()));
    }
    out
}

/// Native registers in the emulator's GPR order.
fn native_gprs(r: &libc::user_regs_struct) -> [u64; 16] {
    [
        r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ]
}

fn set_native_gprs(r: &mut libc::user_regs_struct, g: &[u64; 16]) {
    r.rax = g[0];
    r.rcx = g[1];
    r.rdx = g[2];
    r.rbx = g[3];
    r.rsp = g[4];
    r.rbp = g[5];
    r.rsi = g[6];
    r.rdi = g[7];
    r.r8 = g[8];
    r.r9 = g[9];
    r.r10 = g[10];
    r.r11 = g[11];
    r.r12 = g[12];
    r.r13 = g[13];
    r.r14 = g[14];
    r.r15 = g[15];
}

const NAMES: [&str; 16] = [
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];

/// Differences between the host and the emulator, as text (empty if equal).
fn diff(sb: &Sandbox, nat: &Native, r: &libc::user_regs_struct, undefined: u64) -> String {
    let mut out = String::new();
    let ng = native_gprs(r);
    for k in 0..16 {
        if ng[k] != sb.cpu.gpr[k] {
            out.push_str(&format!("  {}: host {:#x} emu {:#x}\n", NAMES[k], ng[k], sb.cpu.gpr[k]));
        }
    }
    if r.rip != sb.cpu.rip {
        out.push_str(&format!("  rip: host {:#x} emu {:#x}\n", r.rip, sb.cpu.rip));
    }
    let m = COMPARED & !undefined;
    if r.eflags & m != sb.cpu.rflags & m {
        out.push_str(&format!(
            "  rflags (mask {m:#x}): host {:#x} emu {:#x}\n",
            r.eflags & COMPARED,
            sb.cpu.rflags & COMPARED
        ));
    }
    let mut a = vec![0u8; CMP_LEN];
    let mut b = vec![0u8; CMP_LEN];
    nat.read(CMP_START, &mut a);
    sb.peek(CMP_START, &mut b);
    if let Some(pos) = (0..CMP_LEN).find(|&k| a[k] != b[k]) {
        let end = (pos + 16).min(CMP_LEN);
        out.push_str(&format!(
            "  memory at {:#x}: host {:02x?} emu {:02x?}\n",
            CMP_START + pos as u64,
            &a[pos..end],
            &b[pos..end]
        ));
    }
    out
}

/// The linear address of the memory operand of `i` (the generator's forms: R15 = DATA based,
/// FS/GS absolute, RIP-relative, with an optional index).
fn operand_address(sb: &Sandbox, i: &iced_x86::Instruction) -> u64 {
    let base = match (i.segment_prefix(), i.memory_base()) {
        (iced_x86::Register::FS, _) => sb.cpu.seg[kiln_emu::cpu::FS].base,
        (iced_x86::Register::GS, _) => sb.cpu.seg[kiln_emu::cpu::GS].base,
        // RIP-relative: iced gives the absolute address as the displacement.
        (_, iced_x86::Register::RIP) => 0,
        _ => DATA,
    };
    let index = match i.memory_index() {
        iced_x86::Register::None => 0,
        r => sb.cpu.reg(r).wrapping_mul(u64::from(i.memory_index_scale())),
    };
    base.wrapping_add(i.memory_displacement64()).wrapping_add(index)
}

/// For an instruction at `at` that stores x87 state (FXSAVE64, FNSTENV, FNSAVE): the address it
/// stored to and the byte range of the x87 instruction/data pointers in the image.
fn x87_image(sb: &Sandbox, at: u64) -> Option<(u64, std::ops::Range<u64>)> {
    let mut b = [0u8; 15];
    sb.peek(at, &mut b);
    let i = Decoder::with_ip(64, &b, at, DecoderOptions::NONE).decode();
    let la = operand_address(sb, &i);
    let ptrs = match (i.mnemonic(), i.memory_size().size()) {
        (iced_x86::Mnemonic::Fxsave64, _) => 6..24,
        (iced_x86::Mnemonic::Fnstenv | iced_x86::Mnemonic::Fnsave, 14 | 94) => 6..14,
        (iced_x86::Mnemonic::Fnstenv | iced_x86::Mnemonic::Fnsave, _) => 12..28,
        _ => return None,
    };
    Some((la, ptrs))
}

/// Appends `line` to the file named by environment variable `var`, if it is set.
fn log_to(var: &str, line: &str) {
    use std::io::Write;
    if let Ok(path) = std::env::var(var) {
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The index (emu's GPR order) of the 64-bit register containing `r`.
fn gpr_index(r: iced_x86::Register) -> usize {
    r.full_register() as usize - iced_x86::Register::RAX as usize
}

#[test]
fn emulator_matches_the_host_cpu_on_generated_code() {
    let seed = std::env::var("KILN_EMU_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let cases: u64 =
        std::env::var("KILN_EMU_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(4000);
    eprintln!("differential: KILN_EMU_SEED={seed} KILN_EMU_CASES={cases}");

    let host = Host::detect();
    let nat = match Native::spawn() {
        Ok(n) => n,
        Err(e) => {
            let line = format!(
                "SKIPPED: kiln-emu differential: the native oracle cannot run here (it needs \
                 fork and ptrace of its child): {e}"
            );
            eprintln!("{line}");
            log_to("KILN_SKIP_LOG", &line);
            return;
        }
    };
    let mut sb = Sandbox::new().expect("sandbox");
    let (claimed, claimed_name) = vendor::claimed(&sb);
    let differs = host.vendor != claimed;
    eprintln!(
        "differential: host CPU vendor {} ({:?}), emu reports {claimed_name} ({claimed:?}): \
         vendor-difference cases are compared {}",
        host.name,
        host.vendor,
        if differs { "against the claimed vendor's result" } else { "exactly" }
    );
    sb.enter_user();
    sb.cpu.advertise_simd = true;
    sb.cpu.cr4 |= kiln_emu::cpu::CR4_OSFXSR | kiln_emu::cpu::CR4_OSXMMEXCPT;
    let base_fp = {
        let mut f = nat.get_fpregs().expect("host FP registers");
        f.cwd = 0x37f;
        f.swd = 0;
        f.ftw = 0;
        f.fop = 0;
        f.rip = 0;
        f.rdp = 0;
        f.mxcsr = 0x1f80;
        f.st_space = [0; 32];
        f
    };
    // Only the oracle's pages are user pages, so stray accesses fault in both worlds.
    for page in (0..kiln_emu::sandbox::MAPPED).step_by(0x1000) {
        if !(native::BASE..native::BASE + native::LEN as u64).contains(&page) {
            sb.set_pte_flags(page, 0x3);
        } else if page != CODE {
            sb.set_pte_flags(page, 0x7 | (1 << 63));
        }
    }
    let gen = Gen::new(|m| host.lacks(m));
    for (m, feature) in &gen.excluded {
        let line = format!(
            "SKIPPED: kiln-emu differential {m:?}: the host CPU lacks {feature}, so it cannot be \
             compared natively here"
        );
        eprintln!("{line}");
        log_to("KILN_SKIP_LOG", &line);
    }
    let mut tally = Tally::default();
    let mut rng = Rng::new(seed);
    let mut failures: Vec<String> = vec![];
    let mut compared = 0u64;
    let mut faults = 0u64;
    let mut per_family: BTreeMap<Family, u64> = BTreeMap::new();
    let mut programs = 0u64;
    let start = std::time::Instant::now();

    for case in 0..cases {
        let prog = gen.program(&mut rng, CODE);
        programs += 1;
        for f in &prog.families {
            *per_family.entry(*f).or_default() += 1;
        }
        let mut code = prog.code.clone();
        let end = CODE + code.len() as u64;
        code.push(0xcc);
        // On a host of the other vendor, the operand-size prefixes on near branches become DS
        // prefixes: the claimed vendor's (Intel's) meaning of the same bytes.
        let mut host_code = code.clone();
        if differs {
            for &off in &prog.branch_size_prefixes {
                host_code[off] = 0x3e;
            }
        }
        nat.write(CODE, &host_code);
        sb.poke(CODE, &code);
        let mut x87 = X87Pointers::default();
        let mut data = vec![0u8; CMP_LEN];
        for chunk in data.chunks_mut(8) {
            let v = rng.interesting().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        nat.write(CMP_START, &data);
        sb.poke(CMP_START, &data);

        let mut g = [0u64; 16];
        for v in g.iter_mut() {
            *v = rng.interesting();
        }
        g[4] = STACK_TOP;
        g[15] = DATA;
        let mut fl = 0x202 | (rng.next() & flags::ARITH);
        if rng.chance(15) {
            fl |= flags::DF;
        }
        let mut regs = nat.base_regs;
        set_native_gprs(&mut regs, &g);
        regs.rip = CODE;
        regs.eflags = fl;
        regs.fs_base = DATA + 0x400;
        regs.gs_base = DATA + 0xc00;
        sb.cpu.seg[kiln_emu::cpu::FS].base = DATA + 0x400;
        sb.cpu.seg[kiln_emu::cpu::GS].base = DATA + 0xc00;
        nat.set_regs(&regs).expect("set host registers");
        let simd = prog.families.iter().any(|f| tables::uses_vector_state(*f));
        if simd {
            let mut fp = base_fp;
            // Random rounding mode, sometimes DAZ/FTZ, sometimes an unmasked exception.
            let mut mxcsr = 0x1f80 | ((rng.below(4) as u32) << 13);
            if rng.chance(15) {
                mxcsr |= 0x8040;
            }
            // Unmask one of IM, DM, ZM, PE now and then (OM/UM: see ssefp.rs, known gaps).
            if rng.chance(10) {
                mxcsr &= !(1 << (7 + *rng.pick(&[0u64, 1, 2, 5])));
            }
            fp.mxcsr = mxcsr;
            // x87: random registers, tags and TOP; mostly the default control word.
            let mut fpu = kiln_emu::cpu::Fpu::default();
            if rng.chance(30) {
                fpu.fcw = 0x37f ^ ((rng.below(16) as u16) << 8);
            }
            if rng.chance(10) {
                fpu.fcw &= !(1 << rng.below(6));
            }
            fpu.fsw = (rng.below(8) as u16) << 11;
            fpu.ftw = rng.next() as u8;
            for k in 0..8 {
                fpu.st[k][..10].copy_from_slice(&rng.float80());
                for w in 0..4 {
                    let mut b = [0u8; 4];
                    b.copy_from_slice(&fpu.st[k][4 * w..4 * w + 4]);
                    fp.st_space[4 * k + w] = u32::from_le_bytes(b);
                }
            }
            fp.cwd = fpu.fcw;
            fp.swd = fpu.fsw;
            fp.ftw = u16::from(fpu.ftw);
            for k in 0..16 {
                let v = rng.xmm();
                sb.cpu.xmm[k] = v;
                for w in 0..4 {
                    fp.xmm_space[4 * k + w] = (v >> (32 * w)) as u32;
                }
            }
            nat.set_fpregs(&fp).expect("set host FP registers");
            sb.cpu.mxcsr = fp.mxcsr;
            sb.cpu.fpu = fpu;
        }
        sb.cpu.gpr = g;
        sb.cpu.rip = CODE;
        sb.cpu.rflags = fl;
        sb.cpu.halted = false;

        let mut steps = 0;
        'steps: while sb.cpu.rip != end && steps < 64 {
            steps += 1;
            let at = sb.cpu.rip;
            // A fetch fault is compared like any other fault below.
            let decoded = sb.cpu.fetch_decode(&sb.io).ok();
            let undefined = decoded.as_ref().map_or(0, |i| tables::undefined_flags(i, &sb.cpu.gpr));
            let operand = decoded.as_ref().map_or(0, |i| {
                if (0..i.op_count()).any(|n| i.op_kind(n) == iced_x86::OpKind::Memory) {
                    operand_address(&sb, i)
                } else {
                    0
                }
            });
            let class = decoded.as_ref().and_then(|i| vendor::classify(&sb, i, at, operand));
            if let Some(c) = class {
                tally.add(c);
            }
            // What the x87 model needs: the instruction's bytes and its operand before it runs.
            let mut ibytes = [0u8; 15];
            sb.peek(at, &mut ibytes);
            let mut image = [0u8; 112];
            if operand != 0 {
                let n = ((CMP_START + CMP_LEN as u64).saturating_sub(operand) as usize).min(112);
                sb.peek(operand, &mut image[..n]);
            }
            let fp_before = if class == Some(Class::MxcsrMm) {
                Some(nat.get_fpregs().expect("host FP registers"))
            } else {
                None
            };
            // Host: step until RIP moves (REP instructions may trap per iteration) or a signal.
            let mut host_stop = Stop::Trap;
            let mut r = nat.get_regs().expect("host registers");
            let r_before = r;
            for _ in 0..10_000 {
                host_stop = nat.step().expect("host single step");
                r = nat.get_regs().expect("host registers");
                if host_stop != Stop::Trap || r.rip != at {
                    break;
                }
            }
            // Emulator: the same.
            let mut emu_fault = None;
            for _ in 0..10_000 {
                // Every other program runs through the decoded-block fast path (one instruction
                // per call, so each is compared), the others through the generic interpreter.
                let done = if case % 2 == 1 {
                    sb.blocks.execute(&mut sb.cpu, &sb.io, 1).map(|_| ()).map_err(|(_, e)| e)
                } else {
                    sb.cpu.execute_one(&sb.io)
                };
                match done {
                    Ok(()) => {}
                    Err(ExecError::Fault(e)) => {
                        emu_fault = Some(e.vector);
                        break;
                    }
                    Err(ExecError::Unsupported(w)) => {
                        failures.push(format!("case {case}: unsupported {w} at {at:#x}"));
                        break 'steps;
                    }
                }
                if sb.cpu.rip != at {
                    break;
                }
            }
            compared += 1;
            // Turn the host's outcome into the claimed vendor's where the vendors differ.
            match class {
                Some(Class::NonCanonicalCall) if differs && host_stop != Stop::Trap => {
                    // Intel stores the return address, then faults with RSP unchanged.
                    let len = decoded.as_ref().map_or(0, |i| i.len() as u64);
                    let slot = r.rsp.wrapping_sub(8);
                    if (native::STACK..=native::STACK + 0xff8).contains(&slot) {
                        nat.write(slot, &(at + len).to_le_bytes());
                    }
                }
                Some(Class::ZeroBitScan32) if differs && host_stop == Stop::Trap => {
                    // Intel writes the old low half, zero-extended.
                    if let Some(i) = &decoded {
                        let mut g = native_gprs(&r);
                        g[gpr_index(i.op0_register())] &= 0xffff_ffff;
                        set_native_gprs(&mut r, &g);
                        nat.set_regs(&r).expect("set host registers");
                    }
                }
                Some(Class::MxcsrMm) if differs && host_stop == Stop::Trap => {
                    // Intel raises #GP(0) with nothing changed.
                    host_stop = Stop::Signal(libc::SIGSEGV);
                    r = r_before;
                    nat.set_regs(&r).expect("set host registers");
                    if let Some(fp) = &fp_before {
                        nat.set_fpregs(fp).expect("set host FP registers");
                    }
                }
                _ => {}
            }
            if host_stop == Stop::Trap && emu_fault.is_none() {
                // The x87 pointers of a saved image: emu's declared model on every host.
                if let Some((la, ptrs)) = x87_image(&sb, at) {
                    tally.add(Class::X87Pointers);
                    for (off, bytes) in x87.image(ptrs) {
                        nat.write(la + off, &bytes);
                    }
                }
                if let Some(i) = &decoded {
                    let offset = operand.wrapping_sub(vendor::segment_base(&sb, i));
                    x87.after(i, at, &ibytes, offset, &image);
                }
            }
            let fault_ok = matches!(
                (host_stop, emu_fault),
                (Stop::Trap, None)
                    | (Stop::Signal(libc::SIGFPE), Some(Vector::DE | Vector::XM | Vector::MF))
                    | (Stop::Signal(libc::SIGILL), Some(Vector::UD))
                    | (
                        Stop::Signal(libc::SIGSEGV | libc::SIGBUS),
                        Some(Vector::GP | Vector::SS | Vector::PF)
                    )
            );
            let mut d = diff(&sb, &nat, &r, undefined);
            if simd {
                let fp = nat.get_fpregs().expect("host FP registers");
                for k in 0..16 {
                    let mut v = 0u128;
                    for w in 0..4 {
                        v |= u128::from(fp.xmm_space[4 * k + w]) << (32 * w);
                    }
                    if v != sb.cpu.xmm[k] {
                        d.push_str(&format!(
                            "  xmm{k}: host {v:#034x} emu {:#034x}\n",
                            sb.cpu.xmm[k]
                        ));
                    }
                }
                // The x87/MMX registers and the abridged tag word.
                for k in 0..8 {
                    let mut host = [0u8; 10];
                    for w in 0..3 {
                        let b = fp.st_space[4 * k + w].to_le_bytes();
                        let n = (10 - 4 * w).min(4);
                        host[4 * w..4 * w + n].copy_from_slice(&b[..n]);
                    }
                    if host[..] != sb.cpu.fpu.st[k][..10] {
                        d.push_str(&format!(
                            "  st{k}/mm: host {host:02x?} emu {:02x?}\n",
                            &sb.cpu.fpu.st[k][..10]
                        ));
                    }
                }
                if fp.ftw & 0xff != u16::from(sb.cpu.fpu.ftw) {
                    d.push_str(&format!("  ftw: host {:#x} emu {:#x}\n", fp.ftw, sb.cpu.fpu.ftw));
                }
                if fp.mxcsr != sb.cpu.mxcsr || fp.cwd != sb.cpu.fpu.fcw || fp.swd != sb.cpu.fpu.fsw
                {
                    d.push_str(&format!(
                        "  mxcsr/fcw/fsw: host {:#x}/{:#x}/{:#x} emu {:#x}/{:#x}/{:#x}\n",
                        fp.mxcsr, fp.cwd, fp.swd, sb.cpu.mxcsr, sb.cpu.fpu.fcw, sb.cpu.fpu.fsw
                    ));
                }
            }
            if !fault_ok || !d.is_empty() {
                failures.push(format!(
                    "case {case} (seed {seed}), instruction at {at:#x}: {}  host stop {host_stop:?}, emulator fault {emu_fault:?}\n{d}  program:\n{}",
                    disasm(&ibytes, at).trim_start(),
                    disasm(&prog.code, CODE)
                ));
                break;
            }
            if host_stop != Stop::Trap {
                faults += 1;
                break;
            }
            // Adopt the host's values of the undefined flags.
            sb.cpu.rflags = (sb.cpu.rflags & !undefined) | (r.eflags & undefined);
        }
        if failures.len() >= 20 {
            break;
        }
    }
    let elapsed = start.elapsed();
    let summary = format!(
        "kiln-emu differential (seed {seed}): host {} ({:?}), emu {claimed_name}; {}",
        host.name,
        host.vendor,
        tally.report(&host, claimed).join("; ")
    );
    eprintln!("{summary}");
    log_to("KILN_VENDOR_LOG", &summary);
    eprintln!(
        "differential: {compared} instructions in {programs} programs compared in {elapsed:.2?}, \
         {faults} faults compared; op-codes per family {:?}; programs per family {per_family:?}",
        gen.table_sizes()
    );
    assert!(
        failures.is_empty(),
        "{} mismatches (reproduce with KILN_EMU_SEED={seed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
