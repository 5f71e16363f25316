//! The final report: what was live when the trace ended, symbolized, in the shape of the
//! JSON contract (`memtrace-report/1`). [`json`] writes it, [`text`] renders it the way
//! valgrind memcheck does.

pub mod collapsed;
pub mod diff;
pub mod flamegraph;
pub mod json;
pub mod mappings;
pub mod model;
pub mod pprof;
pub mod render;
#[cfg(test)]
pub(crate) mod testing;
pub mod text;
pub mod xml;

pub use model::{
    AllocationSite, BlocksBytes, End, HeapError, JsonFrame, Leak, Report, Stats, Suppressed,
    Target, SCHEMA,
};

use crate::event::{AllocKind, FreeKind, StackId, StackTable};
use crate::heap::{self, ErrorKind, Heap};
use crate::progress::{Progress, Unit};
use crate::suppress::LeakKind;
use crate::symbols::{Frame, Symbolizer};

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
        allocator: Some(g.func.name().to_string()),
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

impl From<Frame> for JsonFrame {
    fn from(f: Frame) -> Self {
        JsonFrame {
            address: format!("{:#x}", f.address),
            function: f.function,
            file: f.file,
            line: f.line,
            object: f.object,
            inlined: f.inlined,
            mangled: f.mangled,
            symbol_offset: f.symbol_offset,
        }
    }
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
        deallocator: Some(e.func.name().to_string()),
        allocator: e.alloc_func.map(|f| f.name().to_string()),
        first_deallocator: e.first_free_func.map(|f| f.name().to_string()),
        description: describe(e),
        count: e.count,
    }
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
    let groups = heap.leak_groups(query);
    let mut sites: Vec<(StackId, heap::SiteCounts)> =
        heap.sites().filter(|(_, c)| c.allocs > 0).collect();
    // Symbolizing a big report reads the debug information of every library: say
    // how far it is.
    let mut progress = Progress::new(
        "symbolizing the report",
        (groups.len() + heap.errors().len() + sites.len()) as u64,
        Unit::Count("stacks"),
    );
    let leaks = groups
        .iter()
        .map(|g| {
            progress.add(1);
            leak(g, timing, symbolize_stack(stacks, g.stack, sym))
        })
        .collect();
    let errors = heap
        .errors()
        .iter()
        .map(|e| {
            progress.add(1);
            heap_error(e, stacks, sym)
        })
        .collect();
    let uncounted = heap.uncounted();
    let truncated = (0..stacks.len())
        .filter(|&i| stacks.is_truncated(StackId(i as u32)))
        .count();
    sort_sites(&mut sites);
    let allocation_sites = sites
        .into_iter()
        .map(|(id, c)| {
            progress.add(1);
            AllocationSite {
                allocs: c.allocs,
                bytes: c.bytes,
                stack: symbolize_stack(stacks, id, sym),
            }
        })
        .collect();
    progress.finish();
    Report {
        schema: SCHEMA.to_string(),
        target,
        end,
        totals: heap.totals(),
        leaks,
        errors,
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
        allocation_sites,
        suppressed: Vec::new(),
        mappings: Vec::new(),
        mapping_totals: None,
    }
}

/// Allocation stacks largest bytes first (ties: more allocations, then the older
/// stack).
fn sort_sites(sites: &mut [(StackId, heap::SiteCounts)]) {
    sites.sort_by(|(sa, a), (sb, b)| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.allocs.cmp(&a.allocs))
            .then(sa.cmp(sb))
    });
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
    exit_code_for(
        report,
        program_status,
        error_exitcode,
        &[LeakKind::Definite],
    )
}

/// The same, with the leak kinds that count (`--errors-for-leak-kinds`, valgrind's
/// option); an unclassified leak counts as definite.
pub fn exit_code_for(
    report: &Report,
    program_status: i32,
    error_exitcode: Option<i32>,
    kinds: &[LeakKind],
) -> i32 {
    let failing = report
        .leaks
        .iter()
        .any(|l| LeakKind::of_report(&l.kind).is_some_and(|k| kinds.contains(&k)))
        || !report.errors.is_empty();
    match error_exitcode {
        Some(code) if failing => code,
        _ => program_status,
    }
}

#[cfg(test)]
mod tests {
    use super::testing::sample;
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
            images: Vec::new(),
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
    fn the_kinds_that_fail_can_be_chosen() {
        let mut r = sample();
        r.errors.clear();
        r.leaks.retain(|l| l.kind == "reachable");
        assert_eq!(exit_code(&r, 0, Some(42)), 0);
        let all = LeakKind::ALL;
        assert_eq!(exit_code_for(&r, 0, Some(42), &all), 42);
        let valgrinds = [LeakKind::Definite, LeakKind::Possible];
        assert_eq!(exit_code_for(&r, 0, Some(42), &valgrinds), 0);
        r.leaks[0].kind = "possible".into();
        assert_eq!(exit_code_for(&r, 0, Some(42), &valgrinds), 42);
        // Errors count whatever the kinds; none of the leaks with `none`.
        let mut r = sample();
        assert_eq!(exit_code_for(&r, 0, Some(42), &[]), 42);
        r.errors.clear();
        assert_eq!(exit_code_for(&r, 0, Some(42), &[]), 0);
    }

    #[test]
    fn end_names_signals() {
        assert_eq!(End::signaled(11).signal.as_deref(), Some("SIGSEGV"));
        assert_eq!(signal_name(40), "SIG40");
        assert_eq!(End::exited(3).code, Some(3));
    }
}
