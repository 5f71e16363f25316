//! Memory outside malloc: mappings the program makes (mmap, munmap, mremap,
//! mprotect, memfd_create, shm_open, shmat), reported at the end of the trace and
//! checked against the fixture's markers and the kernel's own map of the process
//! at its end. Each fixture runs in both recording modes, which must agree.

mod common;

use common::mappings::{check_fixture, check_nothing_missing, kind_of, Vma};

/// The fixture's own shared memory and files (not the loader's, not memtrace's).
fn fixture_made(v: &Vma) -> bool {
    let path = &v.path;
    path.starts_with("/memfd:") && !path.starts_with("/memfd:memtrace")
        || path.starts_with("/dev/shm/memtrace-fixture")
        || path.starts_with("/SYSV")
        || path.contains("/map_file.")
}

#[test]
fn an_anonymous_mapping_never_unmapped_and_large_blocks_that_stay_heap() {
    let (run, _) = check_fixture("map_anon", &[]);
    // glibc mapped the 2 MiB block itself: it is a leak, not a mapping.
    let leaks = common::report::leaks(run.report());
    assert!(leaks.iter().any(|l| l.bytes == 2 << 20), "{leaks:?}");
}

#[test]
fn the_doublemapper_signature() {
    let (run, vmas) = check_fixture("doublemapper", &[]);
    let list = common::mappings::mappings(run.report());
    check_nothing_missing(&list, &vmas, &fixture_made);
    // The touched page of each writable view is resident, as the kernel says.
    let rw = list
        .iter()
        .find(|m| m.prot == ["rw-s"])
        .unwrap_or_else(|| panic!("{list:?}"));
    assert_eq!(rw.rss_bytes, Some(rw.count * 4096), "{rw:?}");
}

#[test]
fn partial_munmap_mprotect_and_map_fixed_split_mappings() {
    check_fixture("map_partial", &[]);
}

#[test]
fn mremap_grows_moves_and_shrinks() {
    check_fixture("map_remap", &[]);
}

#[test]
fn file_mappings_and_their_descriptors() {
    let (run, vmas) = check_fixture("map_file", &[]);
    let list = common::mappings::mappings(run.report());
    check_nothing_missing(&list, &vmas, &fixture_made);
}

#[test]
fn posix_and_system_v_shared_memory() {
    let (run, vmas) = check_fixture("map_shm", &[]);
    let list = common::mappings::mappings(run.report());
    check_nothing_missing(&list, &vmas, &fixture_made);
    assert!(
        vmas.iter()
            .filter_map(|v| kind_of(&v.path))
            .any(|(k, _)| k == "sysv_shm"),
        "no System V segment in the fixture's map"
    );
}

#[test]
fn large_blocks_glibc_maps_itself_stay_heap() {
    // No MAPPING marker: the report must have no mapping at all, and its leaks the
    // blocks (valgrind agrees on those: the `map_bigmalloc` case of tests/launch.rs).
    let (run, vmas) = check_fixture("map_bigmalloc", &[]);
    assert!(common::mappings::mappings(run.report()).is_empty());
    let leaks = common::report::leaks(run.report());
    let source = common::build::fixture_source("map_bigmalloc");
    for marker in common::markers(&source) {
        assert!(
            leaks.iter().any(|l| l.bytes == marker.bytes),
            "{marker:?} in {leaks:?}"
        );
    }
    // The thread's arena is in the map: glibc did map it.
    let arena = vmas
        .iter()
        .any(|v| v.start % (64 << 20) == 0 && v.path.is_empty());
    assert!(arena, "no arena heap in the fixture's map");
}

#[test]
fn a_mapping_made_by_code_the_allocator_calls_back_is_the_programs() {
    // operator new's call is open while its new_handler maps: the program's mapping.
    check_fixture("map_callback", &[]);
}

#[test]
fn a_static_programs_c_library_maps_for_itself_too() {
    // Its thread's stack (pthread_create), the munmap inside free: the C library's
    // own calls, as with libc.so (same totals), though no libc.so is mapped.
    // Linked without its local symbols (-Wl,-x), malloc's internals that map have
    // no names: a mapping made while an allocator call is open is then the heap's.
    for flags in [
        &["-g", "-O0", "-static"][..],
        &["-g", "-O0", "-static", "-Wl,-x"],
    ] {
        let (run, _) = common::mappings::check_fixture_built("map_bigmalloc", flags, &[]);
        let list = common::mappings::mappings(run.report());
        assert!(list.is_empty(), "{flags:?}: {list:#?}");
    }
}

#[test]
fn the_c_librarys_locale_files_and_arena_trims_are_its_own() {
    // A static program has no libc.so to tell the C library's code by: its own
    // functions that map must be known by name.
    for flags in [common::DEBUG, &["-g", "-O0", "-static"]] {
        let (run, _) = common::mappings::check_fixture_built("map_libc", flags, &[]);
        let list = common::mappings::mappings(run.report());
        assert!(list.is_empty(), "{flags:?}: {list:#?}");
    }
}

#[test]
fn attach_tracks_what_is_mapped_while_attached_and_counts_older_unmaps_apart() {
    use common::attach::{run_attach, Background};
    use common::mappings::{
        check_against_maps, check_mappings_shape, check_markers, check_totals, mappings, parse_maps,
    };
    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("maps");
    let exe = common::build_fixture("map_attach", common::DEBUG);
    let bg = Background::start(&common::Target::new(exe).arg(&dump));
    bg.wait_for_output("ready");
    // Before the trace: the census sees the older memfd.
    let c = common::mappings::census_json(bg.pid());
    let named = |v: &serde_json::Value, name: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .any(|g| g["kind"] == "memfd" && g["name"] == name)
    };
    assert!(named(&c["groups"], "before"), "{c}");
    let run = run_attach(&[], bg.pid());
    assert_eq!(bg.finish().exit, common::Exit::Code(0), "{}", run.stderr);
    let report = run.report();
    let list = mappings(report);
    check_mappings_shape(&list);
    let source = common::build::fixture_source("map_attach");
    check_markers(&list, &source);
    check_totals(report, &source);
    let vmas = parse_maps(&std::fs::read_to_string(&dump).unwrap());
    check_against_maps(&list, &vmas);
    // Still mapped at the end, and not the trace's: not in the report.
    assert!(vmas.iter().any(|v| v.path.starts_with("/memfd:before")));
    assert!(
        !named(&report["mappings"], "before"),
        "{}",
        report["mappings"]
    );
}

/// The reachability scan reads writable shared mappings as roots, but only their
/// pages the process has: reading a memfd's untouched page would allocate it in the
/// target (for a doublemapper, GiBs).
#[test]
fn the_scan_leaves_untouched_shared_pages_alone() {
    use common::attach::{run_attach, Background};
    let exe = common::build_fixture("doublemapper", common::DEBUG);
    let (bg, stdin) = Background::start_piped(&common::Target::new(exe).arg("32").arg("pause"));
    bg.wait_for_output("ready");
    let resident = || -> u64 {
        common::mappings::census_json(bg.pid())["groups"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["kind"] == "memfd")
            .map(|g| g["rss_bytes"].as_u64().unwrap())
            .sum()
    };
    let before = resident();
    // Attach, scan before the detach, detach.
    let run = run_attach(&["--duration", "0.5"], bg.pid());
    assert_eq!(run.exit, common::Exit::Code(0), "{}", run.stderr);
    assert!(run.report()["scan"].is_object(), "no scan: {}", run.stderr);
    assert_eq!(resident(), before, "the scan made memfd pages resident");
    drop(stdin);
    assert_eq!(bg.finish().exit, common::Exit::Code(0));
}
