//! Tests of the test harness itself: the valgrind parser on captured real valgrind
//! 3.19 output (tests/data/valgrind/), the marker parser, the crafted files. None of
//! these needs memtrace or valgrind to run.

#[macro_use]
mod common;

use common::cases::{check_sites, valgrind_sites};
use common::markers::{
    bad_free_markers, frame_markers, parse_bad_free_markers, parse_expected_totals,
    parse_frame_markers, FrameMarker,
};
use common::stacks::compare_stacks;
use common::valgrind::{Lost, VgFrame};
use common::{parse_markers, parse_valgrind, Frame, Leak, Marker, Totals};

fn log(name: &str) -> String {
    let path = common::manifest_dir()
        .join("tests/data/valgrind")
        .join(format!("{name}.log"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn valgrind_simple_leak() {
    let v = parse_valgrind(&log("leak")).expect("parses");
    assert_eq!(v.pid, 14795);
    assert_eq!(
        v.totals(),
        Totals {
            allocs: 2,
            frees: 1,
            bytes_allocated: 130,
            live_blocks: 1,
            live_bytes: 30
        }
    );
    assert_eq!(
        v.definite,
        Lost {
            blocks: 1,
            bytes: 30
        }
    );
    assert_eq!(v.reachable, Lost::default());
    assert_eq!(v.records.len(), 1);
    let record = &v.records[0];
    assert_eq!(
        (record.kind.as_str(), record.blocks, record.bytes),
        ("definite", 1, 30)
    );
    assert_eq!(record.frames.len(), 2);
    assert!(record.frames[0].is_valgrind_allocator());
    assert_eq!(
        record.caller(),
        Some(&VgFrame {
            function: "main".into(),
            file: Some("leak.c".into()),
            line: Some(12),
            object: None
        })
    );
}

#[test]
fn valgrind_all_blocks_freed() {
    let v = parse_valgrind(&log("noleak")).expect("parses");
    assert_eq!(
        v.totals(),
        Totals {
            allocs: 3,
            frees: 3,
            bytes_allocated: 364,
            live_blocks: 0,
            live_bytes: 0
        }
    );
    assert_eq!((v.live_blocks, v.live_bytes), (0, 0));
    assert!(v.records.is_empty());
    assert_eq!(v.definite, Lost::default());
}

#[test]
fn valgrind_thousands_separators_and_cxx_names() {
    let v = parse_valgrind(&log("cxx_new")).expect("parses");
    assert_eq!(
        v.totals(),
        Totals {
            allocs: 20,
            frees: 17,
            bytes_allocated: 74_036,
            live_blocks: 3,
            live_bytes: 72_944
        }
    );
    assert_eq!(
        v.reachable,
        Lost {
            blocks: 1,
            bytes: 72_704
        }
    );
    assert_eq!(
        v.definite,
        Lost {
            blocks: 2,
            bytes: 240
        }
    );
    let first = &v.records[0].frames[0];
    assert_eq!(first.function, "operator new(unsigned long)");
    assert!(first.is_valgrind_allocator());
    assert_eq!(
        v.records[1].frames[0].function,
        "operator new[](unsigned long)"
    );
    // The emergency pool's caller has no name and no file, only an object.
    let pool = &v.records[2];
    assert_eq!(pool.bytes, 72_704);
    let caller = pool.caller().expect("a caller");
    assert_eq!(caller.function, "???");
    assert_eq!(caller.file, None);
    assert_eq!(
        caller.object.as_deref(),
        Some("/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30")
    );
    assert_eq!(pool.frames.len(), 6);
}

#[test]
fn valgrind_direct_and_indirect() {
    let v = parse_valgrind(&log("kinds")).expect("parses");
    assert_eq!(
        v.definite,
        Lost {
            blocks: 1,
            bytes: 32
        }
    );
    assert_eq!(
        v.indirect,
        Lost {
            blocks: 2,
            bytes: 64
        }
    );
    assert_eq!(
        v.possible,
        Lost {
            blocks: 1,
            bytes: 40
        }
    );
    assert_eq!(
        v.reachable,
        Lost {
            blocks: 1,
            bytes: 20
        }
    );
    let head = v
        .records
        .iter()
        .find(|r| r.kind == "definite")
        .expect("a definite record");
    assert_eq!((head.blocks, head.bytes, head.indirect_bytes), (1, 32, 64));
    let kinds: Vec<&str> = v.records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["reachable", "indirect", "indirect", "possible", "definite"]
    );
}

#[test]
fn valgrind_threads_possibly_lost() {
    let v = parse_valgrind(&log("threads")).expect("parses");
    assert_eq!(
        v.totals(),
        Totals {
            allocs: 14_012,
            frees: 14_004,
            bytes_allocated: 1_453_480,
            live_blocks: 8,
            live_bytes: 1_280
        }
    );
    assert_eq!(
        v.possible,
        Lost {
            blocks: 4,
            bytes: 1_088
        }
    );
    let dtv = &v.records[1];
    // Inlined frames share an address; the caller is glibc's inline calloc wrapper.
    assert_eq!(dtv.caller().map(|f| f.function.as_str()), Some("calloc"));
    assert_eq!(
        dtv.caller().and_then(|f| f.file.as_deref()),
        Some("rtld-malloc.h")
    );
    assert_eq!(dtv.frames.last().map(|f| f.function.as_str()), Some("main"));
    assert_eq!(
        dtv.frames[5].function, "pthread_create@@GLIBC_2.34",
        "a versioned symbol keeps its version"
    );
}

#[test]
fn valgrind_fork_keeps_the_parent() {
    // The child's summary comes first in the log; the parent's pid is the first seen.
    let v = parse_valgrind(&log("fork")).expect("parses");
    assert_eq!(v.pid, 15113);
    assert_eq!(
        v.totals(),
        Totals {
            allocs: 2,
            frees: 1,
            bytes_allocated: 192,
            live_blocks: 1,
            live_bytes: 64
        }
    );
    assert_eq!(v.records.len(), 1);
}

#[test]
fn valgrind_exec_log_is_the_new_image() {
    let v = parse_valgrind(&log("exec")).expect("parses");
    assert_eq!(
        v.totals(),
        Totals {
            allocs: 2,
            frees: 1,
            bytes_allocated: 130,
            live_blocks: 1,
            live_bytes: 30
        }
    );
}

#[test]
fn valgrind_signal_death_with_error_frames() {
    let v = parse_valgrind(&log("signal_segv")).expect("parses");
    assert_eq!(
        v.totals(),
        Totals {
            allocs: 1,
            frees: 0,
            bytes_allocated: 42,
            live_blocks: 1,
            live_bytes: 42
        }
    );
    // The invalid write's frames are not a loss record.
    assert_eq!(v.records.len(), 1);
    assert_eq!(v.records[0].caller().and_then(|f| f.line), Some(21));
}

#[test]
fn valgrind_two_summaries_for_one_pid_keep_the_last() {
    let first = log("leak").replace("==14795==", "==7==");
    let second = log("kinds").replace("==15067==", "==7==");
    let v = parse_valgrind(&format!("{first}{second}")).expect("parses");
    assert_eq!(v.totals().allocs, 5);
    assert_eq!(v.records.len(), 5);
}

#[test]
fn valgrind_rejects_a_log_without_summary() {
    assert!(parse_valgrind("").is_err());
    assert!(
        parse_valgrind("==1== Memcheck, a memory error detector\n==1== Command: ./x\n").is_err()
    );
    let broken = log("leak").replace("2 allocs, 1 frees", "two allocs, 1 frees");
    assert!(parse_valgrind(&broken).is_err());
}

#[test]
fn markers_parse() {
    let text = "int x;\n\
                p = malloc(30); /* LEAK: 1 30 */\n\
                q = calloc(1, 32); /* LEAK: 1 32 definite */\n\
                for (;;) r = malloc(16); // LEAK: 100,000 16\n\
                s = malloc(1); /* GONE: not a marker */\n";
    let found = parse_markers("x.c", text).expect("parses");
    assert_eq!(
        found,
        vec![
            Marker {
                file: "x.c".into(),
                line: 2,
                blocks: 1,
                bytes: 30,
                kind: None
            },
            Marker {
                file: "x.c".into(),
                line: 3,
                blocks: 1,
                bytes: 32,
                kind: Some("definite".into())
            },
            Marker {
                file: "x.c".into(),
                line: 4,
                blocks: 100_000,
                bytes: 1_600_000,
                kind: None
            },
        ]
    );
}

#[test]
fn markers_reject_mistakes() {
    assert!(parse_markers("x.c", "p = malloc(1); /* LEAK: 1 */").is_err());
    assert!(parse_markers("x.c", "p = malloc(1); /* LEAK: one 1 */").is_err());
    assert!(parse_markers("x.c", "p = malloc(1); /* LEAK: 1 1 lost */").is_err());
    assert!(parse_markers("x.c", "p = malloc(1); /* LEAK: 1 1 definite extra */").is_err());
}

#[test]
fn every_fixture_marker_parses() {
    let mut total = 0;
    for entry in std::fs::read_dir(common::fixtures_dir()).expect("fixtures/") {
        let path = entry.expect("an entry").path();
        // (fixture.h describes the markers: it is no fixture.)
        let doc = path.file_name().is_some_and(|n| n == "fixture.h");
        let fixture = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("c" | "cc" | "h")
        );
        if fixture && !doc {
            total += common::markers(&path).len();
            frame_markers(&path);
            bad_free_markers(&path);
        }
    }
    assert!(total > 20, "only {total} markers in fixtures/");
}

#[test]
fn expected_totals_parse() {
    let text =
        "/* EXPECT-TOTALS: allocs=2 frees=1 bytes_allocated=8192 live_blocks=1 live_bytes=4096 */";
    assert_eq!(
        parse_expected_totals(text),
        Ok(Some(Totals {
            allocs: 2,
            frees: 1,
            bytes_allocated: 8192,
            live_blocks: 1,
            live_bytes: 4096
        }))
    );
    assert_eq!(parse_expected_totals("nothing"), Ok(None));
    assert!(parse_expected_totals("EXPECT-TOTALS: allocs=2").is_err());
}

#[test]
fn sites_against_markers() {
    let v = parse_valgrind(&log("kinds")).expect("parses");
    let sites = valgrind_sites(&v);
    let sources = vec!["kinds.c".to_string()];
    let text = std::fs::read_to_string(common::fixtures_dir().join("kinds.c")).expect("kinds.c");
    let markers = parse_markers("kinds.c", &text).expect("parses");
    // The captured log matches the source's markers only while kinds.c keeps its line
    // numbers; a moved line shows here first.
    check_sites(&sites, &markers, &sources).expect("the captured kinds log matches kinds.c");

    let mut wrong = markers.clone();
    wrong[0].bytes += 1;
    assert!(
        check_sites(&sites, &wrong, &sources).is_err(),
        "a wrong size is seen"
    );
    let fewer = &markers[1..];
    assert!(
        check_sites(&sites, fewer, &sources).is_err(),
        "an unmarked leak is seen"
    );
    let mut wrong_kind = markers.clone();
    wrong_kind[0].kind = Some("reachable".into());
    assert!(
        check_sites(&sites, &wrong_kind, &sources).is_err(),
        "a wrong kind is seen"
    );
}

#[test]
fn crafted_elf32_is_a_32_bit_elf() {
    let path = common::crafted(common::Crafted::Elf32);
    let bytes = std::fs::read(&path).expect("written");
    assert_eq!(&bytes[..5], b"\x7fELF\x01");
    let not_elf = std::fs::read(common::crafted(common::Crafted::NotElf)).expect("written");
    assert!(!not_elf.starts_with(b"\x7fELF") && !not_elf.starts_with(b"#!"));
}

/// A valgrind record with whole stacks (`--num-callers=64 --show-below-main=yes`), as
/// captured on this machine, against leak entries built by hand.
const WHOLE_STACK_LOG: &str = "\
==27797== HEAP SUMMARY:
==27797==     in use at exit: 30 bytes in 1 blocks
==27797==   total heap usage: 2 allocs, 1 frees, 130 bytes allocated
==27797== 
==27797== 30 bytes in 1 blocks are definitely lost in loss record 1 of 1
==27797==    at 0x48417B4: malloc (in /usr/libexec/valgrind/vgpreload_memcheck-amd64-linux.so)
==27797==    by 0x109174: main (leak.c:12)
==27797==    by 0x4882249: __libc_start_call_main (libc_start_call_main.h:58)
==27797==    by 0x4882304: __libc_start_main@@GLIBC_2.34 (libc-start.c:360)
==27797==    by 0x109080: _start (in /tmp/t/leak)
==27797==    by 0x1FFF000797: ???
==27797==    by 0x37: ???
==27797== 
==27797== LEAK SUMMARY:
==27797==    definitely lost: 30 bytes in 1 blocks
==27797==    indirectly lost: 0 bytes in 0 blocks
==27797==      possibly lost: 0 bytes in 0 blocks
==27797==    still reachable: 0 bytes in 0 blocks
==27797==         suppressed: 0 bytes in 0 blocks
";

fn frame(function: Option<&str>, file: Option<&str>, line: Option<u64>, object: &str) -> Frame {
    Frame {
        address: "0x1".into(),
        function: function.map(String::from),
        file: file.map(String::from),
        line,
        object: Some(object.into()),
    }
}

#[test]
fn whole_stacks_against_valgrind() {
    let v = parse_valgrind(WHOLE_STACK_LOG).expect("parses");
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let leak = Leak {
        kind: "unclassified".into(),
        blocks: 1,
        bytes: 30,
        indirect_bytes: 0,
        stack: vec![
            frame(Some("main"), Some("/src/leak.c"), Some(12), "/tmp/t/leak"),
            frame(
                Some("__libc_start_call_main"),
                Some("libc_start_call_main.h"),
                Some(58),
                libc,
            ),
            frame(
                Some("__libc_start_main_impl"),
                Some("libc-start.c"),
                Some(360),
                libc,
            ),
            frame(Some("_start"), None, None, "/tmp/t/leak"),
        ],
    };
    compare_stacks(std::slice::from_ref(&leak), &v.records).expect("the same stack");

    let mut short = leak.clone();
    short.stack.pop();
    assert!(
        compare_stacks(&[short], &v.records).is_err(),
        "a lost frame is seen"
    );
    let mut moved = leak.clone();
    moved.stack[1].line = Some(59);
    assert!(
        compare_stacks(&[moved], &v.records).is_err(),
        "a wrong line is seen"
    );
    let mut more = leak.clone();
    more.blocks = 2;
    assert!(
        compare_stacks(&[more], &v.records).is_err(),
        "a wrong count is seen"
    );
    assert!(
        compare_stacks(&[], &v.records).is_err(),
        "a missing leak is seen"
    );
}

#[test]
fn frame_markers_parse() {
    let text = "a\n    x = f(n - 1); /* FRAME: 50 descend */\n";
    assert_eq!(
        parse_frame_markers("s.c", text),
        Ok(vec![FrameMarker {
            file: "s.c".into(),
            line: 2,
            count: 50,
            function: "descend".into()
        }])
    );
    assert!(parse_frame_markers("s.c", "/* FRAME: many descend */").is_err());
    assert!(parse_frame_markers("s.c", "/* FRAME: 2 */").is_err());
}

#[test]
fn bad_free_markers_parse() {
    let found = parse_bad_free_markers("e.c", "x\n free(p); /* BAD-FREE: double_free */\n")
        .expect("parses");
    assert_eq!((found[0].line, found[0].kind.as_str()), (2, "double_free"));
    assert!(parse_bad_free_markers("e.c", "/* BAD-FREE: twice */").is_err());
    assert!(parse_bad_free_markers("e.c", "/* BAD-FREE: */").is_err());
}
