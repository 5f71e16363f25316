//! The analysis on fake memory: each case is a little heap laid out by hand.

use super::*;
use std::collections::BTreeMap;

/// Fake target memory: words at addresses, everything else unmapped.
#[derive(Default)]
struct Fake {
    words: BTreeMap<u64, u64>,
    /// Readable ranges; reads stop at the first byte outside them.
    mapped: Vec<(u64, u64)>,
    /// How many reads were made.
    reads: usize,
}

impl Fake {
    fn map(&mut self, start: u64, len: u64) -> &mut Self {
        self.mapped.push((start, start + len));
        self
    }
    fn set(&mut self, addr: u64, value: u64) -> &mut Self {
        self.words.insert(addr, value);
        self
    }
}

/// At most this much per read, like `process_vm_readv` with its 1024 iovecs of one
/// page each, counted from the first page boundary.
const READ_LIMIT: u64 = 1024 * 4096;

impl Memory for Fake {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize {
        self.reads += 1;
        let Some(&(_, end)) = self.mapped.iter().find(|(s, e)| *s <= addr && addr < *e) else {
            return 0;
        };
        let limit = (addr & !4095) + READ_LIMIT - addr;
        let n = ((end - addr) as usize).min(buf.len()).min(limit as usize);
        buf[..n].fill(0);
        for (&a, &v) in self.words.range(addr..addr + n as u64) {
            let off = (a - addr) as usize;
            let bytes = v.to_le_bytes();
            let k = bytes.len().min(n - off);
            buf[off..off + k].copy_from_slice(&bytes[..k]);
        }
        n
    }
}

const HEAP: u64 = 0x10_0000;
const DATA: u64 = 0x5000_0000;

fn run(blocks: &[(u64, u64)], mem: &mut Fake, words: &[u64]) -> Vec<Kind> {
    let roots = Roots {
        regions: vec![(DATA, DATA + 0x1000)],
        words: words.to_vec(),
    };
    classify(blocks, &roots, &[], Options::default(), mem).kinds
}

fn heap() -> Fake {
    let mut f = Fake::default();
    f.map(HEAP, 0x10_0000).map(DATA, 0x1000);
    f
}

use Kind::*;

#[test]
fn a_lost_list_head_leaks_its_children_indirectly() {
    let (a, b, c) = (HEAP + 0x10, HEAP + 0x40, HEAP + 0x70);
    let mut m = heap();
    m.set(a, b).set(b, c);
    let kinds = run(&[(a, 32), (b, 32), (c, 32)], &mut m, &[]);
    assert_eq!(kinds, vec![Definite, Indirect, Indirect]);
    let roots = Roots::default();
    let out = classify(
        &[(a, 32), (b, 32), (c, 24)],
        &roots,
        &[],
        Options::default(),
        &mut m,
    );
    assert_eq!(out.indirect_bytes, vec![56, 0, 0]);
}

#[test]
fn a_global_makes_a_chain_reachable() {
    let (a, b) = (HEAP + 0x10, HEAP + 0x40);
    let mut m = heap();
    m.set(DATA + 8, a).set(a + 8, b);
    assert_eq!(
        run(&[(a, 32), (b, 32)], &mut m, &[]),
        vec![Reachable, Reachable]
    );
}

#[test]
fn a_cycle_without_root_is_led_by_its_lowest_block() {
    let (a, b, c) = (HEAP + 0x10, HEAP + 0x40, HEAP + 0x70);
    let mut m = heap();
    m.set(c, b).set(b, a).set(a, c);
    // Given in another order: the answer is per block, in the caller's order.
    let kinds = run(&[(c, 32), (a, 32), (b, 32)], &mut m, &[]);
    assert_eq!(kinds, vec![Indirect, Definite, Indirect]);
}

