//! Reading the target once: every word of the roots and of the live blocks that hits a
//! block, kept as the pointer graph.
//!
//! Memory is read in chunks of [`CHUNK`] bytes in address order: one system call per
//! root region piece, and one per run of neighbouring blocks, not one per block. Only
//! the words that hit a block are kept, each with the block it hits (plus each
//! block's first two words, which the heuristics look at), so the graph costs memory
//! in proportion to the pointers, not to the bytes of the heap.

use super::{Blocks, Memory, Roots, Stats};

/// Bytes read per system call.
pub const CHUNK: usize = 4 << 20;

/// A word that hits a block, and that block (its index): which block a word hits is
/// looked up once, here, not again at each step of the marking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    pub word: u64,
    pub block: u32,
}

/// The pointer graph of one scan.
#[derive(Clone, Debug, Default)]
pub struct Edges {
    /// Words of the roots (registers first) that hit a block.
    pub roots: Vec<Hit>,
    /// Words of block `i` that hit a block: `words[offsets[i]..offsets[i + 1]]`.
    pub offsets: Vec<usize>,
    pub words: Vec<Hit>,
    /// The first two words of each block (0 where the block is shorter or unreadable).
    pub heads: Vec<[u64; 2]>,
    pub stats: Stats,
}

impl Edges {
    /// The pointers held by block `i`.
    pub fn of(&self, i: usize) -> &[Hit] {
        &self.words[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// Reads roots and blocks and keeps every word that hits a block.
pub fn extract(blocks: &Blocks, roots: &Roots, mem: &mut dyn Memory) -> Edges {
    let mut edges = Edges {
        offsets: Vec::with_capacity(blocks.len() + 1),
        heads: Vec::with_capacity(blocks.len()),
        ..Edges::default()
    };
    let hit = |word: u64| {
        blocks.hit(word).map(|(i, _)| Hit {
            word,
            block: i as u32,
        })
    };
    edges
        .roots
        .extend(roots.words.iter().filter_map(|&w| hit(w)));
    let mut buf = vec![0u8; CHUNK];
    for &(start, end) in &roots.regions {
        let (read, missed) = scan_range(mem, start, end, &mut buf, |w| {
            if let Some(h) = hit(w) {
                edges.roots.push(h);
            }
        });
        edges.stats.roots_bytes += read;
        edges.stats.unreadable_bytes += missed;
    }
    let mut window = Window::default();
    for i in 0..blocks.len() {
        edges.offsets.push(edges.words.len());
        let (start, size) = (blocks.start(i), blocks.size(i));
        let end = start.saturating_add(size);
        let mut head = [0u64; 2];
        let words = &mut edges.words;
        let mut at = 0;
        let mut take = |w: u64| {
            if at < 2 {
                head[at] = w;
            }
            at += 1;
            if let Some(h) = hit(w) {
                words.push(h);
            }
        };
        let (read, missed) = if size as usize <= CHUNK / 4 {
            // Small blocks come from a window read once for many neighbours.
            let bytes = window.get(mem, start, size as usize, &mut buf);
            for w in bytes.chunks_exact(8) {
                take(word(w));
            }
            (bytes.len() as u64, (size & !7) - bytes.len() as u64)
        } else {
            window = Window::default();
            scan_range(mem, start, end, &mut buf, take)
        };
        edges.heads.push(head);
        edges.stats.block_bytes += read;
        edges.stats.unreadable_bytes += missed;
    }
    edges.offsets.push(edges.words.len());
    edges.stats.pointers = (edges.roots.len() + edges.words.len()) as u64;
    edges
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(w)
}

/// Calls `each` for every aligned word of `[start, end)`, reading `buf`-sized pieces;
/// returns the bytes read and the bytes that could not be.
fn scan_range(
    mem: &mut dyn Memory,
    start: u64,
    end: u64,
    buf: &mut [u8],
    mut each: impl FnMut(u64),
) -> (u64, u64) {
    // Pointers are aligned: memcheck skips the unaligned ends of a range too.
    let mut at = start.next_multiple_of(8);
    let end = end & !7;
    let (mut read, mut missed) = (0, 0);
    while at < end {
        let len = ((end - at) as usize).min(buf.len());
        let n = mem.read(at, &mut buf[..len]) & !7;
        for w in buf[..n].chunks_exact(8) {
            each(word(w));
        }
        read += n as u64;
        if n == 0 {
            // Unreadable at `at`: skip to the next page and go on from there. (A
            // short read that is not empty may only be the reader's own limit, such
            // as a bound on pages per system call: read on from where it stopped.)
            let skip_to = (at + 1).next_multiple_of(4096).min(end);
            missed += skip_to - at;
            at = skip_to;
        } else {
            at += n as u64;
        }
    }
    (read, missed)
}

/// One chunk of the target read at once, for the small blocks within it.
#[derive(Default)]
struct Window {
    start: u64,
    len: usize,
}

impl Window {
    /// The bytes of `[addr, addr + len)` that can be read (`len` is at most a quarter
    /// of `buf`), from the window when it covers them, else from a new window read at
    /// `addr`.
    fn get<'b>(
        &mut self,
        mem: &mut dyn Memory,
        addr: u64,
        len: usize,
        buf: &'b mut [u8],
    ) -> &'b [u8] {
        let len = len & !7;
        let covered = addr >= self.start && addr + len as u64 <= self.start + self.len as u64;
        if !covered {
            self.start = addr;
            self.len = mem.read(addr, buf) & !7;
        }
        let from = (addr - self.start) as usize;
        let to = (from + len).min(self.len);
        &buf[from.min(to)..to]
    }
}
