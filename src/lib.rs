//! memtrace: a memory-leak debugger that traces a process from the outside.
//!
//! # The path one malloc takes
//!
//! 1. `memtrace launch` checks the program ([`launchable::check_program`]; a
//!    `#!` script's chain of interpreters too), forks, seizes the
//!    child with ptrace and lets it exec ([`ptrace::spawn_seized`]). The tracer
//!    ([`tracer::Tracer`]) sees the exec before the dynamic loader runs.
//! 2. At exec the tracer maps a scratch page into the target (an injected `mmap`),
//!    and the recorder's memory: a memfd the target creates (injected
//!    `memfd_create`), mapped in both processes, with a control page, a thread table
//!    and a ring of records ([`ptrace::SharedMem`], layout in
//!    [`memtrace_arch::recorder`]). It plants a breakpoint on the loader's
//!    `_dl_debug_state`. When the loader reports the startup libraries mapped, libc
//!    (and later libstdc++, also when dlopen'ed) is hooked: each allocator function
//!    gets an int3 on its first byte (its first instruction relocated into the
//!    scratch page, [`memtrace_arch::Arch::relocate`]), and a *thunk*, code that
//!    records the call ([`memtrace_arch::Arch::recorder_thunk`]); then the entry's
//!    first five bytes become a jump to the thunk (`tracer/recording.rs`).
//! 3. The program calls malloc(30) and jumps to the thunk: no stop. The thunk finds
//!    the thread's slot in the table (hashing `fs:0`), reserves a record in the ring
//!    (`lock xadd`), writes the call (function, arguments, return address, stack
//!    pointer) and a copy of the top of the stack (only the part that changed since
//!    the thread's previous call: the rest is in that call's record, or in the one
//!    it names, see [`recorder::chain`]), swaps the return address for the
//!    shared return stub (the real one on the thread's shadow stack in the table),
//!    commits the record and runs malloc's displaced instructions, then malloc.
//!    A thread not registered yet (its first call), a stack the thunk cannot copy,
//!    a vfork child: the thunk traps instead, and the tracer writes the same record
//!    at that stop ([`tracer::Tracer`]'s `record_entry`). With `--stops`, or while a
//!    site breakpoint is armed (`--break-at`, the TUI's `b`), the entries are int3s
//!    and every call is such a stop; a site breakpoint's match then hands the thread,
//!    stopped at malloc's first instruction, to the [`debug::Debugger`] until
//!    `continue` (`tracer/debug.rs`, `tracer/step.rs`).
//! 4. malloc returns into the stub, which pops the shadow frame, writes a return
//!    record with the pointer and jumps to the real return address: no stop. The
//!    tracer reads the ring on its own thread, between the target's other stops and
//!    whenever it is idle ([`recorder::Ring`]), in the order the records were
//!    reserved (a record still being written is stepped over and taken once
//!    committed, before anything of its thread after it). [`recorder::Calls`] keeps
//!    each thread's open calls and turns records into [`event::Event`]s: the entry of
//!    a free is its event (seen before the allocator can hand the address out
//!    again); the return of malloc is [`event::Event::Alloc`]. A call made while
//!    another hooked call is open on its thread, by the allocator's own code
//!    (operator new -> malloc), is nested: not the program's, only the pointer a
//!    nested plain allocator returns is noted ([`event::Event::Nested`]), so that
//!    its free is no error.
//! 5. Events wait a moment ([`recorder::Defer`], 100 ms) with their stacks raw:
//!    a block freed meanwhile is never unwound; any other allocation is unwound
//!    then, with DWARF CFI against the record's copy of the stack
//!    ([`unwind::StackWalker`], reusing the frames the thread's last unwind shares
//!    with it), and its stack interned ([`event::StackTable`]). The events feed the
//!    [`heap::Heap`] (live blocks, valgrind-style totals, and heap errors: a free
//!    the heap says is an error gets its stack unwound, and a double free the
//!    first free's).
//! 6. The block is still live when the program calls `_exit`, where a breakpoint
//!    stops every thread ([`tracer::Tracer::scan_now`] is the same path on demand).
//!    The tracer gathers the roots (registers, writable mappings that are not the
//!    heap, stacks from their stack pointer) and asks the sink for the live blocks;
//!    [`leakcheck`] reads them in large chunks and classifies each with memcheck's
//!    meanings, and the heap keeps each block's kind. Then live blocks are grouped
//!    by stack and kind, symbolized once per distinct address
//!    ([`symbols::Symbolizer`], in the module generation the stack was taken in, so
//!    a library unloaded meanwhile still resolves). The objects those stacks point
//!    into were mostly read already: while the program ran, a thread that only runs
//!    on an idle processor loaded the objects of every new stack, and during the
//!    scan another thread symbolized the live blocks' stacks. Suppressions in valgrind's
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
//! [`event::MapCall`] (one made by the C library's code inside an open allocator
//! call is malloc's own, nested: heap; one the program makes meanwhile, from a
//! `new_handler` say, is the program's). The sinks keep the live mappings ([`mappings::Mappings`]) next to the heap;
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
pub mod clock;
pub mod debug;
pub mod debuginfo;
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
