//! The final report: what was live when the trace ended, symbolized, in the shape of the
//! JSON contract (`memtrace-report/1`). [`json`] writes it, [`text`] renders it the way
//! valgrind memcheck does.

pub mod json;
pub mod text;

use crate::event::{AllocKind, FreeKind, StackId, StackTable};
use crate::heap::{self, ErrorKind, Heap, Totals};
use crate::symbols::{Frame, Symbolizer};
use serde::Serialize;

pub const SCHEMA: &str = "memtrace-report/1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub schema: &'static str,
    pub target: Target,
    pub end: End,
    pub totals: Totals,
    pub leaks: Vec<Leak>,
    pub errors: Vec<HeapError>,
    /// Extension: how much of the trace could not be accounted for exactly.
    pub stats: Stats,
    /// Extension: what the tracer did (breakpoint hits, returns caught, threads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::tracer::TraceStats>,
    /// Extension: the reachability scan that gave the leaks their kinds (time, bytes
    /// read), when one was made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<crate::tracer::ScanStats>,
    /// Extension: why no scan was made, when leaks are `unclassified`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_missing: Option<String>,
    /// Extension: how long the trace lasted, in milliseconds.
    pub duration_ms: u64,
    /// Extension: `--min-age`, in milliseconds (see `Leak::older_than_min_age`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_age_ms: Option<u64>,
}

/// What the report says about time: how long the trace lasted, and `--min-age`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    pub duration_ns: u64,
    pub min_age_ns: Option<u64>,
}

impl Timing {
    /// Where "recent" growth starts: the last third of the trace.
    fn recent_from_ns(self) -> u64 {
        self.duration_ns - self.duration_ns / 3
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Target {
    pub pid: i32,
    pub argv: Vec<String>,
    /// `launch` or `attach`.
    pub mode: String,
}

/// How the trace ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct End {
    /// `exited`, `signaled` or `detached`.
    pub how: String,
    pub code: Option<i32>,
    /// Signal name, such as `"SIGSEGV"`.
    pub signal: Option<String>,
}

impl End {
    pub fn exited(code: i32) -> Self {
        End {
            how: "exited".into(),
            code: Some(code),
            signal: None,
        }
    }

    /// Killed by signal number `signo`.
    pub fn signaled(signo: i32) -> Self {
        End {
            how: "signaled".into(),
            code: None,
            signal: Some(signal_name(signo)),
        }
    }

    pub fn detached() -> Self {
        End {
            how: "detached".into(),
            code: None,
            signal: None,
        }
    }
}

/// `SIGSEGV` for 11; real-time and unknown signals as `SIG42`.
pub fn signal_name(signo: i32) -> String {
    match nix::sys::signal::Signal::try_from(signo) {
        Ok(s) => s.as_str().to_string(),
        Err(_) => format!("SIG{signo}"),
    }
}

/// Live blocks sharing one allocation stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Leak {
    /// `definite`, `indirect`, `possible`, `reachable`, or `unclassified` (no scan made).
    pub kind: String,
    pub blocks: u64,
    pub bytes: u64,
    /// Extension: for `definite` leaks, the bytes of the `indirect` blocks lost only
    /// through these (valgrind's "(N direct, M indirect)"); omitted when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub indirect_bytes: u64,
    pub stack: Vec<JsonFrame>,
    /// Extension: the address of the oldest of these blocks (hex), to find it in the
    /// program (a debugger's `finish` at this site prints the same pointer).
    pub oldest_block: String,
    /// Extension: when the oldest and the youngest of these blocks were allocated,
    /// in milliseconds since the trace began.
    pub first_alloc_ms: u64,
    pub last_alloc_ms: u64,
    /// Extension: these blocks' bytes per second of trace: how fast the site's live
    /// bytes grew over the whole trace...
    pub growth_bytes_per_sec: u64,
    /// ...and over its last third. A steady leak grows at about the same rate in
    /// both; a cache that filled up and stopped has ~0 here.
    pub recent_growth_bytes_per_sec: u64,
    /// Extension: the blocks at least `--min-age` old when the trace ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub older_than_min_age: Option<BlocksBytes>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BlocksBytes {
    pub blocks: u64,
    pub bytes: u64,
}

/// `bytes` per second over `ns` nanoseconds.
fn per_sec(bytes: u64, ns: u64) -> u64 {
    if ns == 0 {
        0
    } else {
        (bytes as u128 * 1_000_000_000 / ns as u128) as u64
    }
}

