//! `--xml` against valgrind's own `--xml=yes` on the same fixture, field by field,
//! both read by Python's XML parser (tests/data/vgxml.py takes the fields that tools
//! reading valgrind's XML take): error kinds, `what` texts (loss record numbers
//! aside: memtrace orders its records largest first), leakedbytes, leakedblocks,
//! auxwhat (addresses aside), error counts, and every frame's fn, dir, file, line and
//! obj, the allocator's frame first. Not compared, because they cannot match: ips,
//! unique ids, tids and pids, and the object of valgrind's own allocator frames.
//! Two differences are valgrind's reading of symbols, allowed where they show: a
//! function named by a versioned alias of its address (`__libc_start_main@@GLIBC_2.34`
//! where memtrace has the DWARF name `__libc_start_main_impl`, same line), and a
//! relative source directory joined to itself (`./elf/./elf` for `./elf`).

mod common;

use std::path::Path;
use std::process::Command;

use common::cases::{self, Case};
use common::process::{run_with_watchdog, run_with_watchdog_stdout, OTHER_LIMIT};
use common::valgrind::valgrind_binary;
use common::{manifest_dir, run_memtrace_opts};
use serde_json::Value;

/// Reads an XML file with tests/data/vgxml.py; panics if Python's parser refuses it.
fn parse_xml(path: &Path) -> Value {
    let mut command = Command::new("python3");
    command
        .arg(manifest_dir().join("tests/data/vgxml.py"))
        .arg(path);
    let o = run_with_watchdog_stdout(command, OTHER_LIMIT, "python3 vgxml.py");
    assert_eq!(
        o.exit.shell_code(),
        0,
        "Python's XML parser refuses {}: {}",
        path.display(),
        o.stderr
    );
    serde_json::from_str(&o.stdout).expect("the script's JSON")
}

/// valgrind's and memtrace's XML of one case, parsed: with every leak kind shown.
fn both(case: &Case) -> (Value, Value) {
    both_showing(case, Some("all"))
}

