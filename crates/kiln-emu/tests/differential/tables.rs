//! What the generator covers: instruction families by mnemonic, the operand kinds it can
//! build, and the arithmetic flags each instruction leaves undefined (masked in comparisons).

use iced_x86::{Instruction, Mnemonic, OpCodeOperandKind as K, OpKind};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Alu,
    Shift,
    MulDiv,
    Bits,
    Data,
    CondMove,
    Stack,
    String,
    Branch,
    Sse,
    SseFp,
    X87,
    /// MMX-register forms of the packed-integer instructions, EMMS, and the MMX conversions.
    Mmx,
    Sse3,
    Ssse3,
    Sse41,
    /// The SSE4.2 string compares and PCMPGTQ.
    Sse42,
    Crc32,
    Popcnt,
}

pub const FAMILIES: [Family; 19] = [
    Family::X87,
    Family::Sse,
    Family::SseFp,
    Family::Mmx,
    Family::Sse3,
    Family::Ssse3,
    Family::Sse41,
    Family::Sse42,
    Family::Crc32,
    Family::Popcnt,
    Family::Alu,
    Family::Shift,
    Family::MulDiv,
    Family::Bits,
    Family::Data,
    Family::CondMove,
    Family::Stack,
    Family::String,
    Family::Branch,
];