fn leak(g: &heap::LeakGroup, timing: Timing, stack: Vec<JsonFrame>) -> Leak {
    let a = g.ages;
    Leak {
        kind: g.kind.map_or("unclassified", |k| k.name()).into(),
        blocks: g.blocks,
        bytes: g.bytes,
        indirect_bytes: g.indirect_bytes,
        stack,
        oldest_block: format!("{:#x}", a.oldest),
        first_alloc_ms: a.first_ns / 1_000_000,
        last_alloc_ms: a.last_ns / 1_000_000,
        growth_bytes_per_sec: per_sec(g.bytes, timing.duration_ns),
        recent_growth_bytes_per_sec: per_sec(
            a.recent_bytes,
            timing.duration_ns - timing.recent_from_ns(),
        ),
        older_than_min_age: timing.min_age_ns.map(|_| BlocksBytes {
            blocks: a.old_blocks,
            bytes: a.old_bytes,
        }),
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JsonFrame {
    /// Hex, `"0x55d0c0a01182"`.
    pub address: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub object: Option<String>,
    /// Offset from the symbol start when `function` is a bare ELF symbol: only the text
    /// report shows it (`name+0x1c`); the JSON `function` stays the plain name.
    #[serde(skip)]
    pub symbol_offset: Option<u64>,
}

impl From<Frame> for JsonFrame {
    fn from(f: Frame) -> Self {
        JsonFrame {
            address: format!("{:#x}", f.address),
            function: f.function,
            file: f.file,
            line: f.line,
            object: f.object,
            symbol_offset: f.symbol_offset,
        }
    }
}

/// A double, invalid or mismatched free.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeapError {
    /// `double_free`, `invalid_free` or `mismatched_free`.
    pub kind: String,
    /// The pointer given to the deallocator.
    pub address: String,
    /// The bad call.
    pub stack: Vec<JsonFrame>,
    /// Where the block concerned was allocated (empty when there is no block).
    pub alloc_stack: Vec<JsonFrame>,
    /// Where a double-freed block was freed the first time (else empty).
    pub first_free_stack: Vec<JsonFrame>,
    /// Extension: where the address lies, in valgrind's words (`is 8 bytes inside a
    /// block of size 48 alloc'd`).
    pub description: String,
    /// Extension: how many times this error happened with these same stacks.
    pub count: u64,
}

fn alloc_name(kind: AllocKind) -> &'static str {
    match kind {
        AllocKind::Malloc => "malloc",
        AllocKind::New => "operator new",
        AllocKind::NewArray => "operator new[]",
    }
}

fn free_name(kind: FreeKind) -> &'static str {
    match kind {
        FreeKind::Free => "free",
        FreeKind::Delete => "operator delete",
        FreeKind::DeleteArray => "operator delete[]",
    }
}

/// `is 8 bytes inside a block of size 48 alloc'd`, and the like.
fn describe(e: &heap::HeapError) -> String {
    let inside = |verb: &str| match e.block {
        Some((start, size)) => format!(
            "is {} bytes inside a block of size {size} {verb}",
            e.ptr.wrapping_sub(start)
        ),
        None => "is not inside any block memtrace saw allocated".to_string(),
    };
    match e.kind {
        ErrorKind::DoubleFree => inside("free'd"),
        ErrorKind::InvalidFree => inside("alloc'd"),
        ErrorKind::MismatchedFree { alloc, free } => format!(
            "{} by {}, released by {}",
            inside("alloc'd"),
            alloc_name(alloc),
            free_name(free)
        ),
    }
}