/// The same, each told `--show-leak-kinds` (or left to its default with `None`).
fn both_showing(case: &Case, kinds: Option<&str>) -> (Value, Value) {
    let show = kinds.map(|k| format!("--show-leak-kinds={k}"));
    let target = case.target();
    let dir = tempfile::tempdir().expect("tempdir");
    let vg_xml = dir.path().join("valgrind.xml");
    let mut command = Command::new(valgrind_binary());
    command
        .arg("--xml=yes")
        .arg(format!("--xml-file={}", vg_xml.display()))
        .arg("--leak-check=full")
        .args(&show)
        .arg("--run-libc-freeres=no")
        .arg("--run-cxx-freeres=no")
        // Whole stacks, as memtrace keeps them.
        .arg("--num-callers=64")
        .arg("--show-below-main=yes")
        .arg(&target.program)
        .args(&target.args);
    run_with_watchdog(command, OTHER_LIMIT, "valgrind --xml=yes");
    let mt_xml = dir.path().join("memtrace.xml");
    let mut opts = vec![
        "--depth",
        "64",
        "--xml",
        mt_xml.to_str().expect("UTF-8 path"),
    ];
    opts.extend(show.as_deref());
    let run = run_memtrace_opts(&opts, &target);
    assert!(
        mt_xml.exists(),
        "memtrace wrote no XML; stderr:\n{}",
        run.stderr
    );
    (parse_xml(&vg_xml), parse_xml(&mt_xml))
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A stack split into the allocator's frames (their fn) and the program's.
fn split(stack: &Value, valgrind: bool) -> (Vec<String>, Vec<Value>) {
    let frames = stack.as_array().expect("frames");
    let is_alloc = |f: &Value| {
        if valgrind {
            s(f, "obj").is_some_and(|o| o.contains("/vgpreload_"))
        } else {
            s(f, "ip") == Some("0x0")
        }
    };
    let alloc: Vec<String> = frames
        .iter()
        .take_while(|f| is_alloc(f))
        .map(|f| s(f, "fn").unwrap_or("?").to_string())
        .collect();
    let program = frames
        .iter()
        .skip(alloc.len())
        // valgrind's unwinder runs past _start into words with no object.
        .take_while(|f| f.get("obj").is_some() || f.get("fn").is_some())
        .cloned()
        .collect();
    (alloc, program)
}

/// The differences between two stacks, frame by frame, in what both sides know.
fn stack_diff(vg: &Value, mt: &Value) -> Option<String> {
    let (vg_alloc, vg_frames) = split(vg, true);
    let (mt_alloc, mt_frames) = split(mt, false);
    if vg_alloc != mt_alloc {
        return Some(format!("allocator frames {vg_alloc:?} != {mt_alloc:?}"));
    }
    if vg_frames.len() != mt_frames.len() {
        return Some(format!(
            "{} frames != {}:\n{vg_frames:#?}\n{mt_frames:#?}",
            vg_frames.len(),
            mt_frames.len()
        ));
    }
    for (i, (v, m)) in vg_frames.iter().zip(&mt_frames).enumerate() {
        for field in ["file", "line", "obj"] {
            if let (Some(a), Some(b)) = (v.get(field), m.get(field)) {
                if a != b {
                    return Some(format!("frame {i}: {field} {a} != {b}\n{v}\n{m}"));
                }
            }
        }
        if let (Some(a), Some(b)) = (s(v, "dir"), s(m, "dir")) {
            // A relative directory (Debian's libraries are built with
            // -fdebug-prefix-map) that valgrind joins to itself: `./elf/./elf` for
            // memtrace's `./elf`, the directory of glibc's elf/dl-init.c.
            let doubled = !b.starts_with('/') && a == format!("{b}/{b}");
            if a != b && !doubled {
                return Some(format!("frame {i}: dir {a:?} != {b:?}\n{v}\n{m}"));
            }
        }
        if let (Some(a), Some(b)) = (s(v, "fn"), s(m, "fn")) {
            // valgrind names a function by a symbol of its address, which may be a
            // versioned alias (`__libc_start_main@@GLIBC_2.34`, at libc-start.c:360),
            // memtrace by its DWARF name (`__libc_start_main_impl`, the same line).
            let alias =
                a.contains('@') && v.get("line").is_some() && v.get("line") == m.get("line");
            if a != b && !alias {
                return Some(format!("frame {i}: fn {a:?} != {b:?}\n{v}\n{m}"));
            }
        }
        // Where valgrind knows the source, memtrace must too.
        for field in ["fn", "file", "line"] {
            if v.get(field).is_some() && m.get(field).is_none() {
                return Some(format!("frame {i}: no {field} in {m}, valgrind has {v}"));
            }
        }
    }
    None
}

fn errors(doc: &Value, leaks: bool) -> Vec<&Value> {
    doc["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter(|e| s(e, "kind").is_some_and(|k| k.starts_with("Leak_")) == leaks)
        .collect()
}

/// `... in loss record 3 of 8` without its numbers.
fn without_record_number(what: &str) -> &str {
    what.split(" in loss record ").next().unwrap_or(what)
}

/// Every valgrind leak record has one memtrace record with the same kind, text,
/// bytes, blocks and stack, and there are as many on each side.
fn compare_leaks(vg: &Value, mt: &Value) {
    let vg_leaks = errors(vg, true);
    let mt_leaks = errors(mt, true);
    assert!(
        !vg_leaks.is_empty(),
        "the case leaks nothing under valgrind"
    );
    let mut used = vec![false; mt_leaks.len()];
    for v in &vg_leaks {
        let found = mt_leaks.iter().enumerate().position(|(i, m)| {
            !used[i]
                && ["kind", "leakedbytes", "leakedblocks"]
                    .iter()
                    .all(|f| v.get(*f) == m.get(*f))
                && s(v, "what").map(without_record_number)
                    == s(m, "what").map(without_record_number)
                && stack_diff(&v["stacks"][0], &m["stacks"][0]).is_none()
        });
        match found {
            Some(i) => used[i] = true,
            None => {
                let near: Vec<String> = mt_leaks
                    .iter()
                    .filter(|m| m["leakedbytes"] == v["leakedbytes"])
                    .map(|m| {
                        format!(
                            "{} {:?}",
                            m["what"],
                            stack_diff(&v["stacks"][0], &m["stacks"][0])
                        )
                    })
                    .collect();
                panic!("no memtrace record for valgrind's {v:#}\nsame bytes: {near:#?}");
            }
        }
    }
    assert_eq!(vg_leaks.len(), mt_leaks.len(), "memtrace has more records");
}

/// `Address 0x4a40160 is ...` with the address out.
fn masked(text: &str) -> String {
    text.split(' ')
        .map(|w| if w.starts_with("0x") { "ADDR" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The heap errors, in order, with their texts, stacks and counts.
fn compare_errors(vg: &Value, mt: &Value) {
    let vg_errors = errors(vg, false);
    let mt_errors = errors(mt, false);
    assert_eq!(
        vg_errors.len(),
        mt_errors.len(),
        "{vg_errors:#?}\n{mt_errors:#?}"
    );
    for (v, m) in vg_errors.iter().zip(&mt_errors) {
        assert_eq!(s(v, "kind"), s(m, "kind"));
        assert_eq!(s(v, "what"), s(m, "what"));
        let aux = |e: &Value| -> Vec<String> {
            e["auxwhat"]
                .as_array()
                .expect("auxwhat")
                .iter()
                .filter_map(Value::as_str)
                .map(masked)
                .collect()
        };
        assert_eq!(aux(v), aux(m));
        let (vs, ms) = (v["stacks"].as_array(), m["stacks"].as_array());
        assert_eq!(vs.map(Vec::len), ms.map(Vec::len), "{v:#}\n{m:#}");
        for (a, b) in vs.into_iter().flatten().zip(ms.into_iter().flatten()) {
            if let Some(d) = stack_diff(a, b) {
                panic!("{}: {d}", s(v, "kind").unwrap_or("?"));
            }
        }
        let count =
            |doc: &Value, e: &Value| doc["errorcounts"][s(e, "unique").unwrap_or("")].clone();
        assert_eq!(count(vg, v), count(mt, m));
    }
}

fn check_leaks(case: Case) {
    let (vg, mt) = both(&case);
    assert_eq!(mt["tool"], "memcheck");
    assert_eq!(mt["states"], serde_json::json!(["RUNNING", "FINISHED"]));
    assert_eq!(vg["argv"][0], mt["argv"][0]);
    compare_leaks(&vg, &mt);
    compare_errors(&vg, &mt);
}

#[test]
fn alloc_family() {
    check_leaks(cases::alloc_family());
}

#[test]
fn kinds() {
    check_leaks(cases::kinds());
}

/// Left to their defaults, both list definite and possible leaks only (what a CI
/// plugin reading valgrind's XML takes for errors), numbered among all of them.
#[test]
fn kinds_shown_by_default() {
    let (vg, mt) = both_showing(&cases::kinds(), None);
    compare_leaks(&vg, &mt);
    let kinds = |doc: &Value| -> Vec<String> {
        let mut k: Vec<String> = errors(doc, true)
            .iter()
            .filter_map(|e| s(e, "kind").map(str::to_string))
            .collect();
        k.sort();
        k.dedup();
        k
    };
    assert_eq!(kinds(&mt), ["Leak_DefinitelyLost", "Leak_PossiblyLost"]);
    // `... in loss record N of M`: M counts the records not shown too, on both sides.
    let of = |doc: &Value| -> Vec<String> {
        errors(doc, true)
            .iter()
            .filter_map(|e| {
                s(e, "what")?
                    .rsplit_once(" of ")
                    .map(|(_, m)| m.to_string())
            })
            .collect()
    };
    let (vg_of, mt_of) = (of(&vg), of(&mt));
    assert!(
        !vg_of.is_empty() && vg_of.iter().all(|m| m == &vg_of[0]),
        "{vg_of:?}"
    );
    assert!(
        mt_of.iter().all(|m| m == &vg_of[0]),
        "{mt_of:?} != {vg_of:?}"
    );
    let (vg, all) = both_showing(&cases::kinds(), Some("definite,reachable"));
    assert_eq!(kinds(&all), ["Leak_DefinitelyLost", "Leak_StillReachable"]);
    compare_leaks(&vg, &all);
}

#[test]
fn cxx_new() {
    check_leaks(cases::cxx_new());
}

#[test]
fn three_leaks() {
    check_leaks(cases::three_leaks());
}

#[test]
fn mismatched_frees() {
    check_leaks(cases::mismatch());
}

/// glibc aborts at a bad free natively, so the leaks' kinds are not valgrind's (the
/// lost block is still on main's stack): the errors only.
#[test]
fn double_free() {
    let (vg, mt) = both(&cases::bad_free("double"));
    compare_errors(&vg, &mt);
}

#[test]
fn free_inside_a_block() {
    let (vg, mt) = both(&cases::bad_free("interior"));
    compare_errors(&vg, &mt);
}