pub fn family(m: Mnemonic) -> Option<Family> {
    use Mnemonic as M;
    Some(match m {
        M::Add
        | M::Adc
        | M::Sub
        | M::Sbb
        | M::Cmp
        | M::And
        | M::Or
        | M::Xor
        | M::Test
        | M::Inc
        | M::Dec
        | M::Neg
        | M::Not => Family::Alu,
        M::Shl
        | M::Sal
        | M::Shr
        | M::Sar
        | M::Rol
        | M::Ror
        | M::Rcl
        | M::Rcr
        | M::Shld
        | M::Shrd => Family::Shift,
        M::Mul | M::Imul | M::Div | M::Idiv => Family::MulDiv,
        M::Bt
        | M::Bts
        | M::Btr
        | M::Btc
        | M::Bsf
        | M::Bsr
        | M::Tzcnt
        | M::Lzcnt
        | M::Bswap
        | M::Andn
        | M::Bextr
        | M::Blsi
        | M::Blsmsk
        | M::Blsr => Family::Bits,
        M::Mov
        | M::Movzx
        | M::Movsx
        | M::Movsxd
        | M::Lea
        | M::Xchg
        | M::Cmpxchg
        | M::Xadd
        | M::Cmpxchg8b
        | M::Cmpxchg16b
        | M::Cbw
        | M::Cwde
        | M::Cdqe
        | M::Cwd
        | M::Cdq
        | M::Cqo
        | M::Lahf
        | M::Sahf
        | M::Clc
        | M::Stc
        | M::Cmc => Family::Data,
        M::Seto
        | M::Setno
        | M::Setb
        | M::Setae
        | M::Sete
        | M::Setne
        | M::Setbe
        | M::Seta
        | M::Sets
        | M::Setns
        | M::Setp
        | M::Setnp
        | M::Setl
        | M::Setge
        | M::Setle
        | M::Setg
        | M::Cmovo
        | M::Cmovno
        | M::Cmovb
        | M::Cmovae
        | M::Cmove
        | M::Cmovne
        | M::Cmovbe
        | M::Cmova
        | M::Cmovs
        | M::Cmovns
        | M::Cmovp
        | M::Cmovnp
        | M::Cmovl
        | M::Cmovge
        | M::Cmovle
        | M::Cmovg => Family::CondMove,
        M::Push | M::Pop | M::Call | M::Ret | M::Enter | M::Leave | M::Xlatb => Family::Stack,
        M::Jo
        | M::Jno
        | M::Jb
        | M::Jae
        | M::Je
        | M::Jne
        | M::Jbe
        | M::Ja
        | M::Js
        | M::Jns
        | M::Jp
        | M::Jnp
        | M::Jl
        | M::Jge
        | M::Jle
        | M::Jg
        | M::Loop
        | M::Loope
        | M::Loopne
        | M::Jrcxz => Family::Branch,
        M::Movdqa
        | M::Movdqu
        | M::Movaps
        | M::Movups
        | M::Movapd
        | M::Movupd
        | M::Movntdq
        | M::Movntps
        | M::Movntpd
        | M::Movnti
        | M::Movd
        | M::Movq
        | M::Movss
        | M::Movsd
        | M::Movlps
        | M::Movhps
        | M::Movlpd
        | M::Movhpd
        | M::Movhlps
        | M::Movlhps
        | M::Pxor
        | M::Por
        | M::Pand
        | M::Pandn
        | M::Xorps
        | M::Xorpd
        | M::Orps
        | M::Orpd
        | M::Andps
        | M::Andpd
        | M::Andnps
        | M::Andnpd
        | M::Paddb
        | M::Paddw
        | M::Paddd
        | M::Paddq
        | M::Psubb
        | M::Psubw
        | M::Psubd
        | M::Psubq
        | M::Pcmpeqb
        | M::Pcmpeqw
        | M::Pcmpeqd
        | M::Pcmpgtb
        | M::Pcmpgtw
        | M::Pcmpgtd
        | M::Pminub
        | M::Pmaxub
        | M::Pminsw
        | M::Pmaxsw
        | M::Paddusb
        | M::Paddusw
        | M::Psubusb
        | M::Psubusw
        | M::Paddsb
        | M::Paddsw
        | M::Psubsb
        | M::Psubsw
        | M::Pavgb
        | M::Pavgw
        | M::Pmullw
        | M::Pmulhw
        | M::Pmulhuw
        | M::Pmuludq
        | M::Pmovmskb
        | M::Pinsrw
        | M::Pextrw
        | M::Pmaddwd
        | M::Psadbw
        | M::Movmskps
        | M::Movmskpd
        | M::Punpcklbw
        | M::Punpcklwd
        | M::Punpckldq
        | M::Punpcklqdq
        | M::Punpckhbw
        | M::Punpckhwd
        | M::Punpckhdq
        | M::Punpckhqdq
        | M::Pshufd
        | M::Pshuflw
        | M::Pshufhw
        | M::Shufps
        | M::Shufpd
        | M::Psllw
        | M::Pslld
        | M::Psllq
        | M::Psrlw
        | M::Psrld
        | M::Psrlq
        | M::Psraw
        | M::Psrad
        | M::Pslldq
        | M::Psrldq
        | M::Packsswb
        | M::Packuswb
        | M::Packssdw
        | M::Ldmxcsr
        | M::Stmxcsr
        | M::Fxsave64
        | M::Fxrstor64
        | M::Fnstsw
        | M::Fnstcw
        | M::Fninit => Family::Sse,
        M::Addss
        | M::Addsd
        | M::Addps
        | M::Addpd
        | M::Subss
        | M::Subsd
        | M::Subps
        | M::Subpd
        | M::Mulss
        | M::Mulsd
        | M::Mulps
        | M::Mulpd
        | M::Divss
        | M::Divsd
        | M::Divps
        | M::Divpd
        | M::Minss
        | M::Minsd
        | M::Minps
        | M::Minpd
        | M::Maxss
        | M::Maxsd
        | M::Maxps
        | M::Maxpd
        | M::Sqrtss
        | M::Sqrtsd
        | M::Sqrtps
        | M::Sqrtpd
        | M::Unpcklps
        | M::Unpckhps
        | M::Unpcklpd
        | M::Unpckhpd
        | M::Cvtss2sd
        | M::Cvtsd2ss
        | M::Cvtps2pd
        | M::Cvtpd2ps
        | M::Cvtdq2ps
        | M::Cvtps2dq
        | M::Cvttps2dq
        | M::Cvtdq2pd
        | M::Cvtpd2dq
        | M::Cvttpd2dq
        | M::Cmpps
        | M::Cmppd
        | M::Cmpss
        | M::Comiss
        | M::Comisd
        | M::Ucomiss
        | M::Ucomisd
        | M::Cvtsi2ss
        | M::Cvtsi2sd
        | M::Cvtss2si
        | M::Cvtsd2si
        | M::Cvttss2si
        | M::Cvttsd2si => Family::SseFp,
        M::F2xm1
        | M::Fabs
        | M::Fadd
        | M::Faddp
        | M::Fbld
        | M::Fbstp
        | M::Fchs
        | M::Fcmovb
        | M::Fcmovbe
        | M::Fcmove
        | M::Fcmovnb
        | M::Fcmovnbe
        | M::Fcmovne
        | M::Fcmovnu
        | M::Fcmovu
        | M::Fcom
        | M::Fcomi
        | M::Fcomip
        | M::Fcomp
        | M::Fcompp
        | M::Fcos
        | M::Fdecstp
        | M::Fdiv
        | M::Fdivp
        | M::Fdivr
        | M::Fdivrp
        | M::Ffree
        | M::Fiadd
        | M::Ficom
        | M::Ficomp
        | M::Fidiv
        | M::Fidivr
        | M::Fild
        | M::Fimul
        | M::Fincstp
        | M::Fist
        | M::Fistp
        | M::Fisttp
        | M::Fisub
        | M::Fisubr
        | M::Fld
        | M::Fld1
        | M::Fldl2e
        | M::Fldl2t
        | M::Fldlg2
        | M::Fldln2
        | M::Fldpi
        | M::Fldz
        | M::Fmul
        | M::Fmulp
        | M::Fnop
        | M::Fpatan
        | M::Fprem
        | M::Fprem1
        | M::Fptan
        | M::Frndint
        | M::Fscale
        | M::Fsin
        | M::Fsincos
        | M::Fsqrt
        | M::Fst
        | M::Fstp
        | M::Fsub
        | M::Fsubp
        | M::Fsubr
        | M::Fsubrp
        | M::Ftst
        | M::Fucom
        | M::Fucomi
        | M::Fucomip
        | M::Fucomp
        | M::Fucompp
        | M::Fxam
        | M::Fxch
        | M::Fxtract
        | M::Fyl2x
        | M::Fyl2xp1
        | M::Fldcw
        | M::Fnclex
        | M::Fnstenv
        | M::Fldenv
        | M::Fnsave
        | M::Frstor => Family::X87,
        M::Popcnt => Family::Popcnt,
        M::Crc32 => Family::Crc32,
        M::Maskmovdqu => Family::Sse,
        M::Emms | M::Pshufw | M::Movq2dq | M::Movdq2q | M::Movntq | M::Maskmovq => Family::Mmx,
        M::Cvtpi2ps | M::Cvtps2pi | M::Cvttps2pi | M::Cvtpi2pd | M::Cvtpd2pi | M::Cvttpd2pi => {
            Family::Mmx
        }
        M::Addsubps
        | M::Addsubpd
        | M::Haddps
        | M::Haddpd
        | M::Hsubps
        | M::Hsubpd
        | M::Lddqu
        | M::Movddup
        | M::Movshdup
        | M::Movsldup => Family::Sse3,
        M::Pabsb
        | M::Pabsw
        | M::Pabsd
        | M::Psignb
        | M::Psignw
        | M::Psignd
        | M::Phaddw
        | M::Phaddd
        | M::Phaddsw
        | M::Phsubw
        | M::Phsubd
        | M::Phsubsw
        | M::Pmaddubsw
        | M::Pmulhrsw
        | M::Pshufb
        | M::Palignr => Family::Ssse3,
        M::Blendps
        | M::Blendpd
        | M::Blendvps
        | M::Blendvpd
        | M::Pblendvb
        | M::Pblendw
        | M::Dpps
        | M::Dppd
        | M::Extractps
        | M::Insertps
        | M::Movntdqa
        | M::Mpsadbw
        | M::Packusdw
        | M::Pcmpeqq
        | M::Pextrb
        | M::Pextrd
        | M::Pextrq
        | M::Phminposuw
        | M::Pinsrb
        | M::Pinsrd
        | M::Pinsrq
        | M::Pmaxsb
        | M::Pmaxsd
        | M::Pmaxud
        | M::Pmaxuw
        | M::Pminsb
        | M::Pminsd
        | M::Pminud
        | M::Pminuw
        | M::Pmovsxbw
        | M::Pmovsxbd
        | M::Pmovsxbq
        | M::Pmovsxwd
        | M::Pmovsxwq
        | M::Pmovsxdq
        | M::Pmovzxbw
        | M::Pmovzxbd
        | M::Pmovzxbq
        | M::Pmovzxwd
        | M::Pmovzxwq
        | M::Pmovzxdq
        | M::Pmuldq
        | M::Pmulld
        | M::Ptest
        | M::Roundps
        | M::Roundpd
        | M::Roundss
        | M::Roundsd => Family::Sse41,
        M::Pcmpestri
        | M::Pcmpestri64
        | M::Pcmpestrm
        | M::Pcmpestrm64
        | M::Pcmpistri
        | M::Pcmpistrm
        | M::Pcmpgtq => Family::Sse42,
        _ => return None,
    })
}

