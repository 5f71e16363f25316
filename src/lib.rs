//! memtrace: a memory-leak debugger that traces a process from the outside.
//!
//! # The path one malloc takes
//!
//! 1. `memtrace launch` checks the program ([`launchable::check_program`]; a
//!    `#!` script's chain of interpreters too), forks, seizes the
//!    child with ptrace and lets it exec ([`ptrace::spawn_seized`]). The tracer
//!    ([`tracer::Tracer`]) sees the exec before the dynamic loader runs.
//! 2. At exec the tracer maps a scratch page into the target (an injected `mmap`) and
//!    plants a breakpoint on the loader's `_dl_debug_state`. When the loader reports
//!    the startup libraries mapped, libc (and later libstdc++, also when dlopen'ed)
//!    gets an int3 on the first byte of each allocator function. The displaced
//!    instruction is relocated into the scratch page ([`memtrace_arch::Arch::relocate`]),
//!    followed by a jump back; the int3 is never lifted.
//! 3. The program calls malloc(30) and traps: the one stop of this call. The tracer
//!    first harvests the calls that finished since the last stop (4.), then reads the
//!    registers, takes the size from the first argument and the caller from the
//!    return address, unwinds the rest of the stack with DWARF CFI against one copy
//!    of it ([`unwind::StackWalker`]), interns the stack ([`event::StackTable`]),
//!    swaps the return address on the stack for
//!    a return stub of this call's own (keeping the real one in the stub's data and
//!    in the thread's pending frames) and moves the thread to the relocated
//!    instruction.
//!    If the call matches an armed site breakpoint (`--break-at`, the TUI's `b`),
//!    the entry finishes as usual and then every other thread is stopped and the
//!    [`debug::Debugger`] takes the thread, stopped at malloc's first instruction,
//!    until `continue` (`tracer/debug.rs`, `tracer/step.rs`).
//! 4. malloc returns into its stub, which stores the returned pointer, sets a done
//!    flag and jumps to the real return address: no stop. At the next stop of any
//!    thread the tracer reads the finished stubs and emits [`event::Event::Alloc`]
//!    before anything else, so no free of that block can be seen first. Calls made
//!    while a frame is pending (operator new -> malloc) are nested: not the
//!    program's, only the pointer a nested plain allocator returns is noted
//!    ([`event::Event::Nested`]), so that its free is no error. A free is recorded at
//!    its entry.
//! 5. The events feed the [`heap::Heap`] (live blocks, valgrind-style totals, and
//!    heap errors: a free is checked at its entry, before glibc sees it).
//! 6. The block is still live when the program calls `_exit`, where a breakpoint
//!    stops every thread ([`tracer::Tracer::scan_now`] is the same path on demand).
//!    The tracer gathers the roots (registers, writable mappings that are not the
//!    heap, stacks from their stack pointer) and asks the sink for the live blocks;
//!    [`leakcheck`] reads them in large chunks and classifies each with memcheck's
//!    meanings, and the heap keeps each block's kind. Then live blocks are grouped
//!    by stack and kind, symbolized once per distinct address
//!    ([`symbols::Symbolizer`], in the module generation the stack was taken in, so
//!    a library unloaded meanwhile still resolves). Suppressions in valgrind's
//!    format ([`suppress`]) take out the known findings, each stack seen as
//!    valgrind's with the allocator function the event carried (malloc) first;
//!    then the report is written as text and JSON, and on request as a
//!    flamegraph, a pprof profile, valgrind's XML or folded stacks
//!    ([`report::render`]). `memtrace report` renders a saved JSON the same way,
//!    with no process at all ([`offline`]).
//!
//! `memtrace attach PID` takes the same path from step 2 on, without an exec: the
//! tracer seizes and stops every thread ([`tracer::Tracer::attach`], after the checks
//! of [`attachable`]), injects the mmaps into a stopped thread, hooks what is mapped
//! now (and the loader, for later dlopens) and resumes. A free of a block from
//! before attach is counted apart ([`heap::Heap::attached`]). At the end (deadline,
//! signal, command, exit) it detaches: every thread stopped, moved out of memtrace's
//! code, every byte and return address restored, its pages unmapped. The stop loop
//! waits through a signalfd and an eventfd ([`ptrace::Waiter`]) so that all of these
//! can end it; a guardian process ([`ptrace::Guardian`]) restores the code if
//! memtrace is killed while attached. Before it detaches (and at the end of a
//! launch's `--duration`) the tracer makes the same scan as at `_exit`, so such a
//! report has leak kinds too. Launch and attach start through [`session::Start`].
//!
//! A mapping takes the same path: libc's `mmap`, `munmap`, `mremap`, `mprotect`,
//! `shmat`... are hooked with the allocator, and each call becomes an
//! [`event::MapCall`] (one made inside an open allocator call is glibc's own, nested:
//! heap). The sinks keep the live mappings ([`mappings::Mappings`]) next to the heap;
//! at every scan the tracer reads `/proc/PID/smaps` and the open descriptors
//! ([`procmem::ProcMemory`]), so that the report says what each mapping still live
//! maps, how much of it is resident and whether its descriptor is open.
//! `memtrace maps PID` classifies the same reading into a [`census`], without
//! tracing.
//!
//! With the live view ([`tui`]) the tracer runs on a thread of its own and its sink,
//! [`tui::feed::Feed`], keeps the heap and sends the view a snapshot of the per-site
//! counts a few times a second (from [`tracer::Sink::tick`], after a stop or on the
//! loop's own timer). The view's thread owns the terminal and the symbolizer, so
//! symbols never hold up the trace; its keys come back as [`tracer::Command`]s
//! (pause, scan, detach) that wake the stop loop, or as debugger commands.
pub mod aliases;
pub mod attachable;
pub mod census;
pub mod cli;
pub mod debug;
pub mod elf;
pub mod event;
pub mod heap;
pub mod hooks;
pub mod launchable;
pub mod leakcheck;
pub mod mappings;
pub mod maps;
pub mod offline;
pub mod procmem;
pub mod progress;
pub mod ptrace;
pub mod recorder;
pub mod report;
pub mod session;
pub mod suppress;
pub mod symbols;
pub mod tracer;
pub mod tui;
pub mod unwind;
