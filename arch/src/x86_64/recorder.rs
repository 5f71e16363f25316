//! x86_64 code for recording allocator calls inside the target (see `crate::recorder`
//! for the memory layout it writes).
//!
//! A hooked function's first bytes become a `jmp rel32` to its *thunk*. The thunk
//! finds the thread's slot by hashing the thread pointer (`fs:0`, which the x86-64
//! TLS ABI makes point to itself), reserves a record in the ring, writes the call and
//! a copy of the top of the stack into it, swaps the return address for the shared
//! *return stub* (keeping the real one on the thread's shadow stack), commits the
//! record and jumps to the *displaced* instructions (the function's first
//! instructions, relocated, then a jump back into the function). Anything unusual
//! (a thread memtrace has not registered, a stack pointer off the thread's stack, a
//! full shadow stack, a vfork child) takes the slow path: every register back as it
//! was, then an int3 that memtrace handles as a breakpoint at the function's entry.
//!
//! Registers: at a function's entry the argument registers (rdi, rsi, rdx, rcx, r8,
//! r9) and rax (the vector count of a variadic call) are kept; r10 and r11 are free
//! (caller-saved, not arguments). At a return, rax and rdx (the return value) are
//! kept; rcx, rsi, rdi, r8-r11 are free (caller-saved). Everything else is saved
//! before use. Below the stack pointer is free at both places: the callee's frame
//! area at an entry, the returned callee's old frame at a return.

use crate::recorder::*;
use crate::{RelocError, Relocated};
use iced_x86::code_asm::*;
use iced_x86::{
    BlockEncoder, BlockEncoderOptions, Code, Decoder, DecoderOptions, FlowControl, Instruction,
    InstructionBlock, MemoryOperand, Register,
};

/// `jmp rel32`.
pub const ENTRY_JUMP_LEN: usize = 5;
/// How the stack is compared with its mirror.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compare {
    /// 16 bytes at a time, 64 a round: every x86-64 has SSE2.
    Sse2,
    /// 32 bytes at a time, 128 a round.
    Avx2,
}

impl Compare {
    /// The best this machine has (memtrace and the target run on the same one).
    fn best() -> Compare {
        // This file is compiled on any host; the code runs only on an x86-64 one.
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return Compare::Avx2;
        }
        Compare::Sse2
    }

    /// Bytes compared a round: the copy's granularity.
    fn chunk(self) -> i32 {
        match self {
            Compare::Sse2 => 64,
            Compare::Avx2 => 128,
        }
    }
}
const SYS_FUTEX: i32 = 202;
const FUTEX_WAIT: i32 = 0;
/// `mov rax, qword ptr fs:[0]` (code_asm has no absolute form without a base).
const LOAD_THREAD_POINTER_RAX: [u8; 9] = [0x64, 0x48, 0x8b, 0x04, 0x25, 0, 0, 0, 0];
/// `mov r10, qword ptr fs:[0]`.
const LOAD_THREAD_POINTER_R10: [u8; 9] = [0x64, 0x4c, 0x8b, 0x14, 0x25, 0, 0, 0, 0];

fn asm_err(e: IcedError) -> RelocError {
    RelocError::CannotRelocate {
        address: 0,
        reason: e.to_string(),
    }
}

/// The bytes that make the function at `from` jump to `to`; None when `to` is out of
/// a rel32's reach.
pub fn entry_jump(from: u64, to: u64) -> Option<Vec<u8>> {
    let rel = to.wrapping_sub(from + ENTRY_JUMP_LEN as u64) as i64;
    let rel = i32::try_from(rel).ok()?;
    let mut b = vec![0xe9];
    b.extend_from_slice(&rel.to_le_bytes());
    Some(b)
}

/// The instructions an entry jump displaces, relocated to run at `to`, then a jump
/// back to the first instruction not displaced. `function` is the whole function's
/// code, read at `from`: no branch in it may land inside the displaced bytes (past
/// their first), which the jump overwrites. A displaced call pushes its original
/// return address (the function's own code after it, untouched), so that unwinders
/// and exceptions never see memtrace's pages.
pub fn relocate_entry(function: &[u8], from: u64, to: u64) -> Result<Relocated, RelocError> {
    let mut d = Decoder::with_ip(64, function, from, DecoderOptions::NONE);
    let mut displaced = Vec::new();
    let mut covered = 0usize;
    while covered < ENTRY_JUMP_LEN {
        if !d.can_decode() {
            return Err(RelocError::CannotRelocate {
                address: from,
                reason: "the function is shorter than the entry jump".into(),
            });
        }
        let insn = d.decode();
        if insn.is_invalid() {
            return Err(RelocError::Invalid { address: insn.ip() });
        }
        covered += insn.len();
        displaced.push(insn);
    }
    let end = from + covered as u64;
    // Any branch of the function into the bytes the jump overwrites (a loop back to
    // its second instruction) would run garbage.
    let mut all = Decoder::with_ip(64, function, from, DecoderOptions::NONE);
    while all.can_decode() {
        let insn = all.decode();
        if insn.is_invalid() {
            break;
        }
        let target = match insn.flow_control() {
            FlowControl::UnconditionalBranch
            | FlowControl::ConditionalBranch
            | FlowControl::Call => insn.near_branch_target(),
            _ => 0,
        };
        if target > from && target < end {
            return Err(RelocError::CannotRelocate {
                address: from,
                reason: format!("a branch at {:#x} lands inside the entry jump", insn.ip()),
            });
        }
    }
    let mut out: Vec<Instruction> = Vec::new();
    for insn in &displaced {
        match insn.flow_control() {
            FlowControl::Call | FlowControl::IndirectCall => {
                if insn.memory_base() == Register::RSP || insn.op0_register() == Register::RSP {
                    return Err(RelocError::CannotRelocate {
                        address: insn.ip(),
                        reason: "a displaced call reads the stack".into(),
                    });
                }
                if insn.next_ip() < end {
                    // It would return into the bytes the entry jump overwrote.
                    return Err(RelocError::CannotRelocate {
                        address: insn.ip(),
                        reason: "a displaced call is followed by displaced code".into(),
                    });
                }
                out.extend(push_return_address(insn.next_ip())?);
                let mut jmp = *insn;
                let code = match insn.code() {
                    Code::Call_rel32_64 => Code::Jmp_rel32_64,
                    Code::Call_rm64 => Code::Jmp_rm64,
                    _ => {
                        return Err(RelocError::CannotRelocate {
                            address: insn.ip(),
                            reason: "an unusual call instruction".into(),
                        })
                    }
                };
                jmp.set_code(code);
                out.push(jmp);
            }
            _ => out.push(*insn),
        }
    }
    let block = InstructionBlock::new(&out, to);
    let encoded = BlockEncoder::encode(64, block, BlockEncoderOptions::NONE).map_err(|e| {
        RelocError::CannotRelocate {
            address: from,
            reason: e.to_string(),
        }
    })?;
    let mut code = encoded.code_buffer;
    let relocated_len = code.len();
    code.extend_from_slice(&super::jump_abs(end));
    Ok(Relocated {
        code,
        relocated_len,
        original_len: covered,
    })
}