#[test]
fn interior_pointers_only_possibly_reach() {
    let (a, b) = (HEAP + 0x10, HEAP + 0x100);
    let mut m = heap();
    // A root points 16 bytes into a; a points to b's start: b is only possible too.
    m.set(DATA, a + 16).set(a + 32, b);
    let kinds = run(&[(a, 100), (b, 32)], &mut m, &[]);
    assert_eq!(kinds, vec![Possible, Possible]);
    // A start pointer from a root later makes b reachable all the same.
    m.set(DATA + 8, b);
    assert_eq!(
        run(&[(a, 100), (b, 32)], &mut m, &[]),
        vec![Possible, Reachable]
    );
}

#[test]
fn registers_are_roots() {
    let a = HEAP + 0x10;
    let mut m = heap();
    assert_eq!(run(&[(a, 8)], &mut m, &[7, a]), vec![Reachable]);
    assert_eq!(run(&[(a, 8)], &mut m, &[a + 4]), vec![Possible]);
    assert_eq!(run(&[(a, 8)], &mut m, &[a + 8]), vec![Definite]);
}

#[test]
fn zero_size_blocks_are_hit_at_their_start_only() {
    let (z, b) = (HEAP + 0x10, HEAP + 0x30);
    let mut m = heap();
    m.set(DATA, z);
    assert_eq!(
        run(&[(z, 0), (b, 16)], &mut m, &[]),
        vec![Reachable, Definite]
    );
    let blocks = Blocks::new(&[(z, 0)], Options::default());
    assert_eq!(blocks.hit(z), Some((0, true)));
    assert_eq!(blocks.hit(z + 1), None);
}

#[test]
fn the_next_chunk_header_is_the_allocators_pointer() {
    // malloc(40) ends 8 bytes into the next chunk's header, which main_arena.top
    // points to when this was the last allocation.
    let a = HEAP + 0x10;
    assert_eq!(next_chunk(a, 40), a + 32);
    assert_eq!(next_chunk(a, 24), a + 16);
    assert_eq!(next_chunk(a, 1), a + 16);
    assert_eq!(next_chunk(a, 32), a + 32);
    let mut m = heap();
    m.set(DATA, a + 32);
    assert_eq!(run(&[(a, 40)], &mut m, &[]), vec![Definite]);
    // Without the allocator's layout it would be an interior pointer.
    let roots = Roots {
        regions: vec![(DATA, DATA + 8)],
        words: vec![],
    };
    let plain = Options {
        glibc_chunks: false,
        heuristics: true,
    };
    assert_eq!(
        classify(&[(a, 40)], &roots, &[], plain, &mut m).kinds,
        vec![Possible]
    );
}

#[test]
fn new_array_and_length64_heuristics() {
    let (a, b) = (HEAP + 0x10, HEAP + 0x100);
    let mut m = heap();
    // new T[4] of 8-byte objects with destructors: the count, then the array.
    m.set(a, 4).set(DATA, a + 8);
    // A pointer 8 bytes in, with a first word that fits no heuristic.
    m.set(b, 5).set(DATA + 8, b + 8);
    assert_eq!(
        run(&[(a, 40), (b, 40)], &mut m, &[]),
        vec![Reachable, Possible]
    );
    let no = Options {
        glibc_chunks: true,
        heuristics: false,
    };
    let roots = Roots {
        regions: vec![(DATA, DATA + 16)],
        words: vec![],
    };
    assert_eq!(
        classify(&[(a, 40)], &roots, &[], no, &mut m).kinds,
        vec![Possible]
    );
}

#[test]
fn std_string_heuristic() {
    let a = HEAP + 0x10;
    let mut m = heap();
    // length 5, capacity 10, refcount, then 11 bytes of characters.
    m.set(a, 5).set(a + 8, 10).set(DATA, a + 24);
    assert_eq!(run(&[(a, 24 + 11)], &mut m, &[]), vec![Reachable]);
}

