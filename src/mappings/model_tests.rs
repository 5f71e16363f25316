use super::*;

const S: StackId = StackId(1);
const T: StackId = StackId(2);
const RW: u32 = (libc::PROT_READ | libc::PROT_WRITE) as u32;
const R: u32 = libc::PROT_READ as u32;
const ANON: u32 = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32;
const K: u64 = PAGE;

fn map_with(addr: u64, len: u64, flags: u32, source: MapSource, stack: StackId) -> MapCall {
    MapCall::Map {
        tid: 1,
        addr,
        len,
        prot: RW,
        flags,
        source,
        offset: 0,
        stack,
        func: HookFn::Mmap,
        internal: false,
    }
}

fn map(addr: u64, len: u64) -> MapCall {
    map_with(addr, len, ANON, MapSource::Anonymous, S)
}

fn unmap(addr: u64, len: u64) -> MapCall {
    MapCall::Unmap {
        tid: 1,
        addr,
        len,
        internal: false,
    }
}

fn protect(addr: u64, len: u64, prot: u32) -> MapCall {
    MapCall::Protect {
        tid: 1,
        addr,
        len,
        prot,
        internal: false,
    }
}

fn remap(m: &mut Mappings, tid: Tid, old: u64, old_len: u64, new: u64, new_len: u64, flags: u32) {
    m.apply(&MapCall::RemapStart {
        tid,
        old,
        old_len,
        internal: false,
    });
    m.apply(&MapCall::RemapEnd {
        tid,
        old,
        old_len,
        new,
        new_len,
        flags,
        stack: T,
        internal: false,
    });
}

/// (start, len, perms) of every live range.
fn ranges(m: &Mappings) -> Vec<(u64, u64, String)> {
    m.live().map(|(s, l)| (s, l.len, l.perms())).collect()
}

/// The totals and the sites agree with the ranges.
fn consistent(m: &Mappings) {
    let t = m.totals();
    let live: Vec<_> = m.live().collect();
    assert_eq!(t.live_mappings, live.len() as u64);
    assert_eq!(t.live_bytes, live.iter().map(|(_, l)| l.len).sum::<u64>());
    let sites: (u64, u64) = m
        .sites()
        .fold((0, 0), |a, (_, c)| (a.0 + c.live, a.1 + c.live_bytes));
    assert_eq!(sites, (t.live_mappings, t.live_bytes));
    for w in live.windows(2) {
        assert!(w[0].0 + w[0].1.len <= w[1].0, "overlap: {live:?}");
    }
}

#[test]
fn a_mapping_never_unmapped_stays_and_lengths_are_pages() {
    let mut m = Mappings::new();
    m.apply(&map(0x10000, 100));
    assert_eq!(ranges(&m), vec![(0x10000, K, "rw-p".into())]);
    let t = m.totals();
    assert_eq!((t.maps, t.bytes_mapped, t.live_bytes), (1, K, K));
    m.apply(&unmap(0x10000, 1));
    assert!(ranges(&m).is_empty());
    assert_eq!(m.totals().unmaps, 1);
    consistent(&m);
}

#[test]
fn a_partial_munmap_splits_and_keeps_file_offsets() {
    let mut m = Mappings::new();
    let shared = libc::MAP_SHARED as u32;
    m.apply(&map_with(0x10000, 4 * K, shared, MapSource::Fd(3), S));
    m.apply(&unmap(0x10000 + K, K));
    assert_eq!(
        ranges(&m),
        vec![
            (0x10000, K, "rw-s".into()),
            (0x10000 + 2 * K, 2 * K, "rw-s".into())
        ]
    );
    let right = m.containing(0x10000 + 3 * K).unwrap().1;
    assert_eq!(right.offset, 2 * K);
    // An unmap across two mappings and a gap takes only what is there.
    m.apply(&map(0x20000, 2 * K));
    m.apply(&unmap(0x10000 + 3 * K, 0x20000 - 0x10000 - 3 * K + K));
    assert_eq!(
        ranges(&m),
        vec![
            (0x10000, K, "rw-s".into()),
            (0x10000 + 2 * K, K, "rw-s".into()),
            (0x20000 + K, K, "rw-p".into())
        ]
    );
    assert_eq!(m.totals().unmaps, 2);
    consistent(&m);
}