/// `lea rsp, [rsp-8]; mov dword [rsp], lo; mov dword [rsp+4], hi`: pushes a 64-bit
/// value without touching the flags.
fn push_return_address(ret: u64) -> Result<Vec<Instruction>, RelocError> {
    let e = |e: iced_x86::IcedError| RelocError::CannotRelocate {
        address: ret,
        reason: e.to_string(),
    };
    let at = |displ: i64| MemoryOperand::with_base_displ(Register::RSP, displ);
    Ok(vec![
        Instruction::with2(Code::Lea_r64_m, Register::RSP, at(-8)).map_err(e)?,
        Instruction::with2(Code::Mov_rm32_imm32, at(0), ret as u32).map_err(e)?,
        Instruction::with2(Code::Mov_rm32_imm32, at(4), (ret >> 32) as u32).map_err(e)?,
    ])
}

/// Looks up the calling thread's slot: thread pointer in `key`, slot address left in
/// `slot`; jumps to `missing` when the thread has none. Uses `idx` and `count`.
fn lookup(
    a: &mut CodeAssembler,
    key: AsmRegister64,
    slot: AsmRegister64,
    idx: AsmRegister64,
    count: AsmRegister32,
    missing: CodeLabel,
) -> Result<(), IcedError> {
    let mut probe = a.create_label();
    let mut found = a.create_label();
    a.mov(idx, HASH_MULTIPLIER)?;
    a.imul_2(idx, key)?;
    a.shr(idx, 64 - TABLE_BITS)?;
    a.mov(count, TABLE_PROBES as u32)?;
    a.set_label(&mut probe)?;
    a.mov(slot, idx)?;
    a.shl(slot, SLOT_SHIFT)?;
    a.add(slot, qword_ptr(r11 + CTRL_TABLE))?;
    a.cmp(qword_ptr(slot + SLOT_KEY), key)?;
    a.je(found)?;
    a.cmp(qword_ptr(slot + SLOT_KEY), 0)?;
    a.je(missing)?;
    a.inc(idx)?;
    a.and(idx, (TABLE_SLOTS - 1) as i32)?;
    a.dec(count)?;
    a.jnz(probe)?;
    a.jmp(missing)?;
    a.set_label(&mut found)?;
    Ok(())
}

/// The wait for room in the ring. On entry: `rax` the reserved position, `len` the
/// record's length. Saves and restores `saved`; returns with `rax` the position, to
/// `room`; or, when the flags say bypass, to `bypass` with the saved registers and the
/// start tick dropped. `r11` is the control page again on return.
#[allow(clippy::too_many_arguments)]
fn wait_for_room(
    a: &mut CodeAssembler,
    ctrl: u64,
    len: AsmRegister64,
    saved: &[AsmRegister64],
    room: CodeLabel,
    bypass: CodeLabel,
) -> Result<(), IcedError> {
    let mut again = a.create_label();
    let mut done = a.create_label();
    let mut give_up = a.create_label();
    // rax (the position) first, so that it is at a known place: above the saved ones
    // and the start tick.
    a.push(rax)?;
    for &r in saved {
        a.push(r)?;
    }
    let pos_at = 8 * (saved.len() as i32 + 1);
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.push(rax)?;
    a.lock().inc(dword_ptr(r11 + CTRL_WAITERS))?;
    a.set_label(&mut again)?;
    a.mov(r11, ctrl)?;
    a.test(qword_ptr(r11 + CTRL_FLAGS), FLAG_BYPASS as i32)?;
    a.jnz(give_up)?;
    // The futex word before the room: a tail moved after this read changes it, and
    // the wait then returns at once.
    a.mov(edx, dword_ptr(r11 + CTRL_TAIL_SEQ))?;
    a.mov(rax, qword_ptr(rsp + pos_at))?;
    a.lea(rcx, qword_ptr(rax + len))?;
    a.sub(rcx, qword_ptr(r11 + CTRL_TAIL))?;
    a.cmp(rcx, RING_SIZE as i32)?;
    a.jbe(done)?;
    a.lea(rdi, qword_ptr(r11 + CTRL_TAIL_SEQ))?;
    a.mov(esi, FUTEX_WAIT)?;
    a.lea(r10, qword_ptr(r11 + CTRL_WAIT_TIMEOUT))?;
    a.mov(eax, SYS_FUTEX)?;
    a.syscall()?;
    a.jmp(again)?;
    a.set_label(&mut done)?;
    a.lock().dec(dword_ptr(r11 + CTRL_WAITERS))?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.sub(rax, qword_ptr(rsp))?;
    a.lock().add(qword_ptr(r11 + CTRL_WAIT_TICKS), rax)?;
    a.lock().inc(qword_ptr(r11 + CTRL_WAITS))?;
    a.add(rsp, 8)?;
    for &r in saved.iter().rev() {
        a.pop(r)?;
    }
    a.pop(rax)?;
    a.jmp(room)?;
    a.set_label(&mut give_up)?;
    a.lock().dec(dword_ptr(r11 + CTRL_WAITERS))?;
    a.add(rsp, 8)?;
    for &r in saved.iter().rev() {
        a.pop(r)?;
    }
    a.pop(rax)?;
    a.jmp(bypass)?;
    Ok(())
}

/// Registers the thunk saves, in push order.
const THUNK_SAVED: [AsmRegister64; 12] = [rax, rcx, rdx, rsi, rdi, r8, r9, rbx, r12, r13, r14, r15];
/// Where each integer argument is once they are saved: its offset from rsp.
fn saved_arg(n: usize) -> i32 {
    // rdi, rsi, rdx, rcx, r8, r9 by push position (r15 was pushed last, at 0).
    let reg = [rdi, rsi, rdx, rcx, r8, r9][n];
    let pos = THUNK_SAVED.iter().position(|&r| r == reg).unwrap_or(0);
    8 * (THUNK_SAVED.len() - 1 - pos) as i32
}

/// The recording thunk of one hooked function, to be placed at `at`.
pub fn thunk(at: u64, spec: &ThunkSpec) -> Result<Thunk, RelocError> {
    thunk_code(at, spec, Compare::best()).map_err(asm_err)
}

