//! Symbolization: return addresses to function, file, line and object, off the hot path.
//!
//! The tracer records raw return addresses; this module turns them into [`Frame`]s when a
//! report or the TUI needs them. Objects likely to be needed can be loaded ahead, on a
//! thread that runs only on an idle processor ([`Symbolizer::preload`]); nothing ever
//! waits for that thread. Files the target names are opened under its root directory,
//! held open from the start. Per module it computes the load bias once, finds the
//! DWARF (in the object itself, or in a separate debug file found by build id or
//! `.gnu_debuglink`, as `libc6-dbg` installs them), and falls back to the nearest ELF
//! symbol when there is no line information. Results are cached per address.
//!
//! Modules are remembered for the whole trace, files held open, so addresses recorded
//! while a library was mapped still resolve after `dlclose`. Each module has a
//! lifetime in module generations (the tracer starts a new generation whenever an
//! object is unloaded), and a stack is symbolized in the generation it was taken in:
//! a library mapped where an unloaded one was cannot take the old one's frames.

use crate::aliases::{is_mangled, Aliases};
use crate::debuginfo::Debug;
use crate::maps::Module;
use object::{Object, ObjectKind, ObjectSection, ObjectSegment, ReadCache};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

/// Where separate debug files live (the `libc6-dbg` layout).
const DEBUG_DIR: &str = "/usr/lib/debug";
/// Mappings start on page boundaries: the first PT_LOAD is mapped at its vaddr rounded
/// down to a page.
const PAGE: u64 = 0x1000;

/// One source-level frame at a return address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    /// The return address as recorded (not the `address - 1` that was looked up).
    pub address: u64,
    /// Demangled function name, from DWARF or else the nearest ELF symbol.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Path of the module that holds the address, as the target sees it.
    pub object: Option<String>,
    /// This frame was inlined into the next one (same address).
    pub inlined: bool,
    /// `address` minus the symbol's start, set only when `function` comes from the
    /// symbol table (no line information), for the `name+0x1c` form of the text report.
    pub symbol_offset: Option<u64>,
    /// The function's mangled name (`_ZN3foo3barEi`), for a frame that is not inlined
    /// and whose symbol is mangled: what valgrind's suppressions match.
    pub mangled: Option<String>,
}

impl Frame {
    fn unknown(address: u64, object: Option<String>) -> Self {
        Frame {
            address,
            object,
            ..Frame::default()
        }
    }
}

/// A module as first seen, with what is needed to read it later.
struct Entry {
    module: Module,
    /// Opened when the module was first seen: by the time we symbolize, the target may
    /// have exited (its `/proc/PID/root` gone with it) or the file may have been replaced.
    /// Handed on to what is loaded from it.
    file: Option<File>,
    /// Parsed on first lookup; `Some(None)` when the object could not be read.
    loaded: Option<Option<Loaded>>,
    /// The first module generation it was mapped in.
    since: u32,
    /// The generation in which it was found unloaded; None while mapped.
    until: Option<u32>,
}

impl Entry {
    fn alive_in(&self, generation: u32) -> bool {
        self.since <= generation && self.until.is_none_or(|u| generation < u)
    }
}

struct Loaded {
    /// Runtime address minus file address.
    bias: u64,
    /// DWARF and symbols: the separate debug file when there is one, else the object.
    primary: Debug,
    /// The object itself when `primary` is a separate debug file: its `.dynsym` answers
    /// when the debug file has no symbol table.
    secondary: Option<Debug>,
    /// The functions known by several names (glibc's), and the name to show for each.
    aliases: Aliases,
    /// The object's file, held open: `primary` or `secondary` names it by its
    /// descriptor, to read its split DWARF when a look-up first needs it.
    _object: File,
}

pub struct Symbolizer {
    /// The target's root directory, held open: paths the target names are opened
    /// under it even after the process is gone (and its `/proc/PID/root` with it).
    /// None when module paths are host paths (tests, replays).
    root: Option<Arc<File>>,
    /// Every module ever added, oldest first.
    entries: Vec<Entry>,
    /// Frames per (entry, address).
    cache: HashMap<(usize, u64), Vec<Frame>>,
    /// The generation of the latest module list.
    generation: u32,
    /// Objects being loaded ahead of need (see [`Symbolizer::preload`]).
    preloader: Option<Preloader>,
    /// Counts resets (exec): an object loaded for an earlier program is not taken.
    epoch: u64,
}

/// A thread that loads objects while the trace runs, on processor time nothing
/// else wants: reading a debug file (the C library's is 4 MB of compressed DWARF)
/// is otherwise done when the report is made, after the program ended.
struct Preloader {
    jobs: mpsc::Sender<Preload>,
    done: mpsc::Receiver<(u64, usize, Option<Loaded>)>,
    /// Entries sent and not back yet.
    pending: HashSet<usize>,
}

