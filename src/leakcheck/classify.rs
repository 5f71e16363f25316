//! memcheck's marking, on the pointer graph: from the roots, then clique by clique.

use super::edges::Hit;
use super::{Blocks, Edges, Kind, Memory, Options, Segment};
use rustc_hash::FxHashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unreached,
    Possible,
    Reachable,
    /// In the clique of an unreached block.
    Indirect,
}

struct Marker<'a> {
    blocks: &'a Blocks,
    edges: &'a Edges,
    /// Sorted by start, for a binary search.
    segments: Vec<Segment>,
    options: Options,
    mem: &'a mut dyn Memory,
    state: Vec<State>,
    /// For a clique leader: the bytes of the blocks in its clique.
    indirect: Vec<u64>,
    pending: Vec<bool>,
    stack: Vec<usize>,
    /// Whether a word is a vtable's address, per word asked about: the heuristic is
    /// asked at every interior pointer into a block not yet reached, and a real heap
    /// has many (perl's SV arenas: tens of thousands), so each answer that needs a
    /// read of the target is read once.
    vtables: FxHashMap<u64, bool>,
}

/// A kind per block of `blocks` (address order), and for each definitely lost block
/// the bytes of the blocks lost with it (its clique: valgrind's "indirect" part).
pub fn classify_edges(
    blocks: &Blocks,
    edges: &Edges,
    segments: &[Segment],
    options: Options,
    mem: &mut dyn Memory,
) -> (Vec<Kind>, Vec<u64>) {
    let mut sorted = segments.to_vec();
    sorted.sort_unstable_by_key(|s| s.start);
    let mut m = Marker {
        blocks,
        edges,
        segments: sorted,
        options,
        mem,
        state: vec![State::Unreached; blocks.len()],
        indirect: vec![0; blocks.len()],
        pending: vec![false; blocks.len()],
        stack: Vec::new(),
        vtables: FxHashMap::default(),
    };
    for &h in &edges.roots {
        m.mark_from_reached(h, true);
    }
    m.process(None);
    for leader in 0..blocks.len() {
        if m.state[leader] == State::Unreached {
            m.push(leader);
            m.process(Some(leader));
        }
    }
    let kinds = m
        .state
        .iter()
        .map(|s| match s {
            State::Unreached => Kind::Definite,
            State::Indirect => Kind::Indirect,
            State::Possible => Kind::Possible,
            State::Reachable => Kind::Reachable,
        })
        .collect();
    // A block absorbed into a later clique passed its own on; only leaders keep one.
    let indirect = m
        .indirect
        .iter()
        .zip(&m.state)
        .map(|(&n, &s)| if s == State::Unreached { n } else { 0 })
        .collect();
    (kinds, indirect)
}

impl Marker<'_> {
    fn push(&mut self, i: usize) {
        if !self.pending[i] {
            self.pending[i] = true;
            self.stack.push(i);
        }
    }

    /// Scans pending blocks until none is left: from the roots (`clique` None) or
    /// within the clique of an unreached leader.
    fn process(&mut self, clique: Option<usize>) {
        while let Some(i) = self.stack.pop() {
            self.pending[i] = false;
            // A block only possibly reached passes on no more than that.
            let definite = self.state[i] != State::Possible;
            for &h in self.edges.of(i) {
                match clique {
                    None => self.mark_from_reached(h, definite),
                    Some(leader) => self.join_clique(h, leader),
                }
            }
        }
    }

    /// `lc_push_without_clique_if_a_chunk_ptr`: a word found in a root or a reached
    /// block (`definite`: not a block only possibly reached).
    fn mark_from_reached(&mut self, h: Hit, definite: bool) {
        let (i, w) = (h.block as usize, h.word);
        if self.state[i] == State::Reachable {
            return;
        }
        let at_start = w == self.blocks.start(i);
        let as_start = at_start || (self.options.heuristics && self.heuristic(i, w));
        if as_start && definite {
            self.state[i] = State::Reachable;
            self.push(i);
        } else if self.state[i] == State::Unreached {
            self.state[i] = State::Possible;
            self.push(i);
        }
    }

    /// `lc_push_with_clique_if_a_chunk_ptr`: start and interior pointers alike.
    fn join_clique(&mut self, h: Hit, leader: usize) {
        let i = h.block as usize;
        if self.state[i] == State::Unreached && i != leader {
            self.state[i] = State::Indirect;
            // A former leader joins with the clique it led.
            self.indirect[leader] += self.blocks.size(i) + self.indirect[i];
            self.push(i);
        }
    }

    /// memcheck's `heuristic_reachedness`: an interior pointer `w` into block `i` that
    /// is what C++ and some C libraries keep instead of the block's start.
    fn heuristic(&mut self, i: usize, w: u64) -> bool {
        let (start, size) = (self.blocks.start(i), self.blocks.size(i));
        let [first, second] = self.edges.heads[i];
        // std::string (old ABI): length, capacity, refcount, then the characters.
        if w == start + 24 && second.checked_add(25) == Some(size) && first <= second {
            return true;
        }
        if w == start + 8 && first > 0 {
            // length64: the block starts with the length of the rest (sqlite).
            // new[]: the element count of an array of objects with destructors.
            if size - 8 == first || (size - 8) % first == 0 {
                return true;
            }
        }
        self.multiple_inheritance(start, first, w)
    }

    /// An inner object's pointer into a block whose first word, and the word pointed
    /// to, are both vtable pointers. The block's first word is known without a read
    /// and rules out most blocks (those of C programs, of perl...): it is asked first,
    /// and the word at `w` is read only for a block that starts with a vtable pointer.
    fn multiple_inheritance(&mut self, start: u64, first: u64, w: u64) -> bool {
        if w % 8 != 0 || w == start {
            return false;
        }
        let plausible = |p: u64| p % 8 == 0 && p >= 4096;
        if !plausible(first) || !self.is_vtable(first) {
            return false;
        }
        let mut b = [0u8; 8];
        if self.mem.read(w, &mut b) < 8 {
            return false;
        }
        let inner = u64::from_le_bytes(b);
        plausible(inner) && self.is_vtable(inner)
    }

    /// memcheck's `aligned_ptr_above_page0_is_vtable_addr`: in a readable file
    /// mapping, and of the (up to) 20 words there, two non-null ones come before any
    /// that does not point into code of a file mapping.
    fn is_vtable(&mut self, p: u64) -> bool {
        if let Some(&known) = self.vtables.get(&p) {
            return known;
        }
        let answer = self.read_vtable(p);
        self.vtables.insert(p, answer);
        answer
    }

    fn read_vtable(&mut self, p: u64) -> bool {
        let Some(seg) = self.segment(p).filter(|s| s.file && s.read) else {
            return false;
        };
        let last = (p + 20 * 8).min(seg.end.saturating_sub(8));
        let n = (last.saturating_sub(p) / 8 + 1) as usize;
        let mut buf = vec![0u8; n * 8];
        let got = self.mem.read(p, &mut buf) / 8;
        let mut functions = 0;
        for w in buf[..got * 8].chunks_exact(8) {
            let f = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
            if f == 0 {
                continue;
            }
            if !self.segment(f).is_some_and(|s| s.file && s.exec) {
                return false;
            }
            functions += 1;
            if functions == 2 {
                return true;
            }
        }
        false
    }

    fn segment(&self, p: u64) -> Option<Segment> {
        let i = self
            .segments
            .partition_point(|s| s.start <= p)
            .checked_sub(1)?;
        Some(self.segments[i]).filter(|s| p < s.end)
    }
}