/// Decides how much of the stack the record copies, against the thread's mirror (see
/// "Stack copies" in `crate::recorder`). On entry: `rdx` the slot, `rbx` the stack
/// pointer at the function's entry, `rsi` the bytes the record stands for (from
/// `rbx + 8` up to the top), `r11` the control page. On exit: `r12` the bytes to
/// copy, `r13` the record holding the stack above them (`NO_RECORD`: none, the copy
/// is whole), `r14` the number of layers that stay below the new one, `r15` non-zero
/// when this call owns the mirror (and must update it and let it go): 1, or the
/// range its compare stepped over ([`skip`]-packed). Uses rax, rcx, rdi, r8, r10.
fn mirror_compare(a: &mut CodeAssembler, compare: Compare) -> Result<(), IcedError> {
    let mut whole = a.create_label();
    let mut not_ours = a.create_label();
    let mut next = a.create_label();
    let mut differs = a.create_label();
    let mut find = a.create_label();
    let mut done = a.create_label();
    a.mov(r12, rsi)?;
    a.mov(r13, NO_RECORD)?;
    a.xor(r14d, r14d)?;
    a.xor(r15d, r15d)?;
    // rdi: the copy's start. Below the mirror (or no mirror): a whole copy.
    a.lea(rdi, qword_ptr(rbx + 8))?;
    a.cmp(rdi, qword_ptr(rdx + SLOT_MIRROR_FLOOR))?;
    a.jb(not_ours)?;
    // SLOT_MIRROR_BUSY: the stack pointer of the thunk working on the mirror. A call
    // below it is a signal handler's, run in the middle: a whole copy, the mirror
    // left alone. One at or above it finds a thunk left by longjmp (its frame is
    // gone): the mirror is taken over, and made again from a whole copy.
    let mut free = a.create_label();
    a.mov(rax, qword_ptr(rdx + SLOT_MIRROR_BUSY))?;
    a.test(rax, rax)?;
    a.jz(free)?;
    a.cmp(rbx, rax)?;
    a.jb(not_ours)?;
    a.mov(qword_ptr(rdx + SLOT_MIRROR_BUSY), rbx)?;
    a.mov(r15d, 1)?;
    a.jmp(whole)?;
    a.set_label(&mut free)?;
    a.mov(qword_ptr(rdx + SLOT_MIRROR_BUSY), rbx)?;
    a.mov(r15d, 1)?;
    // rcx: the top. Above what the mirror holds: a whole copy.
    a.lea(rcx, qword_ptr(rdi + rsi))?;
    a.cmp(rcx, qword_ptr(rdx + SLOT_MIRROR_HI))?;
    a.ja(whole)?;
    // A chain that starts too far back in the ring.
    a.mov(rax, qword_ptr(r11 + CTRL_HEAD))?;
    a.sub(rax, qword_ptr(rdx + SLOT_LAYERS + LAYER_POS))?;
    a.cmp(rax, CHAIN_SPAN as i32)?;
    a.ja(whole)?;
    // r8: the lowest address compared, max(start, what the mirror holds).
    a.mov(r8, qword_ptr(rdx + SLOT_MIRROR_LO))?;
    a.cmp(r8, rdi)?;
    a.cmovb(r8, rdi)?;
    a.mov(r10, qword_ptr(rdx + SLOT_MIRROR_DELTA))?;
    // From the top down, a chunk at a time: rcx ends at the upper end of the first
    // chunk that differs (wm). xmm0-xmm2 are saved: no hooked function takes vector
    // arguments, but the C library's own callers might keep values there. Their upper
    // halves are not (glibc's AVX2 string functions, which malloc calls, end with
    // vzeroupper too).
    let chunk = compare.chunk();
    a.sub(rsp, 72)?;
    for (n, x) in [xmm0, xmm1, xmm2].into_iter().enumerate() {
        a.movdqu(xmmword_ptr(rsp + 16 * n as i32), x)?;
    }
    // The range memtrace lets the compare step over (see "Skipped ranges"): [rsp +
    // 56] its start, [rsp + 48] its end, or 0 when there is none, when it is not
    // wholly between the lowest address compared and the top, when the word that
    // must hold main's return address (between the range and the top) does not, or
    // when memtrace was changing them meanwhile ([rsp + 64]: the sequence number).
    let mut unarmed = a.create_label();
    let mut skip = a.create_label();
    a.mov(rax, qword_ptr(rdx + SLOT_SKIP_SEQ))?;
    a.mov(qword_ptr(rsp + 64), rax)?;
    a.test(al, 1)?;
    a.jnz(unarmed)?;
    a.mov(rax, qword_ptr(rdx + SLOT_SKIP))?;
    a.mov(qword_ptr(rsp + 56), rax)?;
    a.shr(rax, 48)?;
    a.and(eax, 0x7fff)?;
    a.shl(rax, 3)?;
    a.cmp(rax, MIN_SKIP as i32)?;
    a.jb(unarmed)?;
    a.mov(qword_ptr(rsp + 48), rax)?;
    a.mov(rax, qword_ptr(rsp + 56))?;
    a.shl(rax, 16)?;
    a.shr(rax, 16)?;
    a.cmp(rax, r8)?;
    a.jb(unarmed)?;
    a.mov(qword_ptr(rsp + 56), rax)?;
    a.add(rax, qword_ptr(rsp + 48))?;
    a.cmp(rax, rcx)?;
    a.ja(unarmed)?;
    a.mov(qword_ptr(rsp + 48), rax)?;
    a.mov(rax, qword_ptr(rdx + SLOT_SKIP_RA_AT))?;
    a.cmp(rax, qword_ptr(rsp + 48))?;
    a.jb(unarmed)?;
    a.add(rax, 8)?;
    a.cmp(rax, rcx)?;
    a.ja(unarmed)?;
    a.mov(rax, qword_ptr(rax - 8))?;
    a.cmp(rax, qword_ptr(rdx + SLOT_SKIP_RA))?;
    a.jne(unarmed)?;
    a.mov(rax, qword_ptr(rdx + SLOT_SKIP_SEQ))?;
    a.cmp(rax, qword_ptr(rsp + 64))?;
    a.jne(unarmed)?;
    a.jmp(next)?;
    a.set_label(&mut unarmed)?;
    a.mov(qword_ptr(rsp + 48), 0)?;
    a.set_label(&mut next)?;
    a.lea(rax, qword_ptr(r8 + chunk))?;
    a.cmp(rcx, rax)?;
    a.jb(differs)?;
    a.cmp(rcx, qword_ptr(rsp + 48))?;
    a.jbe(skip)?;
    // Each vector of the stack and of its mirror (unaligned: a stack's top need not
    // be), compared byte by byte, the results folded into xmm0 / ymm0.
    let at = |n: i32, width: i32| chunk - width * n;
    match compare {
        Compare::Sse2 => {
            a.movdqu(xmm0, xmmword_ptr(rcx - at(0, 16)))?;
            a.movdqu(xmm1, xmmword_ptr(rcx + r10 - at(0, 16)))?;
            a.pcmpeqb(xmm0, xmm1)?;
            for n in 1..chunk / 16 {
                a.movdqu(xmm1, xmmword_ptr(rcx - at(n, 16)))?;
                a.movdqu(xmm2, xmmword_ptr(rcx + r10 - at(n, 16)))?;
                a.pcmpeqb(xmm1, xmm2)?;
                a.pand(xmm0, xmm1)?;
            }
            a.pmovmskb(eax, xmm0)?;
            a.cmp(eax, 0xffff)?;
        }
        Compare::Avx2 => {
            a.vmovdqu(ymm0, ymmword_ptr(rcx - at(0, 32)))?;
            a.vpcmpeqb(ymm0, ymm0, ymmword_ptr(rcx + r10 - at(0, 32)))?;
            for n in 1..chunk / 32 {
                a.vmovdqu(ymm1, ymmword_ptr(rcx - at(n, 32)))?;
                a.vpcmpeqb(ymm1, ymm1, ymmword_ptr(rcx + r10 - at(n, 32)))?;
                a.vpand(ymm0, ymm0, ymm1)?;
            }
            a.vpmovmskb(eax, ymm0)?;
            a.cmp(eax, -1)?;
        }
    }
    a.jne(differs)?;
    a.sub(rcx, chunk)?;
    a.jmp(next)?;
    // Reached the range with nothing different above it: over the whole rounds in
    // it, once, and the slot says which bytes were not compared. (Its length is at
    // least MIN_SKIP, and rcx above its end less a round: some are whole.)
    a.set_label(&mut skip)?;
    a.mov(rax, rcx)?;
    a.sub(rax, qword_ptr(rsp + 56))?;
    a.and(rax, -chunk)?;
    a.mov(qword_ptr(rsp + 48), 0)?;
    a.sub(rcx, rax)?;
    a.shl(rax, 45)?;
    a.or(rax, rcx)?;
    // r15, non-zero already (this call works on the mirror), says what was
    // stepped over until the entry is written.
    a.mov(r15, rax)?;
    a.jmp(next)?;
    a.set_label(&mut differs)?;
    if compare == Compare::Avx2 {
        a.vzeroupper()?;
    }
    for (n, x) in [xmm0, xmm1, xmm2].into_iter().enumerate() {
        a.movdqu(x, xmmword_ptr(rsp + 16 * n as i32))?;
    }
    a.add(rsp, 72)?;
    // Nothing alike: a whole copy.
    a.lea(rax, qword_ptr(rdi + rsi))?;
    a.cmp(rcx, rax)?;
    a.jae(whole)?;
    // r14: layers above wm stay; the lowest of them holds wm (the top layer always
    // does: it reaches the mirror's top).
    a.mov(r14, qword_ptr(rdx + SLOT_LAYER_DEPTH))?;
    a.test(r14, r14)?;
    a.jz(whole)?;
    a.set_label(&mut find)?;
    a.mov(rax, r14)?;
    a.shl(rax, LAYER_SIZE.trailing_zeros())?;
    a.cmp(
        qword_ptr(rdx + rax + (SLOT_LAYERS - LAYER_SIZE + LAYER_UPPER)),
        rcx,
    )?;
    a.ja(done)?;
    a.dec(r14)?;
    a.jnz(find)?;
    a.jmp(whole)?;
    a.set_label(&mut done)?;
    a.cmp(r14, MAX_LAYERS as i32)?;
    a.jae(whole)?;
    a.mov(
        r13,
        qword_ptr(rdx + rax + (SLOT_LAYERS - LAYER_SIZE + LAYER_POS)),
    )?;
    a.mov(r12, rcx)?;
    a.sub(r12, rdi)?;
    a.jmp(not_ours)?;
    a.set_label(&mut whole)?;
    a.mov(r12, rsi)?;
    a.mov(r13, NO_RECORD)?;
    a.xor(r14d, r14d)?;
    a.set_label(&mut not_ours)?;
    Ok(())
}