/// True for families whose programs use the vector and x87 state (set up and compared).
pub fn uses_vector_state(f: Family) -> bool {
    matches!(
        f,
        Family::Sse
            | Family::SseFp
            | Family::X87
            | Family::Mmx
            | Family::Sse3
            | Family::Ssse3
            | Family::Sse41
            | Family::Sse42
    )
}

/// The family of op-code `code`: by mnemonic, with MMX-register forms of any mnemonic as MMX.
pub fn family_of(code: iced_x86::Code) -> Option<Family> {
    let op = code.op_code();
    let f = family(op.mnemonic())?;
    let mmx = op.op_kinds().iter().any(|k| matches!(k, K::mm_reg | K::mm_rm | K::mm_or_mem));
    Some(if mmx { Family::Mmx } else { f })
}

pub fn operand_supported(k: K) -> bool {
    matches!(
        k,
        K::r8_or_mem
            | K::r16_or_mem
            | K::r32_or_mem
            | K::r64_or_mem
            | K::r8_reg
            | K::r8_opcode
            | K::r16_reg
            | K::r16_opcode
            | K::r32_reg
            | K::r32_opcode
            | K::r32_vvvv
            | K::r64_reg
            | K::r64_opcode
            | K::r64_vvvv
            | K::al
            | K::cl
            | K::ax
            | K::eax
            | K::rax
            | K::imm8
            | K::imm8_const_1
            | K::imm8sex16
            | K::imm8sex32
            | K::imm8sex64
            | K::imm16
            | K::imm32
            | K::imm32sex64
            | K::imm64
            | K::mem
            | K::br64_1
            | K::br64_4
            | K::seg_rBX_al
            | K::xmm_reg
            | K::xmm_rm
            | K::xmm_or_mem
            | K::st0
            | K::sti_opcode
            | K::mm_reg
            | K::mm_rm
            | K::mm_or_mem
            | K::seg_rDI
    )
}