fn heap_error(e: &heap::HeapError, stacks: &StackTable, sym: &mut Symbolizer) -> HeapError {
    let mut stack_of = |id: Option<StackId>| {
        id.map(|id| symbolize_stack(stacks, id, sym))
            .unwrap_or_default()
    };
    HeapError {
        kind: e.kind.name().into(),
        address: format!("{:#x}", e.ptr),
        stack: stack_of(Some(e.stack)),
        alloc_stack: stack_of(e.alloc_stack),
        first_free_stack: stack_of(e.first_free_stack),
        description: describe(e),
        count: e.count,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Frees by the program of pointers that were not live.
    pub frees_not_live: u64,
    /// Frees by the allocator itself of memory it never handed out.
    pub internal_frees: u64,
    /// Distinct stacks cut short by the depth limit or a failed unwind.
    pub truncated_stacks: u64,
    pub distinct_stacks: u64,
}

/// Builds the report from the heap at the end of the trace, symbolizing every stack.
pub fn build(
    target: Target,
    end: End,
    heap: &Heap,
    stacks: &StackTable,
    sym: &mut Symbolizer,
    timing: Timing,
) -> Report {
    let query = heap::AgeQuery {
        end_ns: timing.duration_ns,
        min_age_ns: timing.min_age_ns.unwrap_or(0),
        recent_from_ns: timing.recent_from_ns(),
    };
    let leaks = heap
        .leak_groups(query)
        .iter()
        .map(|g| leak(g, timing, symbolize_stack(stacks, g.stack, sym)))
        .collect();
    let uncounted = heap.uncounted();
    let truncated = (0..stacks.len())
        .filter(|&i| stacks.is_truncated(StackId(i as u32)))
        .count();
    Report {
        schema: SCHEMA,
        target,
        end,
        totals: heap.totals(),
        leaks,
        errors: heap
            .errors()
            .iter()
            .map(|e| heap_error(e, stacks, sym))
            .collect(),
        trace: None,
        scan: None,
        scan_missing: None,
        stats: Stats {
            frees_not_live: uncounted.frees_not_live,
            internal_frees: uncounted.internal_frees,
            truncated_stacks: truncated as u64,
            distinct_stacks: stacks.len() as u64,
        },
        duration_ms: timing.duration_ns / 1_000_000,
        min_age_ms: timing.min_age_ns.map(|n| n / 1_000_000),
    }
}

/// One JSON frame per source frame: inlined frames are expanded, sharing the address.
pub fn symbolize_stack(stacks: &StackTable, id: StackId, sym: &mut Symbolizer) -> Vec<JsonFrame> {
    let generation = stacks.generation(id);
    stacks
        .get(id)
        .iter()
        .flat_map(|&a| sym.symbolize_in(a, generation))
        .map(JsonFrame::from)
        .collect()
}

/// memtrace's own exit status: `error_exitcode` when the report has a definite or
/// unclassified leak or any heap error, else the program's status.
pub fn exit_code(report: &Report, program_status: i32, error_exitcode: Option<i32>) -> i32 {
    let failing = report
        .leaks
        .iter()
        .any(|l| l.kind == "definite" || l.kind == "unclassified")
        || !report.errors.is_empty();
    match error_exitcode {
        Some(code) if failing => code,
        _ => program_status,
    }
}

/// A hand-made report that exercises every rendering case, for golden tests.
#[cfg(test)]
pub(crate) fn sample() -> Report {
    fn frame(
        address: &str,
        function: Option<&str>,
        file: Option<&str>,
        line: Option<u32>,
        object: Option<&str>,
    ) -> JsonFrame {
        JsonFrame {
            address: address.into(),
            function: function.map(String::from),
            file: file.map(String::from),
            line,
            object: object.map(String::from),
            symbol_offset: None,
        }
    }
    let exe = Some("/src/leak");
    let libc = Some("/usr/lib/x86_64-linux-gnu/libc.so.6");
    let main = frame(
        "0x55d0c0a011a0",
        Some("main"),
        Some("/src/leak.c"),
        Some(20),
        exe,
    );
    let mut libc_start = frame(
        "0x7f1c2a023d90",
        Some("__libc_start_call_main"),
        None,
        None,
        libc,
    );
    libc_start.symbol_offset = Some(0x80);
    let unknown_in_object = frame("0x7f1c2a500000", None, None, None, Some("/opt/lib/libx.so"));
    Report {
        schema: SCHEMA,
        target: Target {
            pid: 1234,
            argv: vec!["./leak".into(), "x".into()],
            mode: "launch".into(),
        },
        end: End::signaled(11),
        totals: Totals {
            allocs: 10,
            frees: 7,
            bytes_allocated: 1_234_567,
            live_blocks: 3,
            live_bytes: 1130,
            peak_live_bytes: 2000,
            frees_of_unknown: 0,
        },
        leaks: vec![
            Leak {
                kind: "definite".into(),
                blocks: 1,
                bytes: 1000,
                indirect_bytes: 64,
                stack: vec![
                    frame(
                        "0x55d0c0a0116e",
                        Some("fill"),
                        Some("/src/util.h"),
                        Some(4),
                        exe,
                    ),
                    frame(
                        "0x55d0c0a0116e",
                        Some("make_leak"),
                        Some("/src/leak.c"),
                        Some(12),
                        exe,
                    ),
                    main.clone(),
                    libc_start,
                ],
                oldest_block: "0x5581a2b4c2a0".into(),
                first_alloc_ms: 10,
                last_alloc_ms: 10,
                growth_bytes_per_sec: 500,
                recent_growth_bytes_per_sec: 0,
                older_than_min_age: None,
            },
            Leak {
                kind: "unclassified".into(),
                blocks: 2,
                bytes: 130,
                indirect_bytes: 0,
                stack: vec![unknown_in_object, frame("0x1234", None, None, None, None)],
                oldest_block: "0x5581a2b4c300".into(),
                first_alloc_ms: 100,
                last_alloc_ms: 1900,
                growth_bytes_per_sec: 65,
                recent_growth_bytes_per_sec: 97,
                older_than_min_age: None,
            },
        ],
        errors: vec![HeapError {
            kind: "double_free".into(),
            address: "0x5581a2b4c2c0".into(),
            stack: vec![main.clone()],
            alloc_stack: vec![main.clone()],
            first_free_stack: vec![main],
            description: "is 0 bytes inside a block of size 16 free'd".into(),
            count: 1,
        }],
        trace: None,
        scan: Some(crate::tracer::ScanStats {
            when: crate::tracer::ScanWhen::Exit,
            ns: 12_345_678,
            bytes_scanned: 1_100_000,
            roots_bytes: 100_000,
            block_bytes: 1_000_000,
            unreadable_bytes: 0,
            blocks: 2,
            threads: 1,
            threads_missed: 0,
        }),
        scan_missing: None,
        stats: Stats {
            frees_not_live: 1,
            internal_frees: 2,
            truncated_stacks: 1,
            distinct_stacks: 5,
        },
        duration_ms: 2000,
        min_age_ms: None,
    }
}

/// Compares `actual` with the golden file `tests/golden/NAME`, or rewrites the file when
/// `MEMTRACE_BLESS=1`.
#[cfg(test)]
pub(crate) fn check_golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var("MEMTRACE_BLESS").as_deref() == Ok("1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with MEMTRACE_BLESS=1 to create)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs (MEMTRACE_BLESS=1 rewrites it):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AllocKind, Event};
    use crate::hooks::HookFn;

    fn alloc(ptr: u64, size: u64, stack: StackId) -> Event {
        Event::Alloc {
            tid: 1,
            kind: AllocKind::Malloc,
            ptr,
            size,
            stack,
            func: HookFn::Malloc,
        }
    }

    #[test]
    fn build_keeps_totals_and_order() {
        let mut stacks = StackTable::new();
        let small = stacks.intern(&[0x10, 0x20], false, 0);
        let big = stacks.intern(&[0x30], true, 0);
        let mut heap = Heap::new();
        for ev in [
            alloc(0x100, 8, small),
            alloc(0x200, 8, small),
            alloc(0x300, 100, big),
        ] {
            heap.apply(&ev);
        }
        let mut sym = Symbolizer::for_files(&[]);
        let target = Target {
            pid: 7,
            argv: vec!["a".into()],
            mode: "attach".into(),
        };
        let r = build(
            target,
            End::detached(),
            &heap,
            &stacks,
            &mut sym,
            Timing::default(),
        );
        assert_eq!(r.schema, "memtrace-report/1");
        assert_eq!(r.totals, heap.totals());
        let sizes: Vec<(u64, u64)> = r.leaks.iter().map(|l| (l.blocks, l.bytes)).collect();
        assert_eq!(sizes, vec![(1, 100), (2, 16)]);
        let blocks: u64 = r.leaks.iter().map(|l| l.blocks).sum();
        let bytes: u64 = r.leaks.iter().map(|l| l.bytes).sum();
        assert_eq!((blocks, bytes), (r.totals.live_blocks, r.totals.live_bytes));
        let addrs: Vec<&str> = r.leaks[1]
            .stack
            .iter()
            .map(|f| f.address.as_str())
            .collect();
        assert_eq!(addrs, vec!["0x10", "0x20"]);
        assert_eq!(r.leaks[1].stack[0].function, None);
        assert_eq!((r.stats.truncated_stacks, r.stats.distinct_stacks), (1, 2));
        assert!(r.leaks.iter().all(|l| l.kind == "unclassified"));
    }

    #[test]
    fn exit_code_rules() {
        let mut r = sample();
        assert_eq!(exit_code(&r, 3, None), 3);
        assert_eq!(exit_code(&r, 3, Some(42)), 42);
        r.errors.clear();
        r.leaks.retain(|l| l.kind == "definite");
        assert_eq!(exit_code(&r, 0, Some(42)), 42);
        for l in &mut r.leaks {
            l.kind = "reachable".into();
        }
        assert_eq!(exit_code(&r, 0, Some(42)), 0);
        r.leaks[0].kind = "unclassified".into();
        assert_eq!(exit_code(&r, 0, Some(42)), 42);
        r.leaks.clear();
        assert_eq!(exit_code(&r, 5, Some(42)), 5);
    }

    #[test]
    fn end_names_signals() {
        assert_eq!(End::signaled(11).signal.as_deref(), Some("SIGSEGV"));
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(End::exited(3).code, Some(3));
    }
}