/// After the record at `rax` got its own bytes: the mirror gets them too, and a
/// layer for them, and is let go. Registers as [`mirror_compare`] left them; `rbx`
/// the entry's stack pointer, `rsi` the bytes the record stands for, `r9` the
/// record's own bytes. Uses rcx, rdi, rsi, r10.
fn mirror_update(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut skip = a.create_label();
    a.test(r15, r15)?;
    a.jz(skip)?;
    // Taken over meanwhile (a handler on an alternate stack inside this one's range
    // took this thunk for one left by longjmp): the mirror is the taker's now.
    a.cmp(qword_ptr(rdx + SLOT_MIRROR_BUSY), rbx)?;
    a.jne(skip)?;
    // The mirror's new range: [start, top).
    a.lea(rdi, qword_ptr(rbx + 8))?;
    a.lea(rcx, qword_ptr(rdi + rsi))?;
    a.mov(qword_ptr(rdx + SLOT_MIRROR_HI), rcx)?;
    a.mov(qword_ptr(rdx + SLOT_MIRROR_LO), rdi)?;
    // The layer: at index r14, upper end start + own bytes, this record.
    a.lea(rcx, qword_ptr(rdi + r12))?;
    a.mov(r10, r14)?;
    a.shl(r10, LAYER_SIZE.trailing_zeros())?;
    a.mov(qword_ptr(rdx + r10 + (SLOT_LAYERS + LAYER_UPPER)), rcx)?;
    a.mov(qword_ptr(rdx + r10 + (SLOT_LAYERS + LAYER_POS)), rax)?;
    a.lea(r10, qword_ptr(r14 + 1))?;
    a.mov(qword_ptr(rdx + SLOT_LAYER_DEPTH), r10)?;
    // The own bytes into the mirror, from the record (at r9), unless they went
    // there with the record's.
    let mut copied = a.create_label();
    a.test(r13, r13)?;
    a.jnz(copied)?;
    a.mov(r10, rax)?;
    a.mov(rsi, r9)?;
    a.add(rdi, qword_ptr(rdx + SLOT_MIRROR_DELTA))?;
    a.mov(rcx, r12)?;
    a.rep().movsb()?;
    a.mov(rax, r10)?;
    a.set_label(&mut copied)?;
    a.mov(qword_ptr(rdx + SLOT_MIRROR_BUSY), 0)?;
    a.set_label(&mut skip)?;
    Ok(())
}

