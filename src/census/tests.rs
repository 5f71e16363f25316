use super::*;

/// A process's map with resident sizes (`maps line, rss`).
fn memory(lines: &[(&str, u64)]) -> ProcMemory {
    ProcMemory {
        vmas: lines
            .iter()
            .map(|&(l, rss)| {
                let mut m = crate::maps::parse_maps(l).remove(0);
                m.rss = Some(rss);
                m
            })
            .collect(),
        ..ProcMemory::default()
    }
}

const MAP: &[(&str, u64)] = &[
    (
        "555555554000-555555556000 r--p 00000000 fe:01 100 /src/app",
        8192,
    ),
    (
        "555555556000-555555557000 r-xp 00002000 fe:01 100 /src/app",
        4096,
    ),
    (
        "555555557000-555555558000 rw-p 00003000 fe:01 100 /src/app",
        4096,
    ),
    ("555555558000-55555555a000 rw-p 00000000 00:00 0", 4096),
    (
        "555555600000-555555700000 rw-p 00000000 00:00 0 [heap]",
        65536,
    ),
    ("7f0000000000-7f0000021000 rw-p 00000000 00:00 0", 8192),
    ("7f0000021000-7f0004000000 ---p 00000000 00:00 0", 0),
    ("7f1000000000-7f1000001000 ---p 00000000 00:00 0", 0),
    ("7f1000001000-7f1000801000 rw-p 00000000 00:00 0", 16384),
    ("7f2000000000-7f2000101000 rw-p 00000000 00:00 0", 1052672),
    ("7f2100000000-7f2100010000 rw-p 00000000 00:00 0", 4096),
    (
        "7f3000000000-7f3000100000 rw-s 00000000 00:01 11 /memfd:doublemapper (deleted)",
        4096,
    ),
    (
        "7f3000100000-7f3000200000 r-xs 00000000 00:01 11 /memfd:doublemapper (deleted)",
        4096,
    ),
    (
        "7f3100000000-7f3100004000 rw-s 00000000 00:1a 12 /dev/shm/ring",
        0,
    ),
    (
        "7f3200000000-7f3200002000 rw-s 00000000 00:01 13 /SYSV0000beef (deleted)",
        8192,
    ),
    (
        "7f3300000000-7f3300001000 r--p 00000000 fe:01 14 /data/table.bin",
        4096,
    ),
    (
        "7f3400000000-7f3400001000 r-xp 00000000 fe:01 15 /usr/lib/old.so (deleted)",
        4096,
    ),
    (
        "7f3500000000-7f3500001000 r--p 00000000 fe:01 16 /usr/lib/libc.so.6",
        4096,
    ),
    (
        "7f3500001000-7f3500002000 r-xp 00001000 fe:01 16 /usr/lib/libc.so.6",
        4096,
    ),
    (
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]",
        8192,
    ),
    ("7ffd10000000-7ffd10002000 r--p 00000000 00:00 0 [vvar]", 0),
    (
        "7ffd10002000-7ffd10004000 r-xp 00000000 00:00 0 [vdso]",
        4096,
    ),
];

fn kinds(mem: &ProcMemory, blocks: Option<&[(u64, u64)]>) -> Vec<(&'static str, Option<String>)> {
    classify(mem, blocks)
        .into_iter()
        .map(|(k, n)| (k.name(), n))
        .collect()
}

#[test]
fn every_mapping_is_classified() {
    let mut mem = memory(MAP);
    // The arena's heap points to its arena right after its heap_info; the 1 MiB
    // mapping starts with an mmap'd chunk's header.
    mem.heads = vec![
        (0x7f00_0000_0000, [0x7f00_0000_0020, 0x21000]),
        (0x7f20_0000_0000, [0, 0x101002]),
        (0x7f21_0000_0000, [7, 9]),
    ];
    let k = kinds(&mem, None);
    let app = Some("/src/app".to_string());
    assert_eq!(k[0], ("image", app.clone()));
    assert_eq!(k[3], ("image", app), ".bss after the object");
    assert_eq!(k[4], ("heap", None));
    assert_eq!(k[5], ("arena", None));
    assert_eq!(k[6], ("arena", None), "its reserved tail");
    assert_eq!(k[7], ("stack", None), "the guard page");
    assert_eq!(k[8], ("stack", None), "above a guard page");
    assert_eq!(k[9], ("heap", None), "an mmap'd chunk");
    assert_eq!(k[10], ("anonymous", None));
    assert_eq!(k[11], ("memfd", Some("doublemapper".into())));
    assert_eq!(k[13], ("posix_shm", Some("ring".into())));
    assert_eq!(k[14], ("sysv_shm", Some("0x0000beef".into())));
    assert_eq!(k[15], ("file", Some("/data/table.bin".into())));
    assert_eq!(k[16], ("deleted_file", Some("/usr/lib/old.so".into())));
    assert_eq!(k[17], ("image", Some("/usr/lib/libc.so.6".into())));
    assert_eq!(k[19], ("stack", None));
    assert_eq!(k[20], ("special", Some("[vvar]".into())));
}

#[test]
fn without_the_first_words_traced_blocks_and_stack_pointers_tell() {
    let mut mem = memory(MAP);
    mem.stack_pointers = vec![0x7f21_0000_8000];
    let blocks = [(0x5555_5560_0010, 100), (0x7f20_0000_0010, 0x100ff0)];
    let k = kinds(&mem, Some(&blocks));
    assert_eq!(
        k[5],
        ("anonymous", None),
        "no first word: not known as an arena"
    );
    assert_eq!(k[9], ("heap", None), "a live block's header at its start");
    assert_eq!(k[10], ("stack", None), "a thread's stack pointer in it");
}

#[test]
fn the_census_sums_per_kind_and_name_largest_first() {
    let mem = memory(MAP);
    let blocks = [(0x5555_5560_0010, 100), (0x5555_5560_1000, 28)];
    let c = census(7, &mem, Some(&blocks));
    assert_eq!(c.schema, "memtrace-maps/1");
    let size: u64 = mem.vmas.iter().map(|v| v.len()).sum();
    let rss: u64 = mem.vmas.iter().filter_map(|v| v.rss).sum();
    assert_eq!(
        c.total,
        Total {
            count: MAP.len() as u64,
            bytes: size,
            rss_bytes: rss
        }
    );
    let count: u64 = c.groups.iter().map(|g| g.count).sum();
    assert_eq!(count, c.total.count);
    let bytes: Vec<u64> = c.groups.iter().map(|g| g.bytes).collect();
    assert!(bytes.windows(2).all(|w| w[0] >= w[1]), "{bytes:?}");
    let memfd = c.groups.iter().find(|g| g.kind == "memfd").unwrap();
    assert_eq!(
        (memfd.count, memfd.bytes, memfd.rss_bytes),
        (2, 2 << 20, 8192)
    );
    let heap = c.groups.iter().find(|g| g.kind == "heap").unwrap();
    assert_eq!(heap.live_bytes, Some(128));
    assert!(c
        .groups
        .iter()
        .filter(|g| g.kind == "memfd")
        .all(|g| g.live_bytes.is_none()));
    // Untraced: no live bytes anywhere.
    assert!(census(7, &mem, None)
        .groups
        .iter()
        .all(|g| g.live_bytes.is_none()));
}