#[test]
fn multiple_inheritance_heuristic() {
    const TEXT: u64 = 0x40_0000;
    const RODATA: u64 = 0x48_0000;
    let a = HEAP + 0x10;
    let mut m = heap();
    m.map(RODATA, 0x1000).map(TEXT, 0x1000);
    // Two vtables of two function pointers each.
    m.set(RODATA, TEXT + 0x10).set(RODATA + 8, TEXT + 0x20);
    m.set(RODATA + 0x40, TEXT + 0x30)
        .set(RODATA + 0x48, TEXT + 0x40);
    // An object whose base parts start with vtable pointers; a root keeps only the
    // second base's address.
    m.set(a, RODATA)
        .set(a + 16, RODATA + 0x40)
        .set(DATA, a + 16);
    let segments = [
        Segment {
            start: TEXT,
            end: TEXT + 0x1000,
            file: true,
            read: true,
            exec: true,
        },
        Segment {
            start: RODATA,
            end: RODATA + 0x1000,
            file: true,
            read: true,
            exec: false,
        },
    ];
    let roots = Roots {
        regions: vec![(DATA, DATA + 8)],
        words: vec![],
    };
    let kinds = classify(&[(a, 32)], &roots, &segments, Options::default(), &mut m).kinds;
    assert_eq!(kinds, vec![Reachable]);
    // Without code behind the table it is only an interior pointer.
    let kinds = classify(
        &[(a, 32)],
        &roots,
        &segments[1..],
        Options::default(),
        &mut m,
    )
    .kinds;
    assert_eq!(kinds, vec![Possible]);
}

#[test]
fn a_possible_block_passes_on_possible_and_cliques_join() {
    let (a, b, c, d) = (HEAP + 0x10, HEAP + 0x40, HEAP + 0x70, HEAP + 0xa0);
    let mut m = heap();
    // root -> interior of a (possible) -> start of b (possible).
    m.set(DATA, a + 8).set(a + 16, b);
    // d -> c: c is lower and leads first, then d leads and takes c into its clique
    // (a leader stays unreached), as memcheck does.
    m.set(d, c);
    let blocks = [(a, 32), (b, 32), (c, 40), (d, 32)];
    let roots = Roots {
        regions: vec![(DATA, DATA + 0x1000)],
        words: vec![],
    };
    let out = classify(&blocks, &roots, &[], Options::default(), &mut m);
    assert_eq!(out.kinds, vec![Possible, Possible, Indirect, Definite]);
    // c led its own clique first, then joined d's with what it held.
    assert_eq!(out.indirect_bytes, vec![0, 0, 0, 40]);
}

#[test]
fn unreadable_and_large_memory_is_skipped_or_read_in_chunks() {
    // A block bigger than a read chunk, with its pointer near the end.
    let big = HEAP + 0x10;
    let size = (edges::CHUNK as u64) * 2 + 64;
    let child = big + size + 0x10;
    let mut m = Fake::default();
    m.map(HEAP, size + 0x100).map(DATA, 0x1000);
    m.set(DATA, big).set(big + size - 8, child);
    // A root region half unmapped.
    let roots = Roots {
        regions: vec![(DATA, DATA + 0x3000)],
        words: vec![],
    };
    let Classified { kinds, stats, .. } = classify(
        &[(big, size), (child, 16)],
        &roots,
        &[],
        Options::default(),
        &mut m,
    );
    assert_eq!(kinds, vec![Reachable, Reachable]);
    assert_eq!(stats.roots_bytes, 0x1000);
    assert_eq!(stats.unreadable_bytes, 0x2000);
    assert_eq!(stats.block_bytes, size + 16);
}

#[test]
fn no_blocks_nothing_to_do() {
    let mut m = heap();
    let Classified { kinds, stats, .. } =
        classify(&[], &Roots::default(), &[], Options::default(), &mut m);
    assert!(kinds.is_empty());
    assert_eq!(stats.pointers, 0);
}

#[test]
fn neighbouring_blocks_are_read_in_large_chunks() {
    // 10,000 blocks of 32 bytes side by side (320 KB): a few reads, not one a block.
    let mut mem = heap();
    let blocks: Vec<(u64, u64)> = (0..10_000).map(|i| (HEAP + i * 32, 32)).collect();
    mem.set(DATA, HEAP);
    let kinds = run(&blocks, &mut mem, &[]);
    assert_eq!(kinds[0], Kind::Reachable);
    assert!(mem.reads <= 4, "{} reads", mem.reads);
}

