//! memtrace: a memory-leak debugger that traces a process from the outside.
//!
//! # The path one malloc takes
//!
//! 1. `memtrace launch` checks the program ([`elf::check_program`]), forks, seizes the
//!    child with ptrace and lets it exec ([`ptrace::spawn_seized`]). The tracer
//!    ([`tracer::Tracer`]) sees the exec before the dynamic loader runs.
//! 2. At exec the tracer maps a scratch page into the target (an injected `mmap`) and
//!    plants a breakpoint on the loader's `_dl_debug_state`. When the loader reports
//!    the startup libraries mapped, libc (and later libstdc++, also when dlopen'ed)
//!    gets an int3 on the first byte of each allocator function. The displaced
//!    instruction is relocated into the scratch page ([`memtrace_arch::Arch::relocate`]),
//!    followed by a jump back; the int3 is never lifted.
//! 3. The program calls malloc(30) and traps. The tracer reads the registers, takes
//!    the size from the first argument and the caller from the return address, interns
//!    the stack, swaps the return address on the stack for the scratch page's return
//!    trampoline (keeping the real one in the thread's pending frames) and moves the
//!    thread to the relocated instruction. One stop.
//! 4. malloc returns into the trampoline's int3: the tracer reads the returned pointer,
//!    emits [`event::Event::Alloc`], and sends the thread to the real return address.
//!    A second stop. Calls made while a frame is pending (operator new -> malloc) are
//!    nested and not recorded; free is recorded at its entry, one stop.
//! 5. The events feed the [`heap::Heap`] (live blocks, valgrind-style totals). When
//!    the program ends, live blocks are grouped by stack, symbolized, and written as
//!    the text and JSON reports ([`report`]).
pub mod cli;
pub mod elf;
pub mod event;
pub mod heap;
pub mod hooks;
pub mod maps;
pub mod ptrace;
pub mod report;
pub mod symbols;
pub mod tracer;
