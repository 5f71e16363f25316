//! One process image: which objects are loaded, which of them get hooks, and the
//! dynamic loader's rendezvous that tells us when that changes.
//!
//! At exec the loader has not run yet. We plant a breakpoint on its
//! `_dl_debug_state`, the function it calls (as it does for debuggers) each time the
//! list of loaded objects changes: once all startup libraries are mapped (before any
//! constructor or `main`), and on every dlopen/dlclose. At each hit the maps are read
//! again; libc and libstdc++ get their hooks the moment they appear. A static binary
//! has no loader: its own symbol table is hooked at exec.

use super::scratch::{BpKind, Breakpoint, Scratch};
use super::{TraceError, Tracer};
use crate::elf::ObjectInfo;
use crate::event::Tid;
use crate::hooks::{HookFn, CXX_FUNCTIONS, LIBC_FUNCTIONS, MAP_FUNCTIONS};
use crate::maps::{self, Module};
use memtrace_arch::{Arch, Native};

#[derive(Debug, Default)]
pub struct Image {
    /// Entry point of the program (AT_ENTRY), to recognise the executable's module.
    entry: u64,
    is_static: bool,
    modules: Vec<Module>,
    /// The main thread's first stack pointer (where argc is): the top of its stack.
    pub stack_top: u64,
    /// Code ranges whose frees are the allocator's own bookkeeping, not the program's.
    internal: Vec<(u64, u64)>,
    /// The hooked functions' code: start, end, function.
    pub hooked: Vec<(u64, u64, HookFn)>,
    /// The C++ runtime and unwinder: inside a hooked call, a call made from there
    /// (the exception object of a failing operator new) is the allocator's.
    runtime: Vec<(u64, u64)>,
    /// A static program linked without its local symbols: malloc's internals that
    /// map (sysmalloc, new_heap) cannot be told by name, so a mapping call made
    /// while an allocator call is open is taken for the heap's, whoever made it.
    malloc_unnamed: bool,
}

impl Image {
    /// The objects loaded as of the last rescan.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    pub fn is_internal(&self, addr: u64) -> bool {
        self.internal.iter().any(|&(s, e)| s <= addr && addr < e)
    }

    /// Whether a mapping call returning to `ret`, made while an allocator call is
    /// open, maps memory for the heap.
    pub fn maps_for_heap(&self, ret: u64) -> bool {
        self.malloc_unnamed || self.is_internal(ret)
    }

    /// Whether a call returning to `ret` was made by the allocator's own code: a
    /// hooked function (operator new calling malloc), or the C++ runtime.
    pub fn is_allocator_code(&self, ret: u64) -> bool {
        // A return address follows its call, which may be a function's last bytes.
        let call = ret.wrapping_sub(1);
        self.hooked.iter().any(|&(s, e, _)| s <= call && call < e)
            || self.runtime.iter().any(|&(s, e)| s <= ret && ret < e)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Libc,
    Cxx,
    /// libgcc_s, the unwinder C++ exceptions and thread cancellation go through.
    Unwinder,
    /// A static executable: it carries its allocator.
    StaticExe,
}

const AT_ENTRY: u64 = 9;
const AT_BASE: u64 = 7;

/// Where an unwind of a thread's stack starts. An exception thrown by operator new
/// (std::bad_alloc) unwinds through the frame whose return address we replaced by the
/// trampoline, which has no unwind information: the program would terminate.
const UNWIND_FUNCTIONS: &[&str] = &["_Unwind_RaiseException", "_Unwind_ForcedUnwind"];

