//! x86_64 (System V ABI, Linux `user_regs_struct`).

mod recorder;

use crate::{
    Arch, Flow, Insn, Regs, RelocError, Relocated, ReturnSlot, ReturnStub, Syntax, Thunk, ThunkSpec,
};
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Decoder, DecoderOptions, FlowControl, Formatter,
    GasFormatter, Instruction, InstructionBlock, IntelFormatter, Mnemonic,
};

pub struct X86_64;

// Word indices in `struct user_regs_struct` (the NT_PRSTATUS register set).
const R15: usize = 0;
const R14: usize = 1;
const R13: usize = 2;
const R12: usize = 3;
const RBP: usize = 4;
const RBX: usize = 5;
const R11: usize = 6;
const R10: usize = 7;
const R9: usize = 8;
const R8: usize = 9;
const RAX: usize = 10;
const RCX: usize = 11;
const RDX: usize = 12;
const RSI: usize = 13;
const RDI: usize = 14;
const ORIG_RAX: usize = 15;
const RIP: usize = 16;
const EFLAGS: usize = 18;
const RSP: usize = 19;
const FS_BASE: usize = 21;

const ARG_REGS: [usize; 6] = [RDI, RSI, RDX, RCX, R8, R9];
/// `jmp qword ptr [rip+0]` followed by the 8-byte absolute target.
const JMP_ABS_LEN: usize = 14;

pub(crate) fn jump_abs(to: u64) -> [u8; JMP_ABS_LEN] {
    let mut b = [0u8; JMP_ABS_LEN];
    b[0] = 0xff;
    b[1] = 0x25;
    b[6..].copy_from_slice(&to.to_le_bytes());
    b
}

fn decode_one(code: &[u8], address: u64) -> Option<Instruction> {
    let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    if !d.can_decode() {
        return None;
    }
    let insn = d.decode();
    if insn.is_invalid() {
        None
    } else {
        Some(insn)
    }
}

impl Arch for X86_64 {
    const NAME: &'static str = "x86_64";
    const REGSET_WORDS: usize = 27;
    const BREAKPOINT: &'static [u8] = &[0xcc];
    const TRAP_PC_ADJUST: u64 = 1;
    const SYSCALL_THEN_BREAK: &'static [u8] = &[0x0f, 0x05, 0xcc];
    // Longest instruction (15) grown by relocation (a short branch becomes an indirect
    // one with an 8-byte target, ~16), plus the jump back.
    const MAX_RELOCATED_LEN: usize = 48;
    const SYS_MMAP: u64 = 9;
    const SYS_MUNMAP: u64 = 11;
    const SYS_MPROTECT: u64 = 10;
    const SYS_EXIT_GROUP: u64 = 231;
    const SYS_MEMFD_CREATE: u64 = 319;
    const SYS_MADVISE: u64 = 28;
    const SYS_CLOSE: u64 = 3;
    const DWARF_SP: u16 = 7;

    fn pc(r: &Regs) -> u64 {
        r.words[RIP]
    }
    fn set_pc(r: &mut Regs, pc: u64) {
        r.words[RIP] = pc;
    }
    fn frame_pointer(r: &Regs) -> u64 {
        r.words[RBP]
    }
    fn sp(r: &Regs) -> u64 {
        r.words[RSP]
    }
    fn arg(r: &Regs, n: usize) -> u64 {
        ARG_REGS.get(n).map(|&i| r.words[i]).unwrap_or(0)
    }
    fn return_value(r: &Regs) -> u64 {
        r.words[RAX]
    }
    fn return_slot(r: &Regs) -> ReturnSlot {
        ReturnSlot::Stack(r.words[RSP])
    }
    fn return_slot_at(sp_at_entry: u64) -> ReturnSlot {
        ReturnSlot::Stack(sp_at_entry)
    }
    fn link_register(_r: &Regs) -> u64 {
        0
    }
    fn set_link_register(_r: &mut Regs, _v: u64) {}
    fn sp_after_return(sp_at_entry: u64) -> u64 {
        sp_at_entry.wrapping_add(8)
    }
    fn set_syscall(r: &mut Regs, nr: u64, args: [u64; 6]) {
        r.words[RAX] = nr;
        // -1 in orig_rax: the thread is not inside a system call, so the kernel must not
        // apply its restart logic when it resumes.
        r.words[ORIG_RAX] = u64::MAX;
        for (reg, v) in [RDI, RSI, RDX, R10, R8, R9].into_iter().zip(args) {
            r.words[reg] = v;
        }
    }
    fn syscall_result(r: &Regs) -> i64 {
        r.words[RAX] as i64
    }
    fn syscall_nr(r: &Regs) -> Option<u64> {
        // orig_rax is -1 outside system calls (see set_syscall).
        Some(r.words[ORIG_RAX]).filter(|&nr| nr != u64::MAX)
    }