#[test]
fn mprotect_splits_and_merges_back() {
    let mut m = Mappings::new();
    m.apply(&map(0x10000, 4 * K));
    m.apply(&protect(0x10000 + K, K, R));
    assert_eq!(
        ranges(&m),
        vec![
            (0x10000, K, "rw-p".into()),
            (0x10000 + K, K, "r--p".into()),
            (0x10000 + 2 * K, 2 * K, "rw-p".into())
        ]
    );
    m.apply(&protect(0x10000 + K, K, RW));
    assert_eq!(ranges(&m), vec![(0x10000, 4 * K, "rw-p".into())]);
    // Two mappings side by side never merge: two calls, two sites.
    m.apply(&map(0x10000 + 4 * K, K));
    m.apply(&protect(0x10000, 5 * K, R));
    assert_eq!(m.live().count(), 2);
    assert_eq!(m.totals().protects, 3);
    consistent(&m);
}

#[test]
fn map_fixed_replaces_what_it_covers() {
    let mut m = Mappings::new();
    m.apply(&map(0x10000, 4 * K));
    let fixed = ANON | libc::MAP_FIXED as u32;
    m.apply(&map_with(
        0x10000 + K,
        2 * K,
        fixed,
        MapSource::Anonymous,
        T,
    ));
    let stacks: Vec<(u64, u64, StackId)> = m.live().map(|(s, l)| (s, l.len, l.stack)).collect();
    assert_eq!(
        stacks,
        vec![
            (0x10000, K, S),
            (0x10000 + K, 2 * K, T),
            (0x10000 + 3 * K, K, S)
        ]
    );
    assert_eq!(m.totals().maps, 2);
    consistent(&m);
}

#[test]
fn mremap_grows_in_place_moves_shrinks_and_fails() {
    let maymove = libc::MREMAP_MAYMOVE as u32;
    let mut m = Mappings::new();
    m.apply(&map(0x10000, 2 * K));
    // Grow in place.
    remap(&mut m, 1, 0x10000, 2 * K, 0x10000, 4 * K, maymove);
    assert_eq!(ranges(&m), vec![(0x10000, 4 * K, "rw-p".into())]);
    assert_eq!(m.totals().bytes_mapped, 4 * K);
    // Move: the old range is free, the mapping keeps its stack.
    remap(&mut m, 1, 0x10000, 4 * K, 0x80000, 8 * K, maymove);
    assert_eq!(ranges(&m), vec![(0x80000, 8 * K, "rw-p".into())]);
    assert_eq!(m.containing(0x80000).unwrap().1.stack, S);
    // Shrink in place.
    remap(&mut m, 1, 0x80000, 8 * K, 0x80000, K, 0);
    assert_eq!(ranges(&m), vec![(0x80000, K, "rw-p".into())]);
    // Failure: untouched.
    remap(&mut m, 1, 0x80000, K, u64::MAX, 64 * K, 0);
    assert_eq!(ranges(&m), vec![(0x80000, K, "rw-p".into())]);
    let t = m.totals();
    assert_eq!((t.maps, t.remaps, t.bytes_mapped), (1, 3, 8 * K));
    assert_eq!(t.peak_live_bytes, 8 * K);
    consistent(&m);
}

#[test]
fn mremap_fixed_replaces_and_dontunmap_keeps_the_old_range() {
    let fixed = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u32;
    let mut m = Mappings::new();
    m.apply(&map(0x10000, 2 * K));
    m.apply(&map_with(0x40000, 4 * K, ANON, MapSource::Anonymous, T));
    remap(&mut m, 1, 0x10000, 2 * K, 0x40000 + K, 2 * K, fixed);
    let stacks: Vec<(u64, u64, StackId)> = m.live().map(|(s, l)| (s, l.len, l.stack)).collect();
    assert_eq!(
        stacks,
        vec![
            (0x40000, K, T),
            (0x40000 + K, 2 * K, S),
            (0x40000 + 3 * K, K, T)
        ]
    );
    let dontunmap = libc::MREMAP_MAYMOVE as u32 | MREMAP_DONTUNMAP;
    remap(&mut m, 1, 0x40000 + K, 2 * K, 0x90000, 2 * K, dontunmap);
    assert_eq!(m.live().count(), 4);
    consistent(&m);
}