/// Functions of a static glibc that act on the C library's own behalf: free at
/// thread exit, map a thread's stack (allocate_stack is inlined in pthread_create),
/// unmap cached stacks and a large block (free's munmap_chunk, which tail-calls
/// munmap: the call returns into free), give a thread arena's heap back (heap_trim,
/// shrink_heap, inlined into _int_free), map a locale file (from the archive, or one
/// of a locale's own files: C.UTF-8 on Debian) or the gconv cache. A static program
/// has no libc.so whose whole range says so; with one, these are all inside it.
const STATIC_INTERNAL: &[&str] = &[
    "tcache_thread_shutdown",
    "__malloc_arena_thread_freeres",
    "__libc_thread_freeres",
    "pthread_create",
    "__nptl_free_stacks",
    "munmap_chunk",
    "free",
    "_int_free",
    "heap_trim",
    "shrink_heap",
    "_nl_load_locale_from_archive",
    "_nl_load_locale",
    "__gconv_load_cache",
    // malloc's internals that map its large chunks and its arenas (an allocator call
    // is open: the mappings are heap), and those they are inlined into.
    "sysmalloc",
    "sysmalloc_mmap",
    "sysmalloc_mmap_fallback",
    "new_heap",
    "alloc_new_heap",
    "grow_heap",
    "_int_new_arena",
    "arena_get2",
    "_int_malloc",
    "mremap_chunk",
];

/// Whether symbol `name` is `wanted` or a copy of it the compiler made
/// (`sysmalloc_mmap.constprop.0`, `tcache_init.part.0`).
fn is_or_clones(name: &str, wanted: &str) -> bool {
    name.split('.').next() == Some(wanted)
}

fn read_auxv(pid: i32) -> Vec<(u64, u64)> {
    let Ok(data) = std::fs::read(format!("/proc/{pid}/auxv")) else {
        return Vec::new();
    };
    data.chunks_exact(16)
        .map(|c| {
            let k = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
            let v = u64::from_le_bytes(c[8..].try_into().unwrap_or_default());
            (k, v)
        })
        .collect()
}

/// `startstack` of `/proc/PID/stat`: the main thread's stack pointer at exec.
fn start_stack(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(28 - 3)?.parse().ok()
}

fn role_of(m: &Module, image: &Image) -> Option<Role> {
    let name = m.file_name();
    if image.is_static && m.contains(image.entry) {
        Some(Role::StaticExe)
    } else if m.is_libc() {
        Some(Role::Libc)
    } else if name.starts_with("libstdc++.so") {
        Some(Role::Cxx)
    } else if name.starts_with("libgcc_s.so") {
        Some(Role::Unwinder)
    } else {
        None
    }
}