    fn relocate(code: &[u8], from: u64, to: u64) -> Result<Relocated, RelocError> {
        let insn = decode_one(code, from).ok_or(RelocError::Invalid { address: from })?;
        let len = insn.len();
        let block = InstructionBlock::new(std::slice::from_ref(&insn), to);
        let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE).map_err(|e| {
            RelocError::CannotRelocate {
                address: from,
                reason: e.to_string(),
            }
        })?;
        let mut out = encoded.code_buffer;
        let relocated_len = out.len();
        out.extend_from_slice(&jump_abs(from + len as u64));
        if out.len() > Self::MAX_RELOCATED_LEN {
            return Err(RelocError::CannotRelocate {
                address: from,
                reason: format!("relocated code is {} bytes", out.len()),
            });
        }
        Ok(Relocated {
            code: out,
            relocated_len,
            original_len: len,
        })
    }

    fn return_stub(data_minus_code: i64) -> Vec<u8> {
        use crate::{STUB_CODE_SIZE, STUB_DONE, STUB_RET, STUB_VALUE};
        // Each displacement is relative to the end of its own instruction.
        let disp = |field: u64, insn_end: i64| -> [u8; 4] {
            ((data_minus_code + field as i64 - insn_end) as i32).to_le_bytes()
        };
        let mut c = Vec::with_capacity(STUB_CODE_SIZE as usize);
        // mov r11, [rip+ret]: the real return address is read first. Once `done` is
        // set the tracer may hand this stub to another call, which rewrites `ret`, so
        // nothing of the stub's data may be read after that store. r11 is free at a
        // return: caller-saved and never a return value.
        c.extend_from_slice(&[0x4c, 0x8b, 0x1d]);
        c.extend_from_slice(&disp(STUB_RET, 7));
        // mov [rip+value], rax
        c.extend_from_slice(&[0x48, 0x89, 0x05]);
        c.extend_from_slice(&disp(STUB_VALUE, 14));
        // mov byte [rip+done], 1 (after the value: a reader that sees done sees the
        // value, x86 stores being seen in order)
        c.extend_from_slice(&[0xc6, 0x05]);
        c.extend_from_slice(&disp(STUB_DONE, 21));
        c.push(1);
        // jmp r11
        c.extend_from_slice(&[0x41, 0xff, 0xe3]);
        c.resize(STUB_CODE_SIZE as usize, 0xcc);
        c
    }

    const ENTRY_JUMP_LEN: usize = recorder::ENTRY_JUMP_LEN;
    fn entry_jump(from: u64, to: u64) -> Option<Vec<u8>> {
        recorder::entry_jump(from, to)
    }
    fn relocate_entry(function: &[u8], from: u64, to: u64) -> Result<Relocated, RelocError> {
        recorder::relocate_entry(function, from, to)
    }
    fn recorder_thunk(at: u64, spec: &ThunkSpec) -> Result<Thunk, RelocError> {
        recorder::thunk(at, spec)
    }
    fn recorder_return_stub(at: u64, ctrl: u64) -> Result<ReturnStub, RelocError> {
        recorder::return_stub(at, ctrl)
    }
    fn thread_pointer(r: &Regs) -> u64 {
        r.words[FS_BASE]
    }

    fn insn_len(code: &[u8], address: u64) -> Option<usize> {
        decode_one(code, address).map(|i| i.len())
    }

    fn call_len(code: &[u8], address: u64) -> Option<usize> {
        let insn = decode_one(code, address)?;
        matches!(
            insn.flow_control(),
            FlowControl::Call | FlowControl::IndirectCall
        )
        .then(|| insn.len())
    }

    fn jump_slot(code: &[u8], address: u64) -> Option<u64> {
        let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        for _ in 0..2 {
            if !d.can_decode() {
                return None;
            }
            let insn = d.decode();
            match insn.mnemonic() {
                Mnemonic::Endbr64 => continue,
                Mnemonic::Jmp if insn.is_ip_rel_memory_operand() => {
                    return Some(insn.ip_rel_memory_address())
                }
                _ => return None,
            }
        }
        None
    }

    fn disassemble(code: &[u8], address: u64, count: usize, syntax: Syntax) -> Vec<Insn> {
        let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        let mut intel = IntelFormatter::new();
        let mut gas = GasFormatter::new();
        let mut out = Vec::new();
        while d.can_decode() && out.len() < count {
            let insn = d.decode();
            if insn.is_invalid() {
                break;
            }
            let mut text = String::new();
            match syntax {
                Syntax::Intel => intel.format(&insn, &mut text),
                Syntax::Att => gas.format(&insn, &mut text),
            }
            let start = (insn.ip() - address) as usize;
            let branch_target = match insn.flow_control() {
                FlowControl::Call
                | FlowControl::UnconditionalBranch
                | FlowControl::ConditionalBranch
                    if insn.near_branch_target() != 0 =>
                {
                    Some(insn.near_branch_target())
                }
                _ => None,
            };
            out.push(Insn {
                address: insn.ip(),
                len: insn.len(),
                bytes: code[start..start + insn.len()].to_vec(),
                text,
                branch_target,
            });
        }
        out
    }

    fn flow(code: &[u8], address: u64) -> Option<(usize, Flow)> {
        let insn = decode_one(code, address)?;
        let target = insn.near_branch_target();
        let flow = match insn.flow_control() {
            FlowControl::Next => Flow::Next,
            FlowControl::Call | FlowControl::IndirectCall
                if insn.mnemonic() == Mnemonic::Syscall =>
            {
                Flow::Next
            }
            FlowControl::Call if target != 0 => Flow::Call(Some(target)),
            FlowControl::Call | FlowControl::IndirectCall => Flow::Call(None),
            FlowControl::UnconditionalBranch if target != 0 => Flow::Jump(target),
            FlowControl::ConditionalBranch if target != 0 => Flow::Branch(target),
            FlowControl::UnconditionalBranch | FlowControl::IndirectBranch => Flow::IndirectJump,
            FlowControl::Return => Flow::Return,
            // A far conditional branch, xbegin: none in compiled C; nothing known.
            FlowControl::ConditionalBranch | FlowControl::XbeginXabortXend => Flow::IndirectJump,
            FlowControl::Interrupt | FlowControl::Exception => Flow::Stop,
        };
        Some((insn.len(), flow))
    }

    fn entry_first_argument(code: &[u8], address: u64) -> Option<(u64, u64)> {
        use iced_x86::{OpKind, Register};
        let mut d = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
        let mut rdi = None;
        for _ in 0..32 {
            if !d.can_decode() {
                return None;
            }
            let insn = d.decode();
            if insn.is_invalid() {
                return None;
            }
            match insn.flow_control() {
                FlowControl::Call | FlowControl::IndirectCall => {
                    return rdi.map(|a| (a, insn.next_ip()))
                }
                FlowControl::Next => {}
                _ => return None,
            }
            let dest = insn.op0_register();
            if insn.op_count() == 0 || insn.op0_kind() != OpKind::Register {
                continue;
            }
            if dest.full_register() != Register::RDI {
                continue;
            }
            rdi = match (insn.mnemonic(), insn.op1_kind()) {
                (Mnemonic::Lea, OpKind::Memory) if insn.is_ip_rel_memory_operand() => {
                    Some(insn.ip_rel_memory_address())
                }
                (Mnemonic::Mov, OpKind::Immediate32 | OpKind::Immediate32to64)
                    if matches!(dest, Register::RDI | Register::EDI) =>
                {
                    Some(insn.immediate(1))
                }
                (Mnemonic::Mov, OpKind::Immediate64) => Some(insn.immediate(1)),
                _ => None,
            };
        }
        None
    }

    fn named_registers(r: &Regs) -> Vec<(&'static str, u64)> {
        [
            ("rax", RAX),
            ("rbx", RBX),
            ("rcx", RCX),
            ("rdx", RDX),
            ("rsi", RSI),
            ("rdi", RDI),
            ("rbp", RBP),
            ("rsp", RSP),
            ("r8", R8),
            ("r9", R9),
            ("r10", R10),
            ("r11", R11),
            ("r12", R12),
            ("r13", R13),
            ("r14", R14),
            ("r15", R15),
            ("rip", RIP),
            ("eflags", EFLAGS),
        ]
        .into_iter()
        .map(|(n, i)| (n, r.words[i]))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_flow_is_told_apart() {
        let at = 0x1000;
        for (bytes, want) in [
            (&[0x48, 0x89, 0xc7][..], (3, Flow::Next)),
            (&[0x0f, 0x05], (2, Flow::Next)),
            (&[0xe8, 0x10, 0, 0, 0], (5, Flow::Call(Some(0x1015)))),
            (&[0xff, 0xd0], (2, Flow::Call(None))),
            (&[0xeb, 0x02], (2, Flow::Jump(0x1004))),
            (&[0xe9, 0x00, 0x01, 0, 0], (5, Flow::Jump(0x1105))),
            (&[0x75, 0xfe], (2, Flow::Branch(0x1000))),
            (&[0xff, 0xe0], (2, Flow::IndirectJump)),
            (&[0x3e, 0xff, 0xe0], (3, Flow::IndirectJump)),
            (&[0xc3], (1, Flow::Return)),
            (&[0x0f, 0x0b], (2, Flow::Stop)),
            (&[0xcc], (1, Flow::Stop)),
        ] {
            assert_eq!(X86_64::flow(bytes, at), Some(want), "{bytes:x?}");
        }
        assert_eq!(X86_64::flow(&[0x0f], at), None);
    }

    #[test]
    fn the_start_codes_main_is_read_from_its_first_call() {
        // glibc's _start, PIE: lea rdi, [rip + 0xe61] (main), then call through the GOT.
        let pie = [
            0xf3, 0x0f, 0x1e, 0xfa, // endbr64
            0x31, 0xed, // xor ebp, ebp
            0x49, 0x89, 0xd1, // mov r9, rdx
            0x5e, // pop rsi
            0x48, 0x89, 0xe2, // mov rdx, rsp
            0x48, 0x83, 0xe4, 0xf0, // and rsp, -16
            0x50, // push rax
            0x54, // push rsp
            0x45, 0x31, 0xc0, // xor r8d, r8d
            0x31, 0xc9, // xor ecx, ecx
            0x48, 0x8d, 0x3d, 0x61, 0x0e, 0, 0, // lea rdi, [rip + 0xe61]
            0xff, 0x15, 0x00, 0x10, 0, 0,    // call [rip + 0x1000]
            0xf4, // hlt
        ];
        assert_eq!(
            X86_64::entry_first_argument(&pie, 0x1000),
            Some((0x1000 + 31 + 0xe61, 0x1000 + 37))
        );
        // Non-PIE: mov rdi, imm32.
        let fixed = [0x48, 0xc7, 0xc7, 0x36, 0x11, 0x40, 0, 0xe8, 0, 0, 0, 0];
        assert_eq!(
            X86_64::entry_first_argument(&fixed, 0x401000),
            Some((0x401136, 0x40100c))
        );
        // rdi changed after (to something not constant): none.
        let changed = [
            0x48, 0xc7, 0xc7, 0x36, 0x11, 0x40, 0, 0x48, 0x89, 0xc7, 0xe8, 0, 0, 0, 0,
        ];
        assert_eq!(X86_64::entry_first_argument(&changed, 0x401000), None);
        // A jump before any call: none.
        assert_eq!(X86_64::entry_first_argument(&[0xeb, 0xfe], 0x1000), None);
    }

    fn tail_target(code: &[u8]) -> u64 {
        let n = code.len();
        assert_eq!(&code[n - 14..n - 8], &[0xff, 0x25, 0, 0, 0, 0]);
        u64::from_le_bytes(code[n - 8..].try_into().unwrap())
    }

    #[test]
    fn position_independent_prologues_copy_unchanged() {
        // glibc 2.36 entries: malloc `push r12`, free `test rdi,rdi`, calloc `push r13`.
        for (bytes, len) in [
            (&[0x41u8, 0x54, 0x90][..], 2),
            (&[0x48, 0x85, 0xff, 0x90][..], 3),
            (&[0x41, 0x55][..], 2),
            (&[0xf3, 0x0f, 0x1e, 0xfa, 0x55][..], 4),
        ] {
            let r = X86_64::relocate(bytes, 0x7f00_0000_1000, 0x7f00_1000_0000).unwrap();
            assert_eq!(r.original_len, len);
            assert_eq!(r.relocated_len, len, "copied as they are");
            assert_eq!(&r.code[..len], &bytes[..len]);
            assert_eq!(tail_target(&r.code), 0x7f00_0000_1000 + len as u64);
        }
    }

    #[test]
    fn rip_relative_operand_is_rewritten_to_the_same_target() {
        // mov rax, [rip+0x100] at 0x1000: reads 0x1107.
        let code = [0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00];
        let r = X86_64::relocate(&code, 0x1000, 0x9000).unwrap();
        let insn = decode_one(&r.code, 0x9000).unwrap();
        assert_eq!(insn.memory_displacement64(), 0x1107);
        assert_eq!(tail_target(&r.code), 0x1007);
    }

    #[test]
    fn relative_jump_keeps_its_target() {
        // jmp rel32 +0x20 at 0x5000 -> 0x5025 (tail calls such as operator delete).
        let code = [0xe9, 0x20, 0x00, 0x00, 0x00];
        let r = X86_64::relocate(&code, 0x5000, 0x7000_0000).unwrap();
        let insn = decode_one(&r.code, 0x7000_0000).unwrap();
        assert_eq!(insn.flow_control(), FlowControl::UnconditionalBranch);
        // Far away: iced turns it into an indirect jump through a stored target.
        let target = if insn.near_branch_target() != 0 {
            insn.near_branch_target()
        } else {
            let at = (insn.memory_displacement64() - 0x7000_0000) as usize;
            u64::from_le_bytes(r.code[at..at + 8].try_into().unwrap())
        };
        assert_eq!(target, 0x5025);
    }

    #[test]
    fn rip_relative_too_far_is_refused() {
        let code = [0x48, 0x8b, 0x05, 0x00, 0x01, 0x00, 0x00];
        // The target (0x7f00_0000_1107) is neither within 2 GiB of the new address nor
        // expressible as a 32-bit absolute address.
        let e = X86_64::relocate(&code, 0x7f00_0000_1000, 0x1000_0000).unwrap_err();
        assert!(matches!(e, RelocError::CannotRelocate { .. }), "{e}");
    }

    #[test]
    fn return_stub_writes_value_and_done_then_jumps_through_ret() {
        let (code, data) = (0x7000_0000u64, 0x7000_8000u64);
        let stub = X86_64::return_stub((data - code) as i64);
        assert_eq!(stub.len() as u64, crate::STUB_CODE_SIZE);
        let insns: Vec<Instruction> = {
            let mut d = Decoder::with_ip(64, &stub, code, DecoderOptions::NONE);
            (0..4).map(|_| d.decode()).collect()
        };
        use iced_x86::Register::{R11, RAX};
        // The return address is loaded before anything else...
        assert_eq!(insns[0].op0_register(), R11);
        assert_eq!(insns[0].memory_displacement64(), data + crate::STUB_RET);
        assert_eq!(insns[1].memory_displacement64(), data + crate::STUB_VALUE);
        assert_eq!(insns[1].op1_register(), RAX);
        // ...so that after `done` is set, no stub data is read again.
        assert_eq!(insns[2].memory_displacement64(), data + crate::STUB_DONE);
        assert_eq!(insns[2].immediate8(), 1);
        assert_eq!(insns[3].flow_control(), FlowControl::IndirectBranch);
        assert_eq!(insns[3].op0_register(), R11);
        assert!(!insns[3].op0_kind().eq(&iced_x86::OpKind::Memory));
    }

    #[test]
    fn garbage_is_invalid() {
        assert!(matches!(
            X86_64::relocate(&[0x0f, 0xff], 0x10, 0x20),
            Err(RelocError::Invalid { .. })
        ));
        assert!(X86_64::relocate(&[], 0x10, 0x20).is_err());
    }

    #[test]
    fn disassembly_in_both_syntaxes() {
        let code = [0x41, 0x54, 0x48, 0x85, 0xff, 0xe8, 0x00, 0x00, 0x00, 0x00];
        let intel = X86_64::disassemble(&code, 0x1000, 10, Syntax::Intel);
        assert_eq!(intel.len(), 3);
        assert_eq!(intel[0].text, "push r12");
        assert_eq!(intel[1].text, "test rdi,rdi");
        assert_eq!(intel[2].branch_target, Some(0x100a));
        let att = X86_64::disassemble(&code, 0x1000, 2, Syntax::Att);
        assert_eq!(att[0].text, "push %r12");
        assert_eq!(X86_64::insn_len(&code[2..], 0x1002), Some(3));
        assert_eq!(X86_64::call_len(&code[5..], 0x1005), Some(5));
        assert_eq!(X86_64::call_len(&code, 0x1000), None);
        // A PLT entry: jmp [rip+0x2fb2] at 0x1060 reads the slot at 0x4018; with IBT
        // it starts with endbr64.
        let plt = [0xff, 0x25, 0xb2, 0x2f, 0x00, 0x00];
        assert_eq!(X86_64::jump_slot(&plt, 0x1060), Some(0x4018));
        let ibt = [
            0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0xb2, 0x2f, 0x00, 0x00,
        ];
        assert!(X86_64::jump_slot(&ibt, 0x1060).is_some());
        assert_eq!(X86_64::jump_slot(&code, 0x1000), None);
        // call rax (indirect) is a call too.
        assert_eq!(X86_64::call_len(&[0xff, 0xd0], 0x1000), Some(2));
    }

    #[test]
    fn logical_registers() {
        let mut r = Regs::default();
        r.words[RDI] = 10;
        r.words[RSI] = 20;
        r.words[RSP] = 0x7ffc_0000;
        r.words[RAX] = 0xdead;
        assert_eq!(X86_64::arg(&r, 0), 10);
        assert_eq!(X86_64::arg(&r, 1), 20);
        assert_eq!(X86_64::return_value(&r), 0xdead);
        assert_eq!(X86_64::return_slot(&r), ReturnSlot::Stack(0x7ffc_0000));
        assert_eq!(X86_64::sp_after_return(0x7ffc_0000), 0x7ffc_0008);
        X86_64::set_pc(&mut r, 0x4000);
        assert_eq!(X86_64::pc(&r), 0x4000);
        X86_64::set_syscall(&mut r, 9, [1, 2, 3, 4, 5, 6]);
        assert_eq!(r.words[RAX], 9);
        assert_eq!(r.words[R10], 4);
        assert_eq!(r.words[ORIG_RAX], u64::MAX);
    }
}