#[test]
fn interior_pointers_cost_no_read_each() {
    // An arena of 10,000 slots, each known only by an interior pointer from a small
    // block (perl's SV bodies), and its start pointer found last: the heuristics are
    // asked about every one of those pointers. They read the target once per block
    // that starts with a vtable pointer, not once per interior pointer.
    const SLOTS: u64 = 10_000;
    let arena = HEAP + 0x10;
    let heads = arena + SLOTS * 16 + 0x100;
    let mut mem = Fake::default();
    mem.map(HEAP, 0x10_0000 + SLOTS * 32).map(DATA, 0x1000);
    let mut blocks = vec![(arena, SLOTS * 16)];
    for i in 0..SLOTS {
        let head = heads + i * 32;
        mem.set(head, arena + 8 + i * 16);
        blocks.push((head, 16));
    }
    // The last small block holds the arena's start: it becomes reachable at the end.
    let last = heads + (SLOTS - 1) * 32;
    mem.set(last + 8, arena);
    mem.set(DATA, heads);
    for i in 0..SLOTS - 1 {
        mem.set(heads + i * 32 + 8, heads + (i + 1) * 32);
    }
    let kinds = run(&blocks, &mut mem, &[]);
    assert!(kinds.iter().all(|&k| k == Kind::Reachable), "{kinds:?}");
    assert!(mem.reads <= 8, "{} reads", mem.reads);
}

/// The block `word` is in, found by a binary search over every start: what the
/// page index must answer.
fn hit_by_search(blocks: &[(u64, u64)], word: u64) -> Option<(u64, bool)> {
    let i = blocks.partition_point(|b| b.0 <= word).checked_sub(1)?;
    let (start, size) = blocks[i];
    if word == start {
        return Some((start, true));
    }
    (word - start < size && word != next_chunk(start, size)).then_some((start, false))
}

#[test]
fn the_page_index_finds_what_a_search_of_every_start_finds() {
    // Blocks of every size on a few pages and across many (big ones too), with gaps of
    // every size, some far apart (a heap and an mmap'd block): every word near every
    // edge, and words anywhere.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for round in 0..40 {
        let mut blocks = Vec::new();
        let mut at = HEAP + next(4096);
        for _ in 0..200 {
            let size = match next(6) {
                0 => next(3) * 8,
                5 if next(4) == 0 => (1 << 20) + next(1 << 21),
                1 => 16 + next(64) * 16,
                2 => 4096 * (1 + next(3)) - 8,
                3 => 24 + next(5000),
                _ => 40,
            };
            blocks.push((at, size));
            at +=
                size.max(1).next_multiple_of(16) + [0, 16, 4096, 70_000, 1 << 20][next(5) as usize];
            if round % 4 == 0 && next(50) == 0 {
                at += 1 << 40;
            }
        }
        if round % 5 == 1 {
            // Overlapping blocks: one inside a big one, another across two.
            let (s, n) = blocks[next(blocks.len() as u64) as usize];
            blocks.push((s + 0x2000, 16));
            blocks.push((s + n.saturating_sub(8), 64));
            blocks.push((s - 8, 3 << 20));
            blocks.sort_unstable();
            blocks.dedup_by_key(|b| b.0);
        }
        if round == 2 {
            // The very top of the address space.
            blocks.push((u64::MAX - 4095, 4000));
        }
        let index = Blocks::new(&blocks, Options::default());
        let mut words: Vec<u64> = blocks
            .iter()
            .flat_map(|&(s, n)| [s, s + n, next_chunk(s, n), s & !4095, (s + n) | 4095])
            .flat_map(|w| [w.wrapping_sub(1), w, w.wrapping_add(1), w.wrapping_add(8)])
            .collect();
        words.extend((0..2000).map(|_| HEAP + next(at - HEAP + 8192)));
        for w in words {
            let want = hit_by_search(&blocks, w);
            let got = index.hit(w).map(|(i, at_start)| (index.start(i), at_start));
            assert_eq!(got, want, "word {w:#x}, round {round}");
        }
    }
}