use kiln_emu::flags::{AF, CF, OF, PF, SF, ZF};

/// The arithmetic flags instruction `i` leaves undefined, given the registers before it.
pub fn undefined_flags(i: &Instruction, gpr: &[u64; 16]) -> u64 {
    use Mnemonic as M;
    let m = i.mnemonic();
    let size = match i.op0_kind() {
        OpKind::Register => i.op0_register().size() as u32,
        OpKind::Memory => i.memory_size().size() as u32,
        _ => 8,
    };
    let bits = size * 8;
    let count = |n: u32| -> u32 {
        let raw = match i.op_kind(n) {
            OpKind::Register => gpr[1] & 0xff,
            _ => i.immediate(n),
        };
        (raw & if size == 8 { 0x3f } else { 0x1f }) as u32
    };
    match m {
        M::And | M::Or | M::Xor | M::Test => AF,
        M::Shl | M::Sal | M::Shr | M::Sar => {
            let c = count(1);
            if c == 0 {
                0
            } else {
                let mut u = AF;
                if c != 1 {
                    u |= OF;
                }
                if c >= bits {
                    u |= CF;
                }
                u
            }
        }
        M::Rol | M::Ror | M::Rcl | M::Rcr => {
            let c = count(1);
            if c != 1 && c != 0 {
                OF
            } else {
                0
            }
        }
        M::Shld | M::Shrd => {
            let c = count(2);
            if c == 0 {
                0
            } else if c == 1 {
                AF
            } else {
                AF | OF
            }
        }
        M::Mul | M::Imul => SF | ZF | AF | PF,
        M::Div | M::Idiv => CF | OF | SF | ZF | AF | PF,
        M::Bt | M::Bts | M::Btr | M::Btc => OF | SF | AF | PF,
        M::Bsf | M::Bsr => CF | OF | SF | AF | PF,
        M::Tzcnt | M::Lzcnt => OF | SF | AF | PF,
        M::Andn | M::Blsi | M::Blsmsk | M::Blsr => AF | PF,
        M::Bextr => AF | PF | SF,
        _ => 0,
    }
}
