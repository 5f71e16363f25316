//! Leak kinds: a conservative reachability scan, with valgrind memcheck's meanings.
//!
//! Pure: it sees live blocks, root regions, register words and a [`Memory`] to read
//! the target through; never a pid. The tracer gathers the roots (`tracer/scan.rs`).
//!
//! The algorithm is memcheck's (`mc_leakcheck.c`, valgrind 3.19):
//! - A word "hits" a block when `start <= word < start + size` (a zero-size block: only
//!   `word == start`). A hit at the start is a start pointer, else an interior pointer.
//! - From the roots (registers, root regions; they count as definite), a start pointer
//!   makes a block `Reachable`, an interior pointer `Possible` (if still unreached).
//!   Every block that changes state is scanned in turn; a block scanned while only
//!   `Possible` passes on no more than `Possible`. An interior pointer that one of
//!   memcheck's default heuristics recognises (std::string, length64, new[], multiple
//!   inheritance) counts as a start pointer.
//! - Then each block still unreached, in address order, leads a clique: it is
//!   `Definite`, and every unreached block reachable from it, by any pointer, is
//!   `Indirect`.
//!
//! The result does not depend on the order blocks are scanned in (states only rise,
//! and cliques are led in address order), so each block's contents are read once, in
//! address order and in large chunks ([`extract`]), and the graph is walked in memory.

mod classify;
mod edges;

pub use classify::classify_edges;
pub use edges::{extract, Edges};

use serde::Serialize;

/// Reads the target: fills as much of `buf` as is readable from `addr` on and returns
/// how many bytes that was (0 when nothing is). Unreadable memory is skipped, as
/// memcheck skips unaddressable memory.
pub trait Memory {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize;
}

impl<F: FnMut(u64, &mut [u8]) -> usize> Memory for F {
    fn read(&mut self, addr: u64, buf: &mut [u8]) -> usize {
        self(addr, buf)
    }
}

/// valgrind's four kinds of live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Definite,
    Indirect,
    Possible,
    Reachable,
}

impl Kind {
    /// The contract's name.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Definite => "definite",
            Kind::Indirect => "indirect",
            Kind::Possible => "possible",
            Kind::Reachable => "reachable",
        }
    }
}

/// A mapping of the target, as far as the multiple-inheritance heuristic needs it
/// (is this word a pointer to a vtable: a table of pointers into code?).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    /// Backed by a file (vtables and code are).
    pub file: bool,
    pub read: bool,
    pub exec: bool,
}

/// Where pointers to blocks are looked for first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Roots {
    /// Memory ranges `[start, end)`: writable data of loaded objects, stacks from
    /// their stack pointer, anonymous mappings that are not the heap.
    pub regions: Vec<(u64, u64)>,
    /// Register words of every stopped thread.
    pub words: Vec<u64>,
}

/// How the blocks are laid out by the allocator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Blocks come from glibc's malloc: a pointer to the chunk header that follows a
    /// block is the allocator's (its top chunk, its free lists), not the program's,
    /// even when that header overlaps the block's last bytes (see [`next_chunk`]).
    pub glibc_chunks: bool,
    /// memcheck's default `--leak-check-heuristics=all`.
    pub heuristics: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            glibc_chunks: true,
            heuristics: true,
        }
    }
}

/// What one scan read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Bytes of root regions read.
    pub roots_bytes: u64,
    /// Bytes of live blocks read.
    pub block_bytes: u64,
    /// Bytes of roots or blocks that could not be read (unmapped meanwhile, guard pages).
    pub unreadable_bytes: u64,
    /// Words that hit a block.
    pub pointers: u64,
}

/// The address of the glibc chunk header right after the block `[start, start+size)`.
///
/// A chunk is its 16-byte header (the previous chunk's last word, then its size)
/// followed by the user's bytes; the user pointer is 16 bytes past the header, and
/// chunk sizes are `max(32, size + 8)` rounded up to 16. A block whose size is 8
/// more than a multiple of 16 (malloc(24), malloc(40)) ends 8 bytes into the next
/// chunk's header, so a pointer to that header (`main_arena.top` right after the last
/// allocation, a free-list link) points inside the block.
pub fn next_chunk(start: u64, size: u64) -> u64 {
    let chunk = size.saturating_add(8 + 15) & !15;
    start.wrapping_sub(16).wrapping_add(chunk.max(32))
}