struct Preload {
    epoch: u64,
    idx: usize,
    root: Option<Arc<File>>,
    module: Module,
    file: Option<File>,
    /// An address in it, looked up once: the first look-up reads the DWARF unit
    /// that holds it (the C library's: `__libc_start_call_main`, in every stack).
    address: u64,
}

impl Preloader {
    fn start() -> Option<Preloader> {
        let (jobs, take) = mpsc::channel::<Preload>();
        let (give, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("symbols".into())
            .spawn(move || {
                crate::ptrace::run_this_thread_when_idle();
                while let Ok(job) = take.recv() {
                    let loaded = job
                        .file
                        .and_then(|f| load(job.root.as_deref(), &job.module, f));
                    if let Some(l) = &loaded {
                        let probe = job.address.wrapping_sub(1).wrapping_sub(l.bias);
                        dwarf_frames(&l.primary, probe, job.address);
                    }
                    if give.send((job.epoch, job.idx, loaded)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(Preloader {
            jobs,
            done,
            pending: HashSet::new(),
        })
    }
}

impl Symbolizer {
    /// A symbolizer for process `pid`: module paths are opened under its root
    /// (`/proc/PID/root`, opened now).
    pub fn new(pid: i32) -> Self {
        Symbolizer {
            root: File::open(format!("/proc/{pid}/root")).ok().map(Arc::new),
            entries: Vec::new(),
            cache: HashMap::new(),
            generation: 0,
            preloader: None,
            epoch: 0,
        }
    }

    /// A symbolizer whose module paths are opened as they are, with no process behind
    /// them (tests, recorded traces).
    pub fn for_files(modules: &[Module]) -> Self {
        let mut s = Symbolizer {
            root: None,
            entries: Vec::new(),
            cache: HashMap::new(),
            generation: 0,
            preloader: None,
            epoch: 0,
        };
        s.add_modules(modules);
        s
    }

    /// Path through which a file the target names is opened.
    fn host_path(&self, path: &str) -> PathBuf {
        rooted(self.root.as_deref(), path)
    }

    /// The target's module list is `modules` as of module generation `generation`
    /// (which never decreases): objects no longer listed end their lifetime there.
    pub fn update_modules(&mut self, modules: &[Module], generation: u32) {
        self.generation = self.generation.max(generation);
        for e in &mut self.entries {
            if e.until.is_none() && !modules.iter().any(|m| same_object(&e.module, m)) {
                e.until = Some(self.generation);
            }
        }
        for m in modules {
            let alive = self
                .entries
                .iter_mut()
                .find(|e| e.until.is_none() && same_object(&e.module, m));
            if let Some(e) = alive {
                // ld.so maps an object in steps: a list read mid-way has a shorter range.
                e.module.start = e.module.start.min(m.start);
                e.module.end = e.module.end.max(m.end);
                continue;
            }
            let file = File::open(self.host_path(&m.path)).ok();
            self.entries.push(Entry {
                module: m.clone(),
                file,
                loaded: None,
                since: self.generation,
                until: None,
            });
        }
    }

    /// The target executed a new program: no earlier module or address means anything.
    pub fn reset(&mut self) {
        self.entries.clear();
        self.cache.clear();
        self.epoch += 1;
        if let Some(p) = &mut self.preloader {
            p.pending.clear();
        }
    }

    /// `address` (of a stack taken in module generation `generation`) will likely be
    /// symbolized: its object is loaded now, on a thread of its own, if it was not.
    pub fn preload(&mut self, address: u64, generation: u32) {
        self.take_preloaded(None);
        let Some(idx) = self
            .entries
            .iter()
            .rposition(|e| e.module.contains(address) && e.alive_in(generation))
        else {
            return;
        };
        if self.entries[idx].loaded.is_some()
            || self
                .preloader
                .as_ref()
                .is_some_and(|p| p.pending.contains(&idx))
        {
            return;
        }
        if self.preloader.is_none() {
            self.preloader = Preloader::start();
        }
        let Some(p) = &mut self.preloader else {
            return;
        };
        let entry = &self.entries[idx];
        let job = Preload {
            epoch: self.epoch,
            idx,
            root: self.root.clone(),
            module: entry.module.clone(),
            // A duplicate, whose number names the file for as long as what is loaded
            // holds it. Both read the file through a path, each with an offset of its own.
            file: entry.file.as_ref().and_then(|f| f.try_clone().ok()),
            address,
        };
        if p.jobs.send(job).is_ok() {
            p.pending.insert(idx);
        }
    }

    /// Stores the objects the preloader has loaded so far. Entry `needed`, if still
    /// being loaded there, is given up on: the caller loads it itself. Waiting would
    /// be waiting on a thread that runs only when a processor is idle, which on a
    /// busy machine is seconds or never.
    fn take_preloaded(&mut self, needed: Option<usize>) {
        while let Some(done) = self.preloader.as_ref().and_then(|p| p.done.try_recv().ok()) {
            self.store_preloaded(done);
        }
        let Some(p) = &mut self.preloader else {
            return;
        };
        if let Some(i) = needed {
            // Its result, when it comes, finds it no longer pending and is dropped.
            p.pending.remove(&i);
        }
    }

    /// One object back from the preloader: kept if it is still wanted (loaded for
    /// this program, and not given up on).
    fn store_preloaded(&mut self, (epoch, idx, loaded): (u64, usize, Option<Loaded>)) {
        let Some(p) = &mut self.preloader else {
            return;
        };
        if epoch == self.epoch && p.pending.remove(&idx) {
            if let Some(e) = self.entries.get_mut(idx) {
                e.loaded.get_or_insert(loaded);
                // What is loaded holds a file of its own.
                e.file = None;
            }
        }
    }

    /// Records the target's current modules: a new generation when one has gone.
    pub fn add_modules(&mut self, modules: &[Module]) {
        let gone = self
            .entries
            .iter()
            .any(|e| e.until.is_none() && !modules.iter().any(|m| same_object(&e.module, m)));
        self.update_modules(modules, self.generation + u32::from(gone));
    }

    /// The frames at return address `address` as the latest module list has it,
    /// innermost first: inlined frames have `inlined: true`, the last one is the real
    /// function.
    pub fn symbolize(&mut self, address: u64) -> Vec<Frame> {
        self.symbolize_in(address, self.generation)
    }

    /// The frames at `address` in a stack taken in module generation `generation`.
    pub fn symbolize_in(&mut self, address: u64, generation: u32) -> Vec<Frame> {
        let Some(idx) = self
            .entries
            .iter()
            .rposition(|e| e.module.contains(address) && e.alive_in(generation))
        else {
            return vec![Frame::unknown(address, None)];
        };
        if let Some(frames) = self.cache.get(&(idx, address)) {
            return frames.clone();
        }
        let frames = self.lookup(idx, address);
        self.cache.insert((idx, address), frames.clone());
        frames
    }

    fn lookup(&mut self, idx: usize, address: u64) -> Vec<Frame> {
        self.take_preloaded(Some(idx));
        let root = self.root.clone();
        let entry = &mut self.entries[idx];
        let object = Some(entry.module.path.clone());
        if entry.loaded.is_none() {
            let file = entry.file.take();
            entry.loaded = Some(file.and_then(|f| load(root.as_deref(), &entry.module, f)));
        }
        let Some(Some(loaded)) = &entry.loaded else {
            return vec![Frame::unknown(address, object)];
        };
        // A return address points after the call; the call itself is one byte before.
        let probe = address.wrapping_sub(1).wrapping_sub(loaded.bias);
        let mut frames = dwarf_frames(&loaded.primary, probe, address);
        match frames.last_mut() {
            // Line information without a function entry (assembly, for one).
            Some(outer) if outer.function.is_none() => {
                if let Some((raw, _)) = loaded.raw_symbol(probe) {
                    outer.function = Some(demangle(&raw));
                    outer.mangled = is_mangled(&raw).then_some(raw);
                }
            }
            // A C++ or Rust function: its symbol spells the full signature
            // (`Widget* make_one<Widget>()`) where DWARF has only `make_one<Widget>`,
            // and it is what valgrind and gdb print.
            Some(outer) => {
                if let Some((raw, _)) = loaded.raw_symbol(probe).filter(|(n, _)| is_mangled(n)) {
                    outer.function = Some(demangle(&raw));
                    outer.mangled = Some(raw);
                } else if let Some(best) = outer
                    .function
                    .as_deref()
                    .and_then(|name| loaded.best_name(probe, name))
                {
                    // `__GI___strdup` -> `strdup`, as valgrind says.
                    outer.function = Some(best);
                }
            }
            None => {
                let mut f = Frame::unknown(address, None);
                if let Some((raw, start)) = loaded.raw_symbol(probe) {
                    f.function = Some(demangle(&raw));
                    f.mangled = is_mangled(&raw).then_some(raw);
                    let start = start.wrapping_add(loaded.bias);
                    f.symbol_offset = Some(address.wrapping_sub(start));
                }
                frames.push(f);
            }
        }
        for f in &mut frames {
            f.object = object.clone();
        }
        frames
    }
}

/// The line-table row that holds an instruction address (for stepping by line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// First runtime address of the row: a pc equal to it is at the start of a line.
    pub start: u64,
    pub file: String,
    pub line: u32,
}

impl Symbolizer {
    /// The frames at instruction address `pc` (not a return address: nothing is
    /// subtracted), in the latest module generation.
    pub fn at_pc(&mut self, pc: u64) -> Vec<Frame> {
        // `symbolize` looks up `address - 1`, where the call of a return address is.
        let mut frames = self.symbolize(pc.wrapping_add(1));
        for f in &mut frames {
            f.address = pc;
            if let Some(off) = f.symbol_offset.as_mut() {
                *off = off.wrapping_sub(1);
            }
        }
        frames
    }

    /// The index and parsed data of the live module holding `addr`.
    fn loaded_at(&mut self, addr: u64) -> Option<&Loaded> {
        let generation = self.generation;
        let idx = self
            .entries
            .iter()
            .rposition(|e| e.module.contains(addr) && e.alive_in(generation))?;
        self.loaded(idx)
    }

    fn loaded(&mut self, idx: usize) -> Option<&Loaded> {
        self.take_preloaded(Some(idx));
        let root = self.root.clone();
        let entry = self.entries.get_mut(idx)?;
        if entry.loaded.is_none() {
            let file = entry.file.take();
            entry.loaded = Some(file.and_then(|f| load(root.as_deref(), &entry.module, f)));
        }
        entry.loaded.as_ref().and_then(Option::as_ref)
    }

    /// The line-table row holding instruction address `pc`, if its object has one.
    pub fn row_at(&mut self, pc: u64) -> Option<Row> {
        let loaded = self.loaded_at(pc)?;
        let probe = pc.wrapping_sub(loaded.bias);
        let (start, len, file, line) = loaded.primary.rows(probe, probe + 1).into_iter().next()?;
        if !(start <= probe && probe < start + len) {
            return None;
        }
        Some(Row {
            start: start.wrapping_add(loaded.bias),
            file: file?,
            line: line?,
        })
    }

    /// Runtime address ranges of every line-table row of `line` in a file whose path is
    /// `file` or ends with `/file`, in every live module that `want` accepts (by path).
    pub fn line_ranges(
        &mut self,
        file: &str,
        line: u32,
        want: &dyn Fn(&str) -> bool,
    ) -> Vec<(u64, u64)> {
        let generation = self.generation;
        let idxs: Vec<usize> = (0..self.entries.len())
            .filter(|&i| self.entries[i].alive_in(generation) && want(&self.entries[i].module.path))
            .collect();
        let suffix = format!("/{file}");
        let mut out = Vec::new();
        for i in idxs {
            let Some(loaded) = self.loaded(i) else {
                continue;
            };
            let rows = loaded.primary.rows(0, u64::MAX);
            for (start, len, row_file, row_line) in rows {
                let same_file = row_file.is_some_and(|f| f == file || f.ends_with(&suffix));
                if row_line == Some(line) && same_file {
                    let s = start.wrapping_add(loaded.bias);
                    out.push((s, s + len));
                }
            }
        }
        out
    }
}

/// The same object at the same place (its range may grow while the loader maps it).
fn same_object(a: &Module, b: &Module) -> bool {
    a.path == b.path && a.inode == b.inode && a.base == b.base
}

impl Loaded {
    /// Nearest symbol containing `probe` (a file address): its name as the symbol
    /// table spells it, and its start.
    fn raw_symbol(&self, probe: u64) -> Option<(String, u64)> {
        let from = |d: &Debug| d.symbol(probe);
        let (name, start) =
            from(&self.primary).or_else(|| self.secondary.as_ref().and_then(from))?;
        match self.aliases.best(start, &name) {
            Some(best) => Some((best.to_string(), start)),
            None => Some((name, start)),
        }
    }

    /// The best name of the function that holds `probe`, when `name` is one of its
    /// names (DWARF's linkage name of a glibc function is its internal alias).
    fn best_name(&self, probe: u64, name: &str) -> Option<String> {
        let (best, start) = self.raw_symbol(probe)?;
        (best != name && self.aliases.best(start, name).is_some()).then_some(best)
    }
}

/// Every frame addr2line knows at `probe`, innermost first; empty without DWARF there.
fn dwarf_frames(debug: &Debug, probe: u64, address: u64) -> Vec<Frame> {
    let mut out: Vec<Frame> = debug
        .frames(probe)
        .into_iter()
        .filter(|f| f.function.is_some() || f.file.is_some())
        .map(|f| Frame {
            address,
            function: f.function.as_deref().map(demangle),
            file: f.file,
            line: f.line,
            inlined: true,
            ..Frame::default()
        })
        .collect();
    if let Some(outer) = out.last_mut() {
        outer.inlined = false;
    }
    out
}

/// Where to open `path`, a path the target names: under its root (`root`, a
/// directory held open) when the file is there, else on the host as it is.
fn rooted(root: Option<&File>, path: &str) -> PathBuf {
    if let Some(root) = root {
        let p = PathBuf::from(format!("/proc/self/fd/{}", root.as_raw_fd()))
            .join(path.trim_start_matches('/'));
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(path)
}

/// Parses a module once: load bias, debug file, loaders. None when unreadable.
/// What it loads holds `file`: a split DWARF look-up reads the object again, later.
fn load(root: Option<&File>, module: &Module, file: File) -> Option<Loaded> {
    // Reopening our own descriptor reads the very file the target mapped, even if it
    // has since been deleted or replaced, or the target's root is gone. Read whole:
    // its symbol table's names, read one by one through a cache, cost more.
    let object = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    let data = std::fs::read(&object).ok()?;
    let obj = object::File::parse(&*data).ok()?;
    let bias = load_bias(&obj, module.base);
    let resolve = |p: &str| rooted(root, p);
    let debug_path = if has_dwarf(&obj) {
        None
    } else {
        find_debug_file(&obj, &module.path, &resolve)
    };
    let mut aliases = Aliases::default();
    aliases.add(&obj);
    // Read once, for its DWARF and for its symbol table, which has the local aliases
    // the object's lacks.
    let debug = debug_path.as_ref().and_then(|p| {
        let data = std::fs::read(p).ok()?;
        let parsed = object::File::parse(&*data).ok()?;
        let debug = open_debug(p, &data, &parsed, &resolve)?;
        aliases.add(&parsed);
        Some(debug)
    });
    let aliases = aliases.finish();
    match debug {
        Some(primary) => Some(Loaded {
            bias,
            primary,
            secondary: Debug::from_data(&data, &object),
            aliases,
            _object: file,
        }),
        None => Some(Loaded {
            bias,
            primary: Debug::from_data(&data, &object)?,
            secondary: None,
            aliases,
            _object: file,
        }),
    }
}

/// Runtime minus file address. ET_EXEC is loaded where it was linked; ET_DYN anywhere,
/// with its lowest PT_LOAD (rounded down to a page) at the module's base.
fn load_bias<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, base: u64) -> u64 {
    if obj.kind() != ObjectKind::Dynamic {
        return 0;
    }
    let lowest = obj.segments().map(|s| s.address()).min().unwrap_or(0);
    base.wrapping_sub(lowest & !(PAGE - 1))
}

fn has_dwarf<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> bool {
    obj.section_by_name(".debug_info")
        .is_some_and(|s| s.size() > 0)
}

/// `/usr/lib/debug/.build-id/xx/yyyy.debug` for build id `xxyyyy`.
fn build_id_path(id: &[u8]) -> Option<String> {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    if hex.len() < 3 {
        return None;
    }
    Some(format!(
        "{DEBUG_DIR}/.build-id/{}/{}.debug",
        &hex[..2],
        &hex[2..]
    ))
}

/// The separate debug file of `obj` (mapped from `path` in the target), as gdb looks for
/// it: by build id, then by `.gnu_debuglink` next to the object, in its `.debug/`, and
/// under /usr/lib/debug. A candidate whose build id differs is someone else's.
fn find_debug_file<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
    path: &str,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<PathBuf> {
    let id = obj.build_id().ok().flatten();
    let mut candidates = Vec::new();
    if let Some(p) = id.and_then(build_id_path) {
        candidates.push(resolve(&p));
    }
    if let Some((name, _crc)) = obj.gnu_debuglink().ok().flatten() {
        let name = String::from_utf8_lossy(name);
        let dir = Path::new(path).parent().unwrap_or(Path::new("/"));
        let dir = dir.to_string_lossy();
        for c in [
            format!("{dir}/{name}"),
            format!("{dir}/.debug/{name}"),
            format!("{DEBUG_DIR}{dir}/{name}"),
        ] {
            candidates.push(resolve(&c));
        }
    }
    // A debuglink naming the object's own file would otherwise match itself.
    let itself = resolve(path);
    candidates
        .into_iter()
        .find(|c| *c != itself && debug_file_matches(c, id))
}

fn debug_file_matches(path: &Path, id: Option<&[u8]>) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let cache = ReadCache::new(&file);
    let Ok(obj) = object::File::parse(&cache) else {
        return false;
    };
    match (id, obj.build_id().ok().flatten()) {
        (Some(a), Some(b)) => a == b,
        _ => has_dwarf(&obj),
    }
}

/// A loader for a debug file, with the dwz supplementary file it points to if any
/// (Debian's debug packages share common DWARF in one such file).
fn open_debug<'d>(
    path: &Path,
    data: &'d [u8],
    obj: &object::File<'d>,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Option<Debug> {
    let sup = (|| {
        let (name, id) = obj.gnu_debugaltlink().ok().flatten()?;
        let name = String::from_utf8_lossy(name).into_owned();
        let near = match path.parent() {
            Some(dir) if !name.starts_with('/') => dir.join(&name),
            _ => resolve(&name),
        };
        let by_id = build_id_path(id).map(|p| resolve(&p));
        [Some(near), by_id]
            .into_iter()
            .flatten()
            .find(|p| p.exists())
    })();
    match sup {
        Some(sup) => Debug::open_with_sup(path, &sup),
        None => Debug::from_data(data, path),
    }
}

/// Demangles a Rust or C++ symbol; other names come back unchanged.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        // `{:#}` drops the hash suffix of legacy Rust symbols.
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        let cpp = cpp_demangle::Symbol::new(name).ok();
        if let Some(d) = cpp.and_then(|s| s.demangle().ok()) {
            return d;
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn the_targets_root_stays_reachable_after_it_is_gone() {
        // Files the target names are opened under its root, held open: a load made
        // while the process exits must not find a path and then fail to open it.
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let sym = Symbolizer::new(child.id() as i32);
        child.kill().unwrap();
        child.wait().unwrap();
        let p = sym.host_path("/bin/sh");
        assert!(p.starts_with("/proc/self/fd/"), "{p:?}");
        assert!(File::open(&p).is_ok());
        // Not in the target's root: the host's.
        assert_eq!(
            sym.host_path("/no/such/file"),
            PathBuf::from("/no/such/file")
        );
    }

    const SRC: &str = r#"#include <stdlib.h>
static inline __attribute__((always_inline)) int twice(int x) {
    return x * 2; // INLINE
}
__attribute__((noinline)) void *make(int n) {
    return malloc(n);
}
int main(int argc, char **argv) { // MAIN
    void *p = make(twice(argc)); // CALL
    return p != 0;
}
"#;

    /// 1-based line of the source line holding `marker`.
    fn line_of(marker: &str) -> u32 {
        let i = SRC.lines().position(|l| l.contains(marker));
        i.map(|i| i as u32 + 1).unwrap_or(0)
    }

    /// Compiles SRC with `flags`; None (the test is skipped) when there is no C compiler.
    fn compile(dir: &Path, name: &str, flags: &[&str]) -> Option<PathBuf> {
        compile_file(dir, name, "t.c", SRC, flags)
    }

    /// Compiles `text` as `NAME.c`.
    fn compile_source(dir: &Path, name: &str, text: &str, flags: &[&str]) -> Option<PathBuf> {
        compile_file(dir, name, &format!("{name}.c"), text, flags)
    }

    fn compile_file(
        dir: &Path,
        name: &str,
        file: &str,
        text: &str,
        flags: &[&str],
    ) -> Option<PathBuf> {
        let src = dir.join(file);
        std::fs::write(&src, text).ok()?;
        let out = dir.join(name);
        let status = Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .status();
        match status {
            Ok(s) if s.success() => Some(out),
            _ => {
                eprintln!("skipped: cc {flags:?} failed");
                None
            }
        }
    }

    /// File address and size of symbol `name`.
    fn symbol(path: &Path, name: &str) -> (u64, u64) {
        use object::ObjectSymbol;
        let data = std::fs::read(path).expect("read test binary");
        let obj = object::File::parse(&*data).expect("parse test binary");
        let sym = obj.symbols().find(|s| s.name() == Ok(name));
        let sym = sym.expect("symbol in test binary");
        (sym.address(), sym.size())
    }

    fn module(path: &Path, base: u64) -> Module {
        Module {
            path: path.to_string_lossy().into_owned(),
            start: base,
            end: base + 0x10_0000,
            base,
            inode: 1,
        }
    }

    #[test]
    fn dwarf_gives_function_file_line_and_inlined_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(bin) = compile(dir.path(), "g", &["-g", "-O0", "-no-pie"]) else {
            return;
        };
        let (main, size) = symbol(&bin, "main");
        let mut s = Symbolizer::for_files(&[module(&bin, 0x40_0000)]);
        let f = s.symbolize(main + 1);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].function.as_deref(), Some("main"));
        assert!(f[0].file.as_deref().is_some_and(|p| p.ends_with("t.c")));
        assert_eq!(f[0].line, Some(line_of("// MAIN")));
        assert_eq!(f[0].object.as_deref(), Some(&*bin.to_string_lossy()));
        assert_eq!(
            (f[0].address, f[0].inlined, f[0].symbol_offset),
            (main + 1, false, None)
        );