/// Copies the `r12` own bytes from the stack (at `rsi`) into the record (at `rdi`),
/// and, when this call owns the mirror, into the mirror too: each vector read once
/// from the stack and written to both, so that the two hold the same bytes even if
/// another thread writes on this stack meanwhile. On exit `r13` is non-zero when the
/// mirror got them. Uses rax, rcx, rsi, rdi (and xmm0, kept).
fn own_bytes_copy(a: &mut CodeAssembler, compare: Compare) -> Result<(), IcedError> {
    let mut plain = a.create_label();
    let mut next = a.create_label();
    let mut last = a.create_label();
    let mut done = a.create_label();
    let width: i32 = match compare {
        Compare::Sse2 => 16,
        Compare::Avx2 => 32,
    };
    a.xor(r13d, r13d)?;
    a.test(r15, r15)?;
    a.jz(plain)?;
    // Taken over by a handler that ran in between: the mirror is not this call's.
    a.cmp(qword_ptr(rdx + SLOT_MIRROR_BUSY), rbx)?;
    a.jne(plain)?;
    a.cmp(r12, width)?;
    a.jb(plain)?;
    // rcx: where the stack's bytes go in the mirror; r13: the last whole vector's
    // offset; rax: the offset.
    a.mov(rcx, rsi)?;
    a.add(rcx, qword_ptr(rdx + SLOT_MIRROR_DELTA))?;
    a.lea(r13, qword_ptr(r12 - width))?;
    a.xor(eax, eax)?;
    a.sub(rsp, 16)?;
    a.movdqu(xmmword_ptr(rsp), xmm0)?;
    let one = |a: &mut CodeAssembler, at: AsmRegister64| -> Result<(), IcedError> {
        match compare {
            Compare::Sse2 => {
                a.movdqu(xmm0, xmmword_ptr(rsi + at))?;
                a.movdqu(xmmword_ptr(rdi + at), xmm0)?;
                a.movdqu(xmmword_ptr(rcx + at), xmm0)
            }
            Compare::Avx2 => {
                a.vmovdqu(ymm0, ymmword_ptr(rsi + at))?;
                a.vmovdqu(ymmword_ptr(rdi + at), ymm0)?;
                a.vmovdqu(ymmword_ptr(rcx + at), ymm0)
            }
        }
    };
    a.set_label(&mut next)?;
    one(a, rax)?;
    a.add(rax, width)?;
    a.cmp(rax, r13)?;
    a.jbe(next)?;
    // What is left is less than a vector: the last vector's worth, again in part.
    a.cmp(rax, r12)?;
    a.jae(last)?;
    one(a, r13)?;
    a.set_label(&mut last)?;
    if compare == Compare::Avx2 {
        a.vzeroupper()?;
    }
    a.movdqu(xmm0, xmmword_ptr(rsp))?;
    a.add(rsp, 16)?;
    a.mov(r13d, 1)?;
    a.jmp(done)?;
    a.set_label(&mut plain)?;
    a.mov(rcx, r12)?;
    a.rep().movsb()?;
    a.set_label(&mut done)?;
    Ok(())
}