/// Live blocks sorted by address, and which block a word hits.
///
/// Every word of the heap is looked up, and a binary search over tens of thousands of
/// starts was most of a scan's time. So blocks are grouped into regions of pages
/// (blocks with less than [`REGION_GAP`] pages between them), and each region has a
/// table: per page, how many blocks start before it. A word's page then names the
/// few blocks starting on it, searched there. A block of [`BIG_PAGES`] or more
/// counts in a region by its first page only (its other pages would make a table as
/// large as it); a word on no region's page can only be inside such a block.
#[derive(Clone, Debug, Default)]
pub struct Blocks {
    starts: Vec<u64>,
    sizes: Vec<u64>,
    /// The lowest start and the highest end: most words are outside at once.
    low: u64,
    high: u64,
    glibc_chunks: bool,
    /// By first page.
    regions: Vec<Region>,
    /// The regions' tables, one after the other.
    before: Vec<u32>,
    /// The blocks of [`BIG_PAGES`] pages or more, by start.
    big: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Region {
    first_page: u64,
    last_page: u64,
    /// Where its table starts in `before`: `last_page - first_page + 2` entries, the
    /// blocks starting before each page, and before the page after the last.
    table: usize,
}

const PAGE_SHIFT: u32 = 12;
/// Pages with no block between two blocks that still share a region.
const REGION_GAP: u64 = 64;
/// Blocks of this many pages or more are not in the regions' tables past their start.
const BIG_PAGES: u64 = 256;

impl Blocks {
    /// `blocks` as `(start, size)`, in any order.
    pub fn new(blocks: &[(u64, u64)], options: Options) -> Blocks {
        let mut sorted = blocks.to_vec();
        sorted.sort_unstable();
        sorted.dedup_by_key(|b| b.0);
        let high = sorted
            .iter()
            .map(|&(s, n)| s.saturating_add(n.max(1)))
            .max()
            .unwrap_or(0);
        let starts: Vec<u64> = sorted.iter().map(|b| b.0).collect();
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut big = Vec::new();
        for (i, &(start, size)) in sorted.iter().enumerate() {
            let first = start >> PAGE_SHIFT;
            let mut last = start.saturating_add(size.max(1) - 1) >> PAGE_SHIFT;
            if last - first >= BIG_PAGES {
                big.push(i as u32);
                last = first;
            }
            match spans.last_mut() {
                Some(r) if first <= r.1.saturating_add(REGION_GAP) => r.1 = r.1.max(last),
                _ => spans.push((first, last)),
            }
        }
        let mut regions = Vec::with_capacity(spans.len());
        let mut before = Vec::new();
        let mut j = 0;
        for (first_page, last_page) in spans {
            regions.push(Region {
                first_page,
                last_page,
                table: before.len(),
            });
            for page in first_page..=last_page + 1 {
                // By page, not address: the page after the last one may be past 2^64.
                while j < starts.len() && starts[j] >> PAGE_SHIFT < page {
                    j += 1;
                }
                before.push(j as u32);
            }
        }
        Blocks {
            low: starts.first().copied().unwrap_or(0),
            high,
            sizes: sorted.iter().map(|b| b.1).collect(),
            starts,
            glibc_chunks: options.glibc_chunks,
            regions,
            before,
            big,
        }
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    pub fn start(&self, i: usize) -> u64 {
        self.starts[i]
    }

    pub fn size(&self, i: usize) -> u64 {
        self.sizes[i]
    }

    /// The block `word` hits, and whether at its start.
    #[inline]
    pub fn hit(&self, word: u64) -> Option<(usize, bool)> {
        if word < self.low || word >= self.high {
            return None;
        }
        let i = self.candidate(word)?;
        let (start, size) = (self.starts[i], self.sizes[i]);
        if word == start {
            return Some((i, true));
        }
        if word - start >= size {
            return None;
        }
        if self.glibc_chunks && word == next_chunk(start, size) {
            return None;
        }
        Some((i, false))
    }

    /// The block `word` may be in: the last one that starts at or below it.
    #[inline]
    fn candidate(&self, word: u64) -> Option<usize> {
        let page = word >> PAGE_SHIFT;
        let r = self
            .regions
            .partition_point(|r| r.first_page <= page)
            .checked_sub(1)
            .map(|k| self.regions[k])
            .filter(|r| page <= r.last_page);
        match r {
            Some(r) => {
                let at = r.table + (page - r.first_page) as usize;
                let (first, end) = (self.before[at] as usize, self.before[at + 1] as usize);
                let within = self.starts[first..end].partition_point(|&s| s <= word);
                (first + within).checked_sub(1)
            }
            None => {
                // On no region's page: only a big block can hold the word, unless
                // blocks overlap (one starts inside a big one: a realloc in flight, a
                // free not seen). Then the search of every start answers.
                let k = self
                    .big
                    .partition_point(|&i| self.starts[i as usize] <= word);
                let b = self.big[k.checked_sub(1)?] as usize;
                if self.starts.get(b + 1).is_some_and(|&s| s <= word) {
                    return self.starts.partition_point(|&s| s <= word).checked_sub(1);
                }
                Some(b)
            }
        }
    }
}

/// What a scan found: per block, in the caller's order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Classified {
    pub kinds: Vec<Kind>,
    /// For a definitely lost block, the bytes of the blocks lost only through it.
    pub indirect_bytes: Vec<u64>,
    pub stats: Stats,
}

/// Classifies every block of `blocks` (a kind per block, in `blocks`' order), reading
/// roots and blocks through `mem`.
pub fn classify(
    blocks: &[(u64, u64)],
    roots: &Roots,
    segments: &[Segment],
    options: Options,
    mem: &mut dyn Memory,
) -> Classified {
    let index = Blocks::new(blocks, options);
    let edges = extract(&index, roots, mem);
    let (kinds, indirect) = classify_edges(&index, &edges, segments, options, mem);
    // Back to the caller's order.
    let mut out = Classified {
        stats: edges.stats,
        ..Classified::default()
    };
    for &(start, _) in blocks {
        let i = index.starts.partition_point(|&s| s < start);
        out.kinds
            .push(kinds.get(i).copied().unwrap_or(Kind::Definite));
        out.indirect_bytes
            .push(indirect.get(i).copied().unwrap_or(0));
    }
    out
}

#[cfg(test)]
mod tests;
