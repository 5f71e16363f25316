//! A hand-made report for golden tests of every renderer, and the golden-file check.

use super::*;
use crate::heap::Totals;

/// A hand-made report that exercises every rendering case, for golden tests.
pub fn sample() -> Report {
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
            inlined: false,
            mangled: None,
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
    let mut widget = frame(
        "0x55d0c0a01200",
        Some("Widget::make()"),
        Some("/src/widget.cc"),
        Some(7),
        exe,
    );
    widget.mangled = Some("_ZN6Widget4makeEv".into());
    let mut fill = frame(
        "0x55d0c0a0116e",
        Some("fill"),
        Some("/src/util.h"),
        Some(4),
        exe,
    );
    fill.inlined = true;
    let leak_stack = vec![
        fill,
        frame(
            "0x55d0c0a0116e",
            Some("make_leak"),
            Some("/src/leak.c"),
            Some(12),
            exe,
        ),
        main.clone(),
        libc_start,
    ];
    Report {
        schema: SCHEMA.into(),
        target: Target {
            pid: 1234,
            argv: vec!["./leak".into(), "x".into()],
            mode: "launch".into(),
            images: Vec::new(),
        },
        end: End::signaled(11),
        totals: Totals {
            allocs: 11,
            frees: 7,
            bytes_allocated: 1_234_567,
            live_blocks: 4,
            live_bytes: 1178,
            peak_live_bytes: 2000,
            frees_of_unknown: 0,
        },
        leaks: vec![
            Leak {
                kind: "definite".into(),
                blocks: 1,
                bytes: 1000,
                indirect_bytes: 64,
                stack: leak_stack.clone(),
                allocator: Some("malloc".into()),
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
                allocator: Some("calloc".into()),
                oldest_block: "0x5581a2b4c300".into(),
                first_alloc_ms: 100,
                last_alloc_ms: 1900,
                growth_bytes_per_sec: 65,
                recent_growth_bytes_per_sec: 97,
                older_than_min_age: None,
            },
            Leak {
                kind: "reachable".into(),
                blocks: 1,
                bytes: 48,
                indirect_bytes: 0,
                stack: vec![widget.clone(), main.clone()],
                allocator: Some("_Znwm".into()),
                oldest_block: "0x5581a2b4c400".into(),
                first_alloc_ms: 5,
                last_alloc_ms: 5,
                growth_bytes_per_sec: 24,
                recent_growth_bytes_per_sec: 0,
                older_than_min_age: None,
            },
        ],
        errors: vec![HeapError {
            kind: "double_free".into(),
            address: "0x5581a2b4c2c0".into(),
            stack: vec![main.clone()],
            alloc_stack: vec![main.clone()],
            first_free_stack: vec![main.clone()],
            deallocator: Some("free".into()),
            allocator: Some("malloc".into()),
            first_deallocator: Some("free".into()),
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
        allocation_sites: vec![
            AllocationSite {
                allocs: 5,
                bytes: 1_233_000,
                stack: leak_stack,
            },
            // Allocations whose stack was not recorded.
            AllocationSite {
                allocs: 3,
                bytes: 1_000,
                stack: Vec::new(),
            },
            AllocationSite {
                allocs: 2,
                bytes: 519,
                stack: vec![
                    frame("0x7f1c2a500000", None, None, None, Some("/opt/lib/libx.so")),
                    frame("0x1234", None, None, None, None),
                ],
            },
            AllocationSite {
                allocs: 1,
                bytes: 48,
                stack: vec![widget, main],
            },
        ],
        suppressed: Vec::new(),
        mappings: Vec::new(),
        mapping_totals: None,
    }
}

/// Compares `actual` with the golden file `tests/golden/NAME`, or rewrites the file when
/// `MEMTRACE_BLESS=1`.
pub fn check_golden(name: &str, actual: &str) {
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
