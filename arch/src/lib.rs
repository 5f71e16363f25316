//! What differs per CPU, and nothing else.
//!
//! The tracer talks about registers with logical names (pc, sp, argument n, return
//! value, where the return address lives at a function's entry) and asks this crate
//! for the bytes to plant (breakpoint, syscall) and for one instruction relocated so it
//! can run out of line. This crate never sees a pid or a syscall and has no `unsafe`.
//!
//! Every architecture's file is compiled on every host (so its tests run anywhere);
//! only the [`Native`] alias depends on `cfg`. Adding aarch64 is one new file and one
//! `cfg` line below.

pub mod recorder;
pub mod x86_64;

pub use recorder::{ReturnStub, Thunk, ThunkSpec};

#[cfg(target_arch = "x86_64")]
pub type Native = x86_64::X86_64;

/// The widest general-purpose register set of any supported architecture, in words.
/// (aarch64's `user_pt_regs` is 34 words; x86_64's `user_regs_struct` is 27.)
pub const MAX_REG_WORDS: usize = 34;

/// A thread's general-purpose registers exactly as the kernel lays them out for the
/// `NT_PRSTATUS` register set, as plain words. Only the first `A::REGSET_WORDS` are used.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Regs {
    pub words: [u64; MAX_REG_WORDS],
}

impl Default for Regs {
    fn default() -> Self {
        Regs {
            words: [0; MAX_REG_WORDS],
        }
    }
}

impl std::fmt::Debug for Regs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.words.iter().map(|w| format!("{w:#x}")))
            .finish()
    }
}

/// Where a function's return address is at the moment its first instruction is about
/// to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnSlot {
    /// In memory at this address (x86_64: the word at the stack pointer).
    Stack(u64),
    /// In the link register (aarch64's x30).
    LinkRegister,
}

/// One instruction, copied so it runs at another address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relocated {
    /// The code to place at the new address: the relocated instruction, then a jump
    /// back to the instruction that followed the original.
    pub code: Vec<u8>,
    /// Length of the relocated instruction at the start of `code`: the jump back
    /// follows it.
    pub relocated_len: usize,
    /// Length of the original instruction.
    pub original_len: usize,
}

/// One decoded instruction, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insn {
    pub address: u64,
    pub len: usize,
    pub bytes: Vec<u8>,
    pub text: String,
    /// Target of a direct call or jump, where the instruction has one.
    pub branch_target: Option<u64>,
}

/// What one instruction does to the flow of control, as the frame analysis that lets
/// the stack compare step over a frame's locals needs it (see "Skipped ranges" in
/// [`recorder`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// On to the next instruction (a system call too).
    Next,
    /// A call (to this address, when it is written in the instruction): on to the
    /// next instruction once it returns.
    Call(Option<u64>),
    /// A jump to this address, always.
    Jump(u64),
    /// A jump to this address, or on to the next instruction.
    Branch(u64),
    /// A jump to an address held in a register or in memory.
    IndirectJump,
    /// A return.
    Return,
    /// Goes nowhere this code says (a trap, an invalid opcode, a halt).
    Stop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    Intel,
    Att,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelocError {
    /// The bytes do not decode to a valid instruction.
    Invalid { address: u64 },
    /// The instruction cannot run elsewhere (for example a RIP-relative operand whose
    /// target would be more than 2 GiB away from the new address).
    CannotRelocate { address: u64, reason: String },
}