impl Tracer<'_> {
    fn read_modules(&self) -> Vec<Module> {
        maps::read(self.pid)
            .map(|m| maps::modules(&m))
            .unwrap_or_default()
    }

    pub(super) fn object_info(&self, m: &Module) -> Option<ObjectInfo> {
        let file = std::fs::File::open(maps::target_path(self.pid, &m.path)).ok()?;
        let file = object::ReadCache::new(file);
        ObjectInfo::parse(&crate::elf::WithStrings::new(&file))
    }

    /// Prepares a freshly exec'd image (one thread, stopped at the exec event).
    pub(super) fn setup_image(&mut self, tid: Tid) -> Result<(), TraceError> {
        self.settle_in_place(tid)?;
        self.setup_hooks(tid)
    }

    /// Maps scratch pages and stubs (by injecting system calls into `tid`, stopped
    /// while every other thread is stopped too), follows the loader and hooks what is
    /// mapped now.
    pub(super) fn setup_hooks(&mut self, tid: Tid) -> Result<(), TraceError> {
        self.map_scratch(tid, 0)?;
        self.setup_recording(tid)?;
        let auxv = read_auxv(self.pid);
        let get = |k| auxv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
        self.image.entry = get(AT_ENTRY).unwrap_or(0);
        self.image.stack_top = start_stack(self.pid).unwrap_or(0);
        let loader_base = get(AT_BASE).unwrap_or(0);
        self.image.is_static = loader_base == 0;
        if loader_base != 0 {
            let modules = self.read_modules();
            let ld = modules
                .iter()
                .find(|m| m.base == loader_base)
                .ok_or_else(|| TraceError::Setup("the dynamic loader is not mapped".into()))?;
            let info = self
                .object_info(ld)
                .ok_or_else(|| TraceError::Setup(format!("cannot read {}", ld.path)))?;
            let sym = info.function("_dl_debug_state").ok_or_else(|| {
                TraceError::Setup(format!(
                    "{} has no _dl_debug_state: cannot follow library loading",
                    ld.path
                ))
            })?;
            let addr = ld.base - info.first_vaddr + sym.address;
            let base = ld.base;
            self.plant(tid, addr, BpKind::Loader, base)
                .map_err(TraceError::Setup)?;
        }
        self.rescan(tid);
        Ok(())
    }

    /// The loaded objects may have changed: hook the new allocator objects, forget the
    /// breakpoints of unloaded ones, and tell the sink.
    pub(super) fn rescan(&mut self, tid: Tid) {
        let now = self.read_modules();
        let same = |a: &Module, b: &Module| a.base == b.base && a.path == b.path;
        let gone: Vec<Module> = self
            .image
            .modules
            .iter()
            .filter(|old| !now.iter().any(|m| same(m, old)))
            .cloned()
            .collect();
        if !gone.is_empty() {
            // Stacks held back for unwinding were taken with the old objects: they
            // are unwound (and their calls told nested or not) while the unwinder
            // and the tables still know them.
            self.flush();
        }
        for m in &gone {
            if let Some(g) = &self.guardian {
                for (addr, _) in self.bps.iter().filter(|(_, b)| b.module_base == m.base) {
                    g.withdraw(addr);
                }
            }
            self.bps.forget_module(m.base);
            self.image.hooked.retain(|&(s, _, _)| !m.contains(s));
            self.image.internal.retain(|&(s, _)| !m.contains(s));
            self.image.runtime.retain(|&(s, _)| !m.contains(s));
            if let Some(r) = self.rec.as_mut() {
                r.sites.retain(|site| site.module_base != m.base);
            }
        }
        let new: Vec<Module> = now
            .iter()
            .filter(|m| !self.image.modules.iter().any(|old| same(m, old)))
            .cloned()
            .collect();
        for m in &new {
            if let Some(role) = role_of(m, &self.image) {
                self.hook_module(tid, m, role);
            }
        }
        if now != self.image.modules {
            let pid = self.pid;
            self.walker.sync(&now, &mut |m: &Module| {
                std::fs::File::open(maps::target_path(pid, &m.path)).ok()
            });
        }
        if !gone.is_empty() {
            self.generation += 1;
        }
        if !gone.is_empty() || !new.is_empty() {
            self.sink.modules(self.pid, &now, self.generation);
            if let Some(r) = self.rec.as_mut() {
                // Code moved: where a call comes from must be asked again.
                r.callers.fill(None);
            }
        }
        self.image.modules = now;
        // New hooks jump to their thunks at once: no thread runs code just mapped.
        self.sync_entries(&[]);
    }

    fn hook_module(&mut self, tid: Tid, m: &Module, role: Role) {
        let Some(info) = self.object_info(m) else {
            eprintln!(
                "memtrace: warning: cannot read {}: its allocator calls are not traced",
                m.path
            );
            return;
        };
        let bias = m.base.wrapping_sub(info.first_vaddr);
        let hooks = |t: &[(&'static str, HookFn)]| -> Vec<(&'static str, BpKind)> {
            t.iter().map(|&(n, f)| (n, BpKind::Hook(f))).collect()
        };
        let unwind: Vec<(&str, BpKind)> = UNWIND_FUNCTIONS
            .iter()
            .map(|&n| (n, BpKind::Unwind))
            .collect();
        // exit() runs the atexit handlers, then `_exit` (also `_Exit`): the place to
        // scan, while every thread still has its registers.
        let exit = vec![("exit", BpKind::ExitCall), ("_exit", BpKind::Exit)];
        let table: Vec<(&str, BpKind)> = match role {
            Role::Libc => [hooks(LIBC_FUNCTIONS), hooks(MAP_FUNCTIONS), exit].concat(),
            Role::Cxx => hooks(CXX_FUNCTIONS),
            Role::Unwinder => unwind,
            Role::StaticExe => [
                hooks(LIBC_FUNCTIONS),
                hooks(MAP_FUNCTIONS),
                hooks(CXX_FUNCTIONS),
                unwind,
                exit,
            ]
            .concat(),
        };
        for (name, kind) in table {
            let Some(sym) = info.function(name) else {
                continue;
            };
            let addr = bias.wrapping_add(sym.address);
            if let BpKind::Hook(f) = kind {
                // Its extent, to find calls already in flight when memtrace attaches.
                self.image
                    .hooked
                    .push((addr, addr.wrapping_add(sym.size.max(1)), f));
            }
            if self.bps.contains(addr) {
                continue; // another name for the same code (memalign = aligned_alloc)
            }
            if let Err(e) = self.plant(tid, addr, kind, m.base) {
                eprintln!("memtrace: warning: cannot hook {name} in {}: {e}", m.path);
                continue;
            }
            if let (BpKind::Hook(f), true) = (kind, self.inline_wanted) {
                let mut code = vec![0u8; sym.size.clamp(16, 64 << 10) as usize];
                let n = self.mem.read_partial(addr, &mut code).unwrap_or(0);
                code.truncate(n.min(sym.size.max(1) as usize));
                // The breakpoint is in the code now: its first byte was the original's.
                if let (Some(b), Some(bp)) = (code.first_mut(), self.bps.get(addr)) {
                    *b = bp.original[0];
                }
                self.add_thunk(tid, addr, f, &code, m.base);
            }
        }
        match role {
            Role::Libc => self.image.internal.push((m.start, m.end)),
            Role::StaticExe => {
                for s in info.functions.iter().filter(|s| {
                    STATIC_INTERNAL
                        .iter()
                        .any(|wanted| is_or_clones(&s.name, wanted))
                }) {
                    let start = bias.wrapping_add(s.address);
                    self.image.internal.push((start, start + s.size.max(1)));
                }
                self.image.malloc_unnamed = !info
                    .functions
                    .iter()
                    .any(|s| is_or_clones(&s.name, "sysmalloc"));
            }
            Role::Cxx | Role::Unwinder => self.image.runtime.push((m.start, m.end)),
        }
    }

    /// Plants a breakpoint at `addr`, its displaced instruction relocated into a
    /// scratch slot within reach.
    fn plant(&mut self, tid: Tid, addr: u64, kind: BpKind, module_base: u64) -> Result<(), String> {
        let mut code = [0u8; 16];
        let n = self
            .mem
            .read_partial(addr, &mut code)
            .map_err(|e| format!("reading code at {addr:#x}: {e}"))?;
        let slot = match self.scratch.take_slot(addr) {
            Some(s) => s,
            None => {
                self.map_scratch(tid, Scratch::hint_near(addr))
                    .map_err(|e| e.to_string())?;
                self.scratch
                    .take_slot(addr)
                    .ok_or("no scratch page within reach of the code")?
            }
        };
        let relocated = Native::relocate(&code[..n], addr, slot).map_err(|e| e.to_string())?;
        self.mem
            .write(slot, &relocated.code)
            .map_err(|e| format!("writing the scratch page: {e}"))?;
        let original = code[..Native::BREAKPOINT.len()].to_vec();
        // Recorded before it is written: a memtrace killed in between leaves nothing
        // the guardian does not know of.
        if let Some(g) = &self.guardian {
            g.record_trap(addr, &original, Native::BREAKPOINT[0]);
        }
        self.mem
            .write(addr, Native::BREAKPOINT)
            .map_err(|e| format!("writing the breakpoint at {addr:#x}: {e}"))?;
        self.bps.insert(
            addr,
            Breakpoint {
                kind,
                ool: slot,
                ool_len: relocated.relocated_len as u64,
                resume: addr + relocated.original_len as u64,
                original,
                module_base,
            },
        );
        Ok(())
    }
}