        // Somewhere in main, `twice` is inlined at the CALL line.
        let inlined = (main..main + size)
            .map(|a| s.symbolize(a + 1))
            .find(|f| f.len() == 2);
        let f = inlined.expect("an address inside the inlined call");
        assert_eq!(f[0].function.as_deref(), Some("twice"));
        assert_eq!(
            (f[0].line, f[0].inlined),
            (Some(line_of("// INLINE")), true)
        );
        assert_eq!(f[1].function.as_deref(), Some("main"));
        assert_eq!((f[1].line, f[1].inlined), (Some(line_of("// CALL")), false));
        assert_eq!(f[0].address, f[1].address);
    }

    #[test]
    fn an_object_loaded_ahead_gives_the_frames_a_load_on_demand_gives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(bin) = compile(dir.path(), "g", &["-g", "-O0", "-no-pie"]) else {
            return;
        };
        let other_src =
            "int helper(int x) { return x + 1; }\nint main(void) { return helper(0); }\n";
        let Some(other) = compile_source(dir.path(), "other", other_src, &["-g", "-O0", "-no-pie"])
        else {
            return;
        };
        // The preloader's answer, however long its idle thread takes to give it.
        let answer = |s: &Symbolizer| s.preloader.as_ref().unwrap().done.recv().unwrap();
        let (main, _) = symbol(&bin, "main");
        let mut ahead = Symbolizer::for_files(&[module(&bin, 0x40_0000)]);
        ahead.preload(main + 1, 0);
        ahead.preload(main + 1, 0);
        assert_eq!(ahead.preloader.as_ref().map(|p| p.pending.len()), Some(1));
        let done = answer(&ahead);
        ahead.store_preloaded(done);
        assert!(
            ahead.entries[0].loaded.is_some(),
            "the preloaded object is kept"
        );
        let f = ahead.symbolize(main + 1);
        let mut on_demand = Symbolizer::for_files(&[module(&bin, 0x40_0000)]);
        assert_eq!(f, on_demand.symbolize(main + 1));
        assert_eq!(f[0].function.as_deref(), Some("main"));
        // A preload for a program replaced by exec is not taken for the new one's
        // object at the same place.
        let mut exec = Symbolizer::for_files(&[module(&bin, 0x40_0000)]);
        exec.preload(main + 1, 0);
        exec.reset();
        exec.add_modules(&[module(&other, 0x40_0000)]);
        let done = answer(&exec);
        exec.store_preloaded(done);
        assert!(
            exec.entries[0].loaded.is_none(),
            "the old program's object is dropped"
        );
        let (other_main, _) = symbol(&other, "main");
        let g = exec.symbolize(other_main + 1);
        assert_eq!(g[0].function.as_deref(), Some("main"));
        assert!(
            g[0].file.as_deref().is_some_and(|p| p.ends_with("other.c")),
            "{g:?}"
        );
        // An object still being loaded when it is needed is loaded there and then:
        // nothing waits for the idle thread.
        let mut busy = Symbolizer::for_files(&[module(&bin, 0x40_0000)]);
        busy.preload(main + 1, 0);
        assert_eq!(busy.symbolize(main + 1), f);
        assert!(busy
            .preloader
            .as_ref()
            .is_some_and(|p| p.pending.is_empty()));
    }

    #[test]
    fn pie_addresses_are_rebased() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(bin) = compile(dir.path(), "pie", &["-g", "-O0", "-fPIE", "-pie"]) else {
            return;
        };
        let (main, _) = symbol(&bin, "main");
        let base = 0x5555_5555_4000;
        let mut s = Symbolizer::for_files(&[module(&bin, base)]);
        let f = s.symbolize(base + main + 1);
        assert_eq!(f[0].function.as_deref(), Some("main"));
        assert_eq!(f[0].line, Some(line_of("// MAIN")));
    }

    #[test]
    fn without_dwarf_the_symbol_table_names_the_function() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flags = ["-O0", "-no-pie"];
        let Some(bin) = compile(dir.path(), "nog", &flags) else {
            return;
        };
        let (main, _) = symbol(&bin, "main");
        let mut s = Symbolizer::for_files(&[module(&bin, 0x40_0000)]);
        let f = s.symbolize(main + 5);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].function.as_deref(), Some("main"));
        assert_eq!((f[0].file.as_deref(), f[0].line), (None, None));
        assert_eq!(f[0].symbol_offset, Some(5));

        // Stripped, same code layout: only the object is known.
        let Some(stripped) = compile(dir.path(), "s", &["-O0", "-no-pie", "-s"]) else {
            return;
        };
        let mut s = Symbolizer::for_files(&[module(&stripped, 0x40_0000)]);
        let f = s.symbolize(main + 5);
        assert_eq!(f[0].function, None);
        assert_eq!(f[0].object.as_deref(), Some(&*stripped.to_string_lossy()));
    }

    #[test]
    fn unknown_and_unreadable_addresses_degrade_to_nulls() {
        let mut s = Symbolizer::for_files(&[module(Path::new("/nonexistent/lib.so"), 0x1000)]);
        assert_eq!(s.symbolize(0x10), vec![Frame::unknown(0x10, None)]);
        let f = s.symbolize(0x1100);
        assert_eq!(
            f,
            vec![Frame::unknown(0x1100, Some("/nonexistent/lib.so".into()))]
        );
    }

    #[test]
    fn modules_stay_resolvable_after_they_disappear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(bin) = compile(dir.path(), "g", &["-g", "-O0", "-no-pie"]) else {
            return;
        };
        let (main, _) = symbol(&bin, "main");
        let mut s = Symbolizer::new(std::process::id() as i32);
        s.update_modules(&[module(&bin, 0x40_0000)], 0);
        // dlclose: the next list no longer has it; the file is even gone.
        s.update_modules(&[], 1);
        std::fs::remove_file(&bin).expect("remove test binary");
        let f = s.symbolize_in(main + 1, 0);
        assert_eq!(f[0].function.as_deref(), Some("main"));
        // A stack taken after it went does not resolve into it.
        assert_eq!(
            s.symbolize_in(main + 1, 1),
            vec![Frame::unknown(main + 1, None)]
        );
    }

    #[test]
    fn a_library_mapped_where_another_was_does_not_take_its_frames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (Some(a), Some(b)) = (
            compile_source(dir.path(), "a", SRC, &["-g", "-O0", "-no-pie"]),
            compile_source(
                dir.path(),
                "b",
                "int other(void){return 1;}\nint main(void){return other();}\n",
                &["-g", "-O0", "-no-pie"],
            ),
        ) else {
            return;
        };
        let (main_a, _) = symbol(&a, "main");
        let mut s = Symbolizer::new(std::process::id() as i32);
        s.update_modules(&[module(&a, 0x40_0000)], 0);
        // `a` goes (generation 1); `b` comes at the same place.
        s.update_modules(&[], 1);
        s.update_modules(&[module(&b, 0x40_0000)], 1);
        let f = s.symbolize_in(main_a + 1, 0);
        assert_eq!(
            f.last()
                .and_then(|f| f.file.as_deref())
                .map(|p| p.ends_with("a.c")),
            Some(true),
            "{f:?}"
        );
        let f = s.symbolize_in(main_a + 1, 1);
        assert_eq!(
            f.last().and_then(|f| f.object.clone()),
            Some(b.to_string_lossy().into_owned())
        );
        assert_eq!(s.symbolize(main_a + 1), f, "the latest generation is b's");
    }

    #[test]
    fn a_preloaded_objects_split_dwarf_is_read_from_that_object_later() {
        // The preloader once loaded an object through a descriptor that its job then
        // closed: a split DWARF look-up made afterwards read whatever file took the
        // descriptor's number since.
        let dir = tempfile::tempdir().unwrap();
        let bin = crate::debuginfo::tests::build_split_dwarf(dir.path(), &["-no-pie"]);
        let (make, _) = symbol(&bin, "make");
        let (start, _) = symbol(&bin, "_start");
        let first = module(&bin, 0x40_0000);
        let expected: Vec<_> = (1..9)
            .map(|i| Symbolizer::for_files(std::slice::from_ref(&first)).symbolize(make + i))
            .collect();
        assert!(
            expected.iter().all(|f| f.iter().any(|f| f.line.is_some())),
            "the split DWARF gives lines: {expected:?}"
        );
        let mut ahead =
            Symbolizer::for_files(&[first, module(Path::new("/bin/true"), 0x1000_0000)]);
        for address in [start + 1, 0x1000_0000 + 1] {
            ahead.preload(address, 0);
            // One job at a time: the first job is over when the second's answer comes.
            let done = ahead.preloader.as_ref().unwrap().done.recv().unwrap();
            ahead.store_preloaded(done);
        }
        // Files opened now take the lowest free numbers, any the jobs closed among them.
        let _others: Vec<_> = (0..8)
            .map(|_| File::open("/proc/self/exe").unwrap())
            .collect();
        let got: Vec<_> = (1..9).map(|i| ahead.symbolize(make + i)).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn libc_malloc_resolves() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read own maps");
        let mods = crate::maps::modules(&crate::maps::parse_maps(&maps));
        let mut s = Symbolizer::new(std::process::id() as i32);
        s.add_modules(&mods);
        let addr = libc::malloc as *const () as usize as u64;
        let f = s.symbolize(addr + 1);
        let outer = f.last().expect("at least one frame");
        assert!(
            outer
                .function
                .as_deref()
                .is_some_and(|n| n.contains("malloc")),
            "{f:?}"
        );
        assert!(
            outer
                .object
                .as_deref()
                .is_some_and(|o| o.contains("libc.so")),
            "{f:?}"
        );
        if Path::new("/usr/lib/debug/.build-id").is_dir() {
            assert!(
                outer.file.as_deref().is_some_and(|p| p.ends_with(".c")),
                "{f:?}"
            );
            assert!(outer.line.is_some());
        }
    }

    #[test]
    fn own_rust_functions_resolve_demangled() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read own maps");
        let mods = crate::maps::modules(&crate::maps::parse_maps(&maps));
        let mut s = Symbolizer::new(std::process::id() as i32);
        s.add_modules(&mods);
        let addr = demangle as fn(&str) -> String as *const () as usize as u64;
        let f = s.symbolize(addr + 1);
        let outer = f.last().expect("at least one frame");
        assert_eq!(
            outer.function.as_deref(),
            Some("memtrace::symbols::demangle"),
            "{f:?}"
        );
        // Suppressions match the symbol as the object spells it.
        let mangled = outer.mangled.as_deref().expect("a mangled name");
        assert!(is_mangled(mangled), "{f:?}");
        assert_eq!(demangle(mangled), "memtrace::symbols::demangle");
        assert!(
            outer
                .file
                .as_deref()
                .is_some_and(|p| p.ends_with("symbols.rs")),
            "{f:?}"
        );
    }

    #[test]
    fn demangles_cpp_and_rust() {
        assert_eq!(demangle("_ZN3foo3barEi"), "foo::bar(int)");
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
            "core::fmt::write"
        );
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo"), "mycrate::foo");
        assert_eq!(demangle("main"), "main");
        assert_eq!(demangle("_Znot_really"), "_Znot_really");
    }
}