#[test]
fn a_range_reused_while_mremap_moves_it_is_the_newcomers() {
    let mut m = Mappings::new();
    m.apply(&map(0x10000, 2 * K));
    m.apply(&MapCall::RemapStart {
        tid: 1,
        old: 0x10000,
        old_len: 2 * K,
        internal: false,
    });
    // Another thread maps the range the kernel just released; its record comes
    // before the mremap's return.
    m.apply(&map_with(0x10000, K, ANON, MapSource::Anonymous, T));
    m.apply(&MapCall::RemapEnd {
        tid: 1,
        old: 0x10000,
        old_len: 2 * K,
        new: 0x50000,
        new_len: 2 * K,
        flags: libc::MREMAP_MAYMOVE as u32,
        stack: T,
        internal: false,
    });
    let stacks: Vec<(u64, StackId)> = m.live().map(|(s, l)| (s, l.stack)).collect();
    assert_eq!(stacks, vec![(0x10000, T), (0x50000, S)]);
    consistent(&m);
}

#[test]
fn unknown_memory_is_counted_apart() {
    let mut m = Mappings::attached();
    assert!(m.unknown_history());
    m.apply(&unmap(0x10000, K));
    // mremap of a mapping from before attach: the new range is the program's now.
    remap(
        &mut m,
        1,
        0x20000,
        K,
        0x30000,
        2 * K,
        libc::MREMAP_MAYMOVE as u32,
    );
    let t = m.totals();
    assert_eq!((t.unmaps, t.unmaps_of_unknown, t.maps), (0, 2, 1));
    let (_, l) = m.containing(0x30000).unwrap();
    assert_eq!((l.func, l.stack, l.source), (HookFn::Mremap, T, None));
    consistent(&m);
}

#[test]
fn the_c_librarys_calls_change_what_is_mapped_but_are_not_the_programs() {
    let mut m = Mappings::new();
    m.apply(&map(0x10000, 2 * K));
    let mut stack = map(0x80000, 16 * K);
    if let MapCall::Map { internal, .. } = &mut stack {
        *internal = true;
    }
    m.apply(&stack);
    m.apply(&MapCall::Unmap {
        tid: 1,
        addr: 0x10000,
        len: K,
        internal: true,
    });
    assert_eq!(ranges(&m), vec![(0x10000 + K, K, "rw-p".into())]);
    let t = m.totals();
    assert_eq!((t.maps, t.unmaps, t.internal_calls), (1, 0, 2));
    consistent(&m);
}

#[test]
fn shmdt_detaches_the_whole_segment() {
    let mut m = Mappings::new();
    let sysv = MapCall::Map {
        tid: 1,
        addr: 0x10000,
        len: 3 * K,
        prot: RW,
        flags: libc::MAP_SHARED as u32,
        source: MapSource::Sysv(7),
        offset: 0,
        stack: S,
        func: HookFn::Shmat,
        internal: false,
    };
    m.apply(&sysv);
    m.apply(&protect(0x10000 + K, K, R));
    assert_eq!(m.live().count(), 3);
    m.apply(&MapCall::Shmdt {
        tid: 1,
        addr: 0x10000,
        internal: false,
    });
    assert_eq!(m.live().count(), 0);
    assert_eq!(m.totals().unmaps, 1);
    consistent(&m);
}

#[test]
fn descriptors_hint_at_what_a_mapping_maps() {
    let mut m = Mappings::new();
    m.apply(&MapCall::Descriptor {
        tid: 1,
        fd: 5,
        kind: DescKind::Memfd,
    });
    m.apply(&map_with(
        0x10000,
        K,
        libc::MAP_SHARED as u32,
        MapSource::Fd(5),
        S,
    ));
    m.apply(&map_with(
        0x20000,
        K,
        libc::MAP_SHARED as u32,
        MapSource::Fd(6),
        S,
    ));
    assert_eq!(m.containing(0x10000).unwrap().1.desc, Some(DescKind::Memfd));
    assert_eq!(m.containing(0x20000).unwrap().1.desc, None);
    assert_eq!(m.totals().memfds, 1);
    m.exec();
    assert_eq!(m.live().count(), 0);
    assert_eq!(m.totals(), MapTotals::default());
}

#[test]
fn huge_pages_round_to_their_size() {
    let mut m = Mappings::new();
    let huge = ANON | libc::MAP_HUGETLB as u32;
    m.apply(&map_with(0x20_0000, 100, huge, MapSource::Anonymous, S));
    assert_eq!(ranges(&m), vec![(0x20_0000, 2 << 20, "rw-p".into())]);
}