impl std::fmt::Display for RelocError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelocError::Invalid { address } => {
                write!(f, "no valid instruction at {address:#x}")
            }
            RelocError::CannotRelocate { address, reason } => {
                write!(
                    f,
                    "instruction at {address:#x} cannot run out of line: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for RelocError {}

/// Return stubs: per-call code through which a hooked function returns without a
/// ptrace stop. A stub's code (read-only, executable) stores the return value and sets
/// a done flag in the stub's data (writable, at a fixed distance from the code), then
/// jumps to the real return address kept in that data. The tracer reads the data at its
/// next stop.
pub const STUB_CODE_SIZE: u64 = 32;
/// Size of one stub's data: done flag, real return address, return value (u64 each).
pub const STUB_DATA_SIZE: u64 = 32;
pub const STUB_DONE: u64 = 0;
pub const STUB_RET: u64 = 8;
pub const STUB_VALUE: u64 = 16;

/// The per-CPU operations the tracer needs.
pub trait Arch {
    const NAME: &'static str;
    /// Number of words of the `NT_PRSTATUS` register set.
    const REGSET_WORDS: usize;
    /// The software breakpoint instruction.
    const BREAKPOINT: &'static [u8];
    /// After a breakpoint trap, the reported pc minus this is the breakpoint's address.
    const TRAP_PC_ADJUST: u64;
    /// The instruction that makes a system call, followed by a breakpoint, so that an
    /// injected system call stops the thread right after it returns.
    const SYSCALL_THEN_BREAK: &'static [u8];
    /// Longest code [`Arch::relocate`] can return (size of an out-of-line slot).
    const MAX_RELOCATED_LEN: usize;
    /// System call numbers the tracer injects.
    const SYS_MMAP: u64;
    const SYS_MUNMAP: u64;
    const SYS_MPROTECT: u64;
    /// exit_group: the system call a thread is in when it ends the whole process.
    const SYS_EXIT_GROUP: u64;
    /// What the recorder's setup injects: its memfd, mapped shared, kept out of
    /// forked children, then its descriptor closed.
    const SYS_MEMFD_CREATE: u64;
    const SYS_MADVISE: u64;
    const SYS_CLOSE: u64;

    fn pc(r: &Regs) -> u64;
    fn set_pc(r: &mut Regs, pc: u64);
    fn sp(r: &Regs) -> u64;
    /// The frame pointer register (rbp, x29): where a frame-pointer walk starts when
    /// no unwind information covers a pc.
    fn frame_pointer(r: &Regs) -> u64;
    /// The n-th integer argument (0-based) at a function's entry, per the C ABI.
    fn arg(r: &Regs, n: usize) -> u64;
    /// The integer return value, at a function's return.
    fn return_value(r: &Regs) -> u64;
    /// Where the return address is at a function's entry.
    fn return_slot(r: &Regs) -> ReturnSlot;
    /// Where the return address of a call that entered with stack pointer
    /// `sp_at_entry` is kept (for a call still pending).
    fn return_slot_at(sp_at_entry: u64) -> ReturnSlot;
    fn link_register(r: &Regs) -> u64;
    fn set_link_register(r: &mut Regs, v: u64);
    /// The stack pointer right after a function entered with stack pointer `sp_at_entry`
    /// has returned.
    fn sp_after_return(sp_at_entry: u64) -> u64;
    /// Sets up a system call `nr` with `args`, to be run by [`Arch::SYSCALL_THEN_BREAK`].
    fn set_syscall(r: &mut Regs, nr: u64, args: [u64; 6]);
    /// The result of a system call that has just returned (negative errno on failure).
    fn syscall_result(r: &Regs) -> i64;
    /// The system call a thread stopped inside one is making (None: not in one).
    fn syscall_nr(r: &Regs) -> Option<u64>;

    /// Relocates the one instruction at the start of `code` (read from address `from`)
    /// so that it runs at `to`, followed by a jump back to the next original instruction.
    fn relocate(code: &[u8], from: u64, to: u64) -> Result<Relocated, RelocError>;
    /// The code of one return stub whose data lies `data_minus_code` bytes after its
    /// code (see [`STUB_CODE_SIZE`]). Position independent: every stub of a region with
    /// the same distance has the same bytes.
    fn return_stub(data_minus_code: i64) -> Vec<u8>;
    /// Length of the instruction at the start of `code`.
    fn insn_len(code: &[u8], address: u64) -> Option<usize>;
    /// Whether the instruction at the start of `code` is a call, and then its length
    /// (the return address is the address after it): what `next` steps over.
    fn call_len(code: &[u8], address: u64) -> Option<usize>;
    /// Where a PLT-style stub at the start of `code` jumps through: the address of the
    /// pointer its indirect jump reads (`jmp [rip+x]`, after an `endbr64`), so a call
    /// to the stub can be named after the function it reaches.
    fn jump_slot(code: &[u8], address: u64) -> Option<u64>;
    /// Length of the jump [`Arch::entry_jump`] writes at a function's entry.
    const ENTRY_JUMP_LEN: usize;
    /// The bytes that make the function at `from` jump to `to` (a recording thunk);
    /// None when `to` is out of their reach.
    fn entry_jump(from: u64, to: u64) -> Option<Vec<u8>>;
    /// The instructions an entry jump displaces, relocated to run at `to` and followed
    /// by a jump back. `function` is the whole function's code, read at `from`:
    /// refused when a branch in it lands inside the displaced bytes.
    fn relocate_entry(function: &[u8], from: u64, to: u64) -> Result<Relocated, RelocError>;
    /// The recording thunk of one hooked function (see [`recorder`]), placed at `at`.
    fn recorder_thunk(at: u64, spec: &ThunkSpec) -> Result<Thunk, RelocError>;
    /// The return stub every hooked call returns through, placed at `at`.
    fn recorder_return_stub(at: u64, ctrl: u64) -> Result<ReturnStub, RelocError>;
    /// The thread pointer (x86_64: the fs base), the key of the thread's slot.
    fn thread_pointer(r: &Regs) -> u64;
    /// Decodes up to `count` instructions.
    fn disassemble(code: &[u8], address: u64, count: usize, syntax: Syntax) -> Vec<Insn>;
    /// The length and [`Flow`] of the instruction at the start of `code` (at
    /// `address`); `None` if it is not a valid one.
    fn flow(code: &[u8], address: u64) -> Option<(usize, Flow)>;
    /// The DWARF number of the stack pointer register (CFI rules name it).
    const DWARF_SP: u16;
    /// The first integer argument that the code at `address` (a program's entry
    /// point) passes to its first call, when it is a constant address (the C
    /// library's start code is handed `main` so), and that call's return address.
    fn entry_first_argument(code: &[u8], address: u64) -> Option<(u64, u64)>;
    /// Register names and values, in the order a debugger shows them.
    fn named_registers(r: &Regs) -> Vec<(&'static str, u64)>;
}