fn thunk_code(at: u64, spec: &ThunkSpec, compare: Compare) -> Result<Thunk, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut bypass = a.create_label();
    let mut slow_pop = a.create_label();
    let mut slow = a.create_label();
    let mut room = a.create_label();
    let mut wait = a.create_label();
    let mut copy = a.create_label();
    let mut no_hook = a.create_label();
    let mut whole = a.create_label();
    let saved_bytes = 8 * THUNK_SAVED.len() as i32;

    a.mov(r11, spec.ctrl)?;
    a.test(qword_ptr(r11 + CTRL_FLAGS), FLAG_BYPASS as i32)?;
    a.jnz(bypass)?;
    for r in THUNK_SAVED {
        a.push(r)?;
    }
    a.db(&LOAD_THREAD_POINTER_RAX)?;
    lookup(&mut a, rax, rdx, r10, ecx, slow_pop)?;
    // rdx: the slot. rbx: the stack pointer at entry (the return address is there).
    a.test(qword_ptr(rdx + SLOT_FLAGS), SLOT_FLAG_SLOW as i32)?;
    a.jnz(slow_pop)?;
    a.lea(rbx, qword_ptr(rsp + saved_bytes))?;
    a.cmp(rbx, qword_ptr(rdx + SLOT_LO))?;
    a.jb(slow_pop)?;
    a.mov(rsi, qword_ptr(rdx + SLOT_HI))?;
    a.lea(rcx, qword_ptr(rbx + 8))?;
    a.cmp(rcx, rsi)?;
    a.ja(slow_pop)?;
    // rsi: bytes the record stands for, from rbx + 8 up to the stack's top, at most
    // CTRL_COPY_LEN.
    a.sub(rsi, rcx)?;
    a.mov(rcx, qword_ptr(r11 + CTRL_COPY_LEN))?;
    a.cmp(rsi, rcx)?;
    a.cmova(rsi, rcx)?;
    // r9: 1 when the return is hooked here.
    a.xor(r9d, r9d)?;
    if spec.hook_return {
        a.mov(rax, qword_ptr(rbx))?;
        // Tail-called by a hooked function (operator delete -> free): that call's
        // return is hooked already.
        a.cmp(rax, qword_ptr(r11 + CTRL_RET_STUB))?;
        a.je(no_hook)?;
        a.cmp(qword_ptr(rdx + SLOT_DEPTH), MAX_FRAMES as i32)?;
        a.jae(slow_pop)?;
        a.mov(r9d, 1)?;
    }
    a.set_label(&mut no_hook)?;
    // r12: the bytes to copy; r13, r14, r15: see mirror_compare.
    mirror_compare(&mut a, compare)?;
    a.lea(r8, qword_ptr(r12 + (ENTRY_STACK + REC_ALIGN - 1) as i32))?;
    a.and(r8, -(REC_ALIGN as i32))?;
    a.mov(rax, r8)?;
    a.lock().xadd(qword_ptr(r11 + CTRL_HEAD), rax)?;
    a.lea(rcx, qword_ptr(rax + r8))?;
    a.sub(rcx, qword_ptr(r11 + CTRL_TAIL))?;
    a.cmp(rcx, RING_SIZE as i32)?;
    a.ja(wait)?;
    a.set_label(&mut room)?;
    // rdi: the record.
    a.mov(rdi, rax)?;
    a.and(rdi, (RING_SIZE - 1) as i32)?;
    a.add(rdi, qword_ptr(r11 + CTRL_RING))?;
    a.mov(rcx, r9)?;
    a.shl(rcx, 48)?;
    a.or(rcx, r8)?;
    a.mov(r10, info(0, KIND_ENTRY, spec.func, 0))?;
    a.or(rcx, r10)?;
    a.mov(qword_ptr(rdi + REC_INFO), rcx)?;
    a.mov(rcx, qword_ptr(rdx + SLOT_TID))?;
    a.mov(qword_ptr(rdi + REC_TID), rcx)?;
    // Reserved, with its length and thread known: a reader may step over it until
    // it commits.
    a.mov(rcx, rax)?;
    a.bts(rcx, 63)?;
    a.mov(qword_ptr(rdi + REC_COMMIT), rcx)?;
    for n in 0..6 {
        a.mov(rcx, qword_ptr(rsp + saved_arg(n)))?;
        a.mov(qword_ptr(rdi + (ENTRY_ARGS + 8 * n as u64)), rcx)?;
    }
    a.mov(rcx, qword_ptr(rbx))?;
    a.mov(qword_ptr(rdi + ENTRY_RET), rcx)?;
    a.mov(qword_ptr(rdi + ENTRY_SP), rbx)?;
    a.mov(qword_ptr(rdi + ENTRY_FP), rbp)?;
    a.mov(qword_ptr(rdi + ENTRY_STACK_LEN), r12)?;
    a.mov(qword_ptr(rdi + ENTRY_FULL_LEN), rsi)?;
    a.mov(qword_ptr(rdi + ENTRY_PREV), r13)?;
    // The chain's base: the top layer's record, or this one when it is whole.
    a.mov(rcx, rax)?;
    a.cmp(r13, NO_RECORD as i32)?;
    a.je(whole)?;
    a.mov(rcx, qword_ptr(rdx + SLOT_LAYERS + LAYER_POS))?;
    a.set_label(&mut whole)?;
    a.mov(qword_ptr(rdi + ENTRY_BASE), rcx)?;
    // The bytes of its chain the compare stepped over (none when it is whole).
    let mut unskipped = a.create_label();
    a.xor(ecx, ecx)?;
    a.cmp(r13, NO_RECORD as i32)?;
    a.je(unskipped)?;
    a.cmp(r15, 1)?;
    a.jbe(unskipped)?;
    a.mov(rcx, r15)?;
    a.set_label(&mut unskipped)?;
    a.mov(qword_ptr(rdi + ENTRY_SKIP), rcx)?;
    if spec.hook_return {
        a.test(r9d, r9d)?;
        a.jz(copy)?;
        // The depth grows first: a signal handler's calls made from here on go above
        // this frame.
        a.mov(rcx, qword_ptr(rdx + SLOT_DEPTH))?;
        a.lea(r10, qword_ptr(rcx + 1))?;
        a.mov(qword_ptr(rdx + SLOT_DEPTH), r10)?;
        a.shl(rcx, FRAME_SIZE.trailing_zeros())?;
        a.lea(rcx, qword_ptr(rdx + rcx + SLOT_FRAMES))?;
        a.mov(r10, qword_ptr(rbx))?;
        a.mov(qword_ptr(rcx + FRAME_RET), r10)?;
        a.mov(qword_ptr(rcx + FRAME_SP), rbx)?;
        a.mov(qword_ptr(rcx + FRAME_POS), rax)?;
        if spec.out_ptr_arg {
            a.mov(r10, qword_ptr(rsp + saved_arg(0)))?;
        } else {
            a.xor(r10d, r10d)?;
        }
        a.mov(qword_ptr(rcx + FRAME_OUT_PTR), r10)?;
        a.mov(r10, qword_ptr(r11 + CTRL_RET_STUB))?;
        a.mov(qword_ptr(rbx), r10)?;
    }
    a.set_label(&mut copy)?;
    // The own bytes into the record: rsi (the full length) is kept in r9, free now.
    a.mov(r9, rsi)?;
    a.mov(r10, rdi)?;
    a.mov(r8, rax)?;
    a.lea(rsi, qword_ptr(rbx + 8))?;
    a.lea(rdi, qword_ptr(rdi + ENTRY_STACK))?;
    own_bytes_copy(&mut a, compare)?;
    a.mov(rax, r8)?;
    // Commit: the reader takes the record once this word is its position + 1. Before
    // the mirror names it as a layer: a later record's chain never reads a record
    // that may not commit (a signal handler that longjmps out of this thunk).
    a.lea(rcx, qword_ptr(rax + 1))?;
    a.mov(qword_ptr(r10 + REC_COMMIT), rcx)?;
    a.mov(rsi, r9)?;
    // The mirror's bytes from the record's, not from the stack again: another thread
    // may write a variable on this stack in between.
    a.lea(r9, qword_ptr(r10 + ENTRY_STACK))?;
    mirror_update(&mut a)?;
    for r in THUNK_SAVED.iter().rev() {
        a.pop(*r)?;
    }
    a.set_label(&mut bypass)?;
    a.jmp(spec.displaced)?;

    a.set_label(&mut slow_pop)?;
    for r in THUNK_SAVED.iter().rev() {
        a.pop(*r)?;
    }
    a.set_label(&mut slow)?;
    a.int3()?;
    a.ud2()?;

    a.set_label(&mut wait)?;
    let mut bypass_pop = a.create_label();
    wait_for_room(&mut a, spec.ctrl, r8, &[rdx, rsi, r9], room, bypass_pop)?;
    a.set_label(&mut bypass_pop)?;
    // The mirror is let go (its layers may not match it any more: forgotten).
    let mut unowned = a.create_label();
    a.test(r15, r15)?;
    a.jz(unowned)?;
    a.mov(qword_ptr(rdx + SLOT_MIRROR_HI), 0)?;
    a.mov(qword_ptr(rdx + SLOT_MIRROR_BUSY), 0)?;
    a.set_label(&mut unowned)?;
    for r in THUNK_SAVED.iter().rev() {
        a.pop(*r)?;
    }
    a.jmp(spec.displaced)?;

    let result = a.assemble_options(at, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let slow_trap = (result.label_ip(&slow)? - at) as usize;
    Ok(Thunk {
        code: result.inner.code_buffer,
        slow_trap,
    })
}

/// The return stub every hooked call returns through, to be placed at `at`.
pub fn return_stub(at: u64, ctrl: u64) -> Result<ReturnStub, RelocError> {
    return_stub_code(at, ctrl).map_err(asm_err)
}

fn return_stub_code(at: u64, ctrl: u64) -> Result<ReturnStub, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut lost = a.create_label();
    let mut pop = a.create_label();
    let mut matched = a.create_label();
    let mut abandoned = a.create_label();
    let mut no_out = a.create_label();
    let mut room = a.create_label();
    let mut wait = a.create_label();
    let mut out = a.create_label();
    let mut lost_trap = a.create_label();

    // [rsp]: rdx, [rsp+8]: rax, the return value.
    a.push(rax)?;
    a.push(rdx)?;
    a.mov(r11, ctrl)?;
    a.db(&LOAD_THREAD_POINTER_R10)?;
    lookup(&mut a, r10, rdi, rcx, esi, lost)?;
    // r8: the stack pointer at the call's entry (the return popped its slot).
    a.lea(r8, qword_ptr(rsp + 8))?;
    a.set_label(&mut pop)?;
    a.mov(rcx, qword_ptr(rdi + SLOT_DEPTH))?;
    a.test(rcx, rcx)?;
    a.jz(lost)?;
    a.dec(rcx)?;
    a.mov(rsi, rcx)?;
    a.shl(rsi, FRAME_SIZE.trailing_zeros())?;
    a.lea(rsi, qword_ptr(rdi + rsi + SLOT_FRAMES))?;
    a.mov(r9, qword_ptr(rsi + FRAME_SP))?;
    a.cmp(r9, r8)?;
    a.je(matched)?;
    a.jb(abandoned)?;
    a.jmp(lost)?;
    a.set_label(&mut abandoned)?;
    // A deeper call that never returned (left by longjmp or an exception).
    a.mov(qword_ptr(rdi + SLOT_DEPTH), rcx)?;
    a.jmp(pop)?;
    a.set_label(&mut matched)?;
    a.mov(r9, qword_ptr(rsi + FRAME_RET))?;
    a.mov(r10, qword_ptr(rsi + FRAME_POS))?;
    a.mov(r8, qword_ptr(rsi + FRAME_OUT_PTR))?;
    a.mov(qword_ptr(rdi + SLOT_DEPTH), rcx)?;
    a.test(qword_ptr(r11 + CTRL_FLAGS), FLAG_BYPASS as i32)?;
    a.jnz(out)?;
    // rsi: what posix_memalign wrote, if it returned 0.
    a.xor(esi, esi)?;
    a.test(r8, r8)?;
    a.jz(no_out)?;
    a.cmp(dword_ptr(rsp + 8), 0)?;
    a.jne(no_out)?;
    a.mov(rsi, qword_ptr(r8))?;
    a.set_label(&mut no_out)?;
    a.mov(eax, RETURN_LEN as u32)?;
    a.lock().xadd(qword_ptr(r11 + CTRL_HEAD), rax)?;
    a.lea(rcx, qword_ptr(rax + RETURN_LEN as i32))?;
    a.sub(rcx, qword_ptr(r11 + CTRL_TAIL))?;
    a.cmp(rcx, RING_SIZE as i32)?;
    a.ja(wait)?;
    a.set_label(&mut room)?;
    a.mov(rcx, rax)?;
    a.and(rcx, (RING_SIZE - 1) as i32)?;
    a.add(rcx, qword_ptr(r11 + CTRL_RING))?;
    a.mov(rdx, info(RETURN_LEN, KIND_RETURN, 0, 0))?;
    a.mov(qword_ptr(rcx + REC_INFO), rdx)?;
    a.mov(rdx, qword_ptr(rdi + SLOT_TID))?;
    a.mov(qword_ptr(rcx + REC_TID), rdx)?;
    a.mov(rdx, rax)?;
    a.bts(rdx, 63)?;
    a.mov(qword_ptr(rcx + REC_COMMIT), rdx)?;
    a.mov(qword_ptr(rcx + RETURN_ENTRY_POS), r10)?;
    a.mov(rdx, qword_ptr(rsp + 8))?;
    a.mov(qword_ptr(rcx + RETURN_VALUE), rdx)?;
    a.mov(qword_ptr(rcx + RETURN_OUT), rsi)?;
    a.lea(rdx, qword_ptr(rax + 1))?;
    a.mov(qword_ptr(rcx + REC_COMMIT), rdx)?;
    a.set_label(&mut out)?;
    a.pop(rdx)?;
    a.pop(rax)?;
    a.jmp(r9)?;

    a.set_label(&mut lost)?;
    a.pop(rdx)?;
    a.pop(rax)?;
    a.set_label(&mut lost_trap)?;
    a.int3()?;
    a.ud2()?;

    a.set_label(&mut wait)?;
    let len = r8;
    a.mov(len, RETURN_LEN)?;
    wait_for_room(&mut a, ctrl, len, &[rdi, rsi, r9, r10], room, out)?;

    let result = a.assemble_options(at, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let lost_trap = (result.label_ip(&lost_trap)? - at) as usize;
    Ok(ReturnStub {
        code: result.inner.code_buffer,
        lost_trap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(code: &[u8], at: u64) -> Vec<Instruction> {
        let mut d = Decoder::with_ip(64, code, at, DecoderOptions::NONE);
        let mut v = Vec::new();
        while d.can_decode() {
            v.push(d.decode());
        }
        v
    }

    #[test]
    fn entry_jump_reaches_and_refuses() {
        let j = entry_jump(0x1000, 0x2000).unwrap();
        assert_eq!(j[0], 0xe9);
        assert_eq!(
            i32::from_le_bytes(j[1..5].try_into().unwrap()),
            0x2000 - 0x1005
        );
        assert!(entry_jump(0x7f00_0000_0000, 0x1000).is_none());
    }

    #[test]
    fn malloc_prologue_is_displaced_whole() {
        // glibc 2.36 malloc: push r12; push rbp; push rbx; mov rbx,rdi
        let code = [
            0x41, 0x54, 0x55, 0x53, 0x48, 0x89, 0xfb, 0x48, 0x83, 0xec, 0x10,
        ];
        let r = relocate_entry(&code, 0x7f00_0000_1000, 0x7f00_1000_0000).unwrap();
        assert_eq!(r.original_len, 7);
        assert_eq!(&r.code[..7], &code[..7]);
        let insns = decode_all(&r.code[r.relocated_len..], 0);
        assert_eq!(insns[0].code(), Code::Jmp_rm64);
        let n = r.code.len();
        assert_eq!(
            u64::from_le_bytes(r.code[n - 8..].try_into().unwrap()),
            0x7f00_0000_1007
        );
    }

    #[test]
    fn a_displaced_call_returns_into_the_function() {
        // operator new(nothrow): endbr64; sub rsp,8; call _Znwm@plt
        let code = [
            0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xe8, 0x13, 0x03, 0x00, 0x00, 0x90,
        ];
        let from = 0x7f00_0000_1000u64;
        let r = relocate_entry(&code, from, 0x7f00_1000_0000).unwrap();
        // endbr64 and sub cover 8 bytes: the call is not displaced.
        assert_eq!(r.original_len, 8);
        let code2 = [0xf3, 0x0f, 0x1e, 0xfa, 0xe8, 0x13, 0x03, 0x00, 0x00, 0x90];
        let r = relocate_entry(&code2, from, 0x7f00_1000_0000).unwrap();
        assert_eq!(r.original_len, 9);
        let insns = decode_all(&r.code[..r.relocated_len], 0x7f00_1000_0000);
        // lea rsp,[rsp-8]; two dword stores of from+9; a jump to the call's target.
        assert_eq!(insns[1].code(), Code::Lea_r64_m);
        assert_eq!(insns[2].immediate32() as u64, (from + 9) & 0xffff_ffff);
        assert_eq!(insns[3].immediate32() as u64, (from + 9) >> 32);
        assert!(matches!(
            insns[4].flow_control(),
            FlowControl::UnconditionalBranch | FlowControl::IndirectBranch
        ));
        assert!(insns.iter().all(|i| i.flow_control() != FlowControl::Call));
    }

    #[test]
    fn a_displaced_call_followed_by_displaced_code_is_refused() {
        // call rax; mov rdi,rax: the call would return into the entry jump's bytes.
        let code = [0xff, 0xd0, 0x48, 0x89, 0xc7, 0xc3];
        let e = relocate_entry(&code, 0x1000, 0x2000).unwrap_err();
        assert!(matches!(e, RelocError::CannotRelocate { .. }), "{e}");
        // The same call as the last displaced instruction returns past the jump.
        let code = [0x90, 0x90, 0x90, 0xff, 0xd0, 0xc3];
        let r = relocate_entry(&code, 0x1000, 0x2000).unwrap();
        assert_eq!(r.original_len, 5);
    }

    #[test]
    fn a_branch_into_the_displaced_bytes_is_refused() {
        // nop x3; push rbx; jmp back to the second nop.
        let code = [0x90, 0x90, 0x90, 0x90, 0x90, 0x53, 0xeb, 0xf9];
        let e = relocate_entry(&code, 0x1000, 0x2000).unwrap_err();
        assert!(matches!(e, RelocError::CannotRelocate { .. }), "{e}");
        // A function too short for the jump.
        assert!(relocate_entry(&[0xc3], 0x1000, 0x2000).is_err());
    }

    fn spec() -> ThunkSpec {
        ThunkSpec {
            ctrl: 0x7f00_2000_0000,
            func: 3,
            hook_return: true,
            out_ptr_arg: false,
            displaced: 0x7f00_1000_0200,
        }
    }

    #[test]
    fn thunk_assembles_with_its_slow_trap() {
        let at = 0x7f00_1000_0000;
        let t = thunk(at, &spec()).unwrap();
        assert_eq!(t.code[t.slow_trap], 0xcc);
        let insns = decode_all(&t.code, at);
        assert!(insns.iter().all(|i| !i.is_invalid()));
        // It reads fs:0 and jumps to the displaced code.
        assert!(insns.iter().any(|i| i.segment_prefix() == Register::FS));
        assert!(insns
            .iter()
            .any(|i| i.near_branch_target() == spec().displaced));
        // free: no return hook, so no write of the return stub's address.
        let free = thunk(
            at,
            &ThunkSpec {
                hook_return: false,
                ..spec()
            },
        )
        .unwrap();
        assert!(free.code.len() < t.code.len());
    }

    /// Both ways of comparing the stack with its mirror assemble into code that
    /// keeps every vector register it uses but the upper halves.
    #[test]
    fn both_comparisons_assemble() {
        let at = 0x7f00_1000_0000;
        for compare in [Compare::Sse2, Compare::Avx2] {
            let t = thunk_code(at, &spec(), compare).unwrap();
            assert!(t.code.len() as u64 <= THUNK_CODE_MAX, "{compare:?}");
            let free = ThunkSpec {
                hook_return: false,
                ..spec()
            };
            let posix_memalign = ThunkSpec {
                out_ptr_arg: true,
                ..spec()
            };
            for other in [free, posix_memalign] {
                let len = thunk_code(at, &other, compare).unwrap().code.len();
                assert!(len as u64 <= THUNK_CODE_MAX, "{compare:?}");
            }
            let insns = decode_all(&t.code, at);
            assert!(insns.iter().all(|i| !i.is_invalid()), "{compare:?}");
            let vzeroupper = insns.iter().any(|i| i.code() == Code::VEX_Vzeroupper);
            assert_eq!(vzeroupper, compare == Compare::Avx2);
            // Every vector register the code writes is saved on the stack and
            // restored from it, as many times (the compare's, then the copy's).
            let on_stack = |code: Code, reg_op: u32| {
                let mut regs: Vec<Register> = insns
                    .iter()
                    .filter(|i| i.code() == code && i.memory_base() == Register::RSP)
                    .map(|i| i.op_register(reg_op))
                    .collect();
                regs.sort_unstable_by_key(|r| *r as u32);
                regs
            };
            let saved = on_stack(Code::Movdqu_xmmm128_xmm, 1);
            let restored = on_stack(Code::Movdqu_xmm_xmmm128, 0);
            assert_eq!(saved, restored, "{compare:?}");
            assert_eq!(
                saved,
                [
                    Register::XMM0,
                    Register::XMM0,
                    Register::XMM1,
                    Register::XMM2
                ],
                "{compare:?}"
            );
            for i in &insns {
                let written = i.op0_register();
                if written.is_xmm() || written.is_ymm() {
                    let n = written.number();
                    assert!(saved.iter().any(|r| r.number() == n), "{compare:?} {i}");
                }
            }
        }
    }

    #[test]
    fn saved_arguments_are_where_the_pushes_put_them() {
        // Pushed rax, rcx, rdx, rsi, rdi, r8, r9, rbx, r12-r15: r15 at 0, rdi at 56.
        assert_eq!(saved_arg(0), 56);
        assert_eq!(saved_arg(1), 64);
        assert_eq!(saved_arg(2), 72);
        assert_eq!(saved_arg(3), 80);
        assert_eq!(saved_arg(4), 48);
        assert_eq!(saved_arg(5), 40);
    }

    #[test]
    fn return_stub_assembles() {
        let at = 0x7f00_1000_0000;
        let s = return_stub(at, 0x7f00_2000_0000).unwrap();
        assert_eq!(s.code[s.lost_trap], 0xcc);
        let insns = decode_all(&s.code, at);
        assert!(insns.iter().all(|i| !i.is_invalid()));
        // It leaves through an indirect jump to the real return address.
        assert!(insns
            .iter()
            .any(|i| i.code() == Code::Jmp_rm64 && i.op0_register() == Register::R9));
    }
}
