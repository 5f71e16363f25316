//! The live blocks, by address.
//!
//! Every allocator call looks a block up by its exact address: a hash table, one
//! probe. Only a free of a pointer that is not a block's start asks which block it
//! points into (an invalid free, or in attach mode a free of a block from before the
//! trace, where the question comes with every such free): for that an ordered index
//! of the starts is kept in attach mode, and a scan of the blocks is made otherwise
//! (an error, rare).
//!
//! The table ([`Table`], also the heap's table of freed blocks) is memtrace's own,
//! open addressing with linear probing, so that the place of an address can be
//! loaded ahead ([`Table::prefetch`]): with a program's hundreds of thousands of
//! blocks it is far bigger than the caches, and a look-up that waits for memory is
//! most of an event's cost. The addresses are kept apart from the blocks, eight to
//! a cache line, so that a probe past the first slot costs no more memory reads.

use super::Block;
use std::collections::BTreeMap;

/// At most this share of the slots is used (of 1024) before the table grows.
const MAX_LOAD: usize = 820;
const MIN_SLOTS: usize = 16;

/// The slot an address starts probing at: the top bits of a multiplicative hash
/// (the low bits of addresses are alike, aligned).
fn home(ptr: u64, mask: usize) -> usize {
    let bits = (mask + 1).trailing_zeros();
    (ptr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
}

/// Tables this big (bytes) are asked for huge pages: one of 2 MiB never gets one (an
/// allocation starts a little past a page boundary, so no aligned 2 MiB lies inside).
const HUGE_FROM: usize = 4 << 20;

/// `n` copies of `v`, for a table's slots: a big table is probed at random, so its
/// pages are asked to be huge ones (before they are first written: see
/// [`crate::ptrace::advise_huge_pages`]).
fn table_vec<T: Copy>(n: usize, v: T) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(n);
    let bytes = n.saturating_mul(std::mem::size_of::<T>());
    if bytes >= HUGE_FROM {
        crate::ptrace::advise_huge_pages(out.as_ptr().cast(), bytes);
    }
    out.resize(n, v);
    out
}

/// A hash table from address to `V`, open addressing with linear probing, whose
/// slots can be loaded ahead ([`Table::prefetch`]).
#[derive(Debug)]
pub struct Table<V> {
    /// Slot addresses (0: empty); `values[i]` is the value of `starts[i]`.
    starts: Vec<u64>,
    values: Vec<V>,
    len: usize,
    /// The value at address 0 (a slot cannot hold it).
    zero: Option<V>,
}

/// What an empty slot of a [`Table`] holds.
pub trait Vacant: Copy {
    const VACANT: Self;
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Table {
            starts: Vec::new(),
            values: Vec::new(),
            len: 0,
            zero: None,
        }
    }
}

impl<V: Vacant> Table<V> {
    fn mask(&self) -> usize {
        self.starts.len().wrapping_sub(1)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len + usize::from(self.zero.is_some())
    }

    /// The slot holding `ptr` (not 0), if any.
    fn find(&self, ptr: u64) -> Option<usize> {
        if self.starts.is_empty() {
            return None;
        }
        let mask = self.mask();
        let mut i = home(ptr, mask);
        loop {
            match self.starts[i] {
                0 => return None,
                s if s == ptr => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// Starts loading the slot `ptr` would be in: a look-up of it soon finds it in
    /// the cache.
    pub fn prefetch(&self, ptr: u64) {
        if self.starts.is_empty() {
            return;
        }
        let i = home(ptr, self.mask());
        crate::ptrace::prefetch(&self.starts[i]);
        let v: *const V = &self.values[i];
        crate::ptrace::prefetch(v);
        // A value may straddle two cache lines.
        crate::ptrace::prefetch(v.cast::<u8>().wrapping_add(std::mem::size_of::<V>() - 1));
    }

    pub fn get(&self, ptr: &u64) -> Option<&V> {
        if *ptr == 0 {
            return self.zero.as_ref();
        }
        self.find(*ptr).map(|i| &self.values[i])
    }

    pub fn get_mut(&mut self, ptr: &u64) -> Option<&mut V> {
        if *ptr == 0 {
            return self.zero.as_mut();
        }
        self.find(*ptr).map(|i| &mut self.values[i])
    }

    pub fn contains_key(&self, ptr: &u64) -> bool {
        self.get(ptr).is_some()
    }

    /// Puts `v` at `ptr`; gives back the value that was there, if any.
    pub fn insert(&mut self, ptr: u64, v: V) -> Option<V> {
        if ptr == 0 {
            return self.zero.replace(v);
        }
        if (self.len + 1) * 1024 > self.starts.len() * MAX_LOAD {
            self.grow();
        }
        let mask = self.mask();
        let mut i = home(ptr, mask);
        loop {
            match self.starts[i] {
                0 => {
                    self.starts[i] = ptr;
                    self.values[i] = v;
                    self.len += 1;
                    return None;
                }
                s if s == ptr => return Some(std::mem::replace(&mut self.values[i], v)),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn grow(&mut self) {
        let slots = (self.starts.len() * 2).max(MIN_SLOTS);
        let starts = std::mem::replace(&mut self.starts, table_vec(slots, 0));
        let values = std::mem::replace(&mut self.values, table_vec(slots, V::VACANT));
        let mask = slots - 1;
        for (s, v) in starts.into_iter().zip(values).filter(|&(s, _)| s != 0) {
            let mut i = home(s, mask);
            while self.starts[i] != 0 {
                i = (i + 1) & mask;
            }
            self.starts[i] = s;
            self.values[i] = v;
        }
    }

    pub fn remove(&mut self, ptr: &u64) -> Option<V> {
        if *ptr == 0 {
            return self.zero.take();
        }
        let i = self.find(*ptr)?;
        let v = self.values[i];
        self.vacate(i);
        self.len -= 1;
        Some(v)
    }

    /// Empties slot `i`, moving back the entries after it that probed past it, so
    /// that every entry stays reachable from its home slot without gaps.
    fn vacate(&mut self, mut i: usize) {
        let mask = self.mask();
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let s = self.starts[j];
            if s == 0 {
                break;
            }
            let k = home(s, mask);
            // The entry at j may move to i only if its home is not in (i, j].
            let stays = if i <= j {
                i < k && k <= j
            } else {
                i < k || k <= j
            };
            if !stays {
                self.starts[i] = s;
                self.values[i] = self.values[j];
                i = j;
            }
        }
        self.starts[i] = 0;
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &V)> {
        self.zero.as_ref().map(|v| (&0, v)).into_iter().chain(
            self.starts
                .iter()
                .zip(&self.values)
                .filter(|&(&s, _)| s != 0),
        )
    }
}

#[derive(Debug, Default)]
pub struct Live {
    table: Table<Block>,
    /// Start to size, in address order (attach mode).
    order: Option<BTreeMap<u64, u64>>,
}

impl Live {
    /// Live blocks with an ordered index (for the many interior questions of attach
    /// mode), or without.
    pub fn new(ordered: bool) -> Live {
        Live {
            order: ordered.then(BTreeMap::new),
            ..Live::default()
        }
    }

    /// Starts loading the slot `ptr` would be in: a look-up of it soon finds it in
    /// the cache.
    pub fn prefetch(&self, ptr: u64) {
        self.table.prefetch(ptr);
    }

    pub fn get(&self, ptr: &u64) -> Option<&Block> {
        self.table.get(ptr)
    }

    pub fn get_mut(&mut self, ptr: &u64) -> Option<&mut Block> {
        self.table.get_mut(ptr)
    }

    pub fn contains_key(&self, ptr: &u64) -> bool {
        self.table.contains_key(ptr)
    }

    /// Puts `b` at `ptr`; gives back the block that was there, if any.
    pub fn insert(&mut self, ptr: u64, b: Block) -> Option<Block> {
        if let Some(o) = &mut self.order {
            o.insert(ptr, b.size);
        }
        self.table.insert(ptr, b)
    }

    pub fn remove(&mut self, ptr: &u64) -> Option<Block> {
        let b = self.table.remove(ptr)?;
        if let Some(o) = &mut self.order {
            o.remove(ptr);
        }
        Some(b)
    }

    /// Every block, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Block)> {
        self.table.iter()
    }

    /// The block `ptr` points into, not at its start.
    pub fn containing(&self, ptr: u64) -> Option<(u64, &Block)> {
        let inside = |start: u64, size: u64| start < ptr && ptr < start.saturating_add(size.max(1));
        match &self.order {
            Some(o) => {
                let (&start, &size) = o.range(..ptr).next_back()?;
                if !inside(start, size) {
                    return None;
                }
                self.get(&start).map(|b| (start, b))
            }
            None => self
                .iter()
                .find(|(&s, b)| inside(s, b.size))
                .map(|(&s, b)| (s, b)),
        }
    }
}

impl Vacant for Block {
    const VACANT: Block = Block {
        size: 0,
        stack: crate::event::StackId(0),
        kind: crate::event::AllocKind::Malloc,
        tid: 0,
        seq: 0,
        leak: None,
        indirect_bytes: 0,
        at_ns: 0,
        func: crate::hooks::HookFn::Malloc,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AllocKind, StackId};
    use crate::hooks::HookFn;

    fn block(size: u64) -> Block {
        Block {
            size,
            stack: StackId(0),
            kind: AllocKind::Malloc,
            tid: 1,
            seq: 0,
            leak: None,
            indirect_bytes: 0,
            at_ns: 0,
            func: HookFn::Malloc,
        }
    }

    #[test]
    fn interior_pointers_are_found_with_or_without_the_index() {
        for ordered in [false, true] {
            let mut l = Live::new(ordered);
            l.insert(0x1000, block(0x20));
            l.insert(0x2000, block(0x10));
            assert_eq!(l.containing(0x1008).map(|(s, _)| s), Some(0x1000));
            assert_eq!(l.containing(0x1000), None, "a start is no interior");
            assert_eq!(l.containing(0x1020), None, "past the end");
            assert_eq!(l.containing(0x2001).map(|(s, _)| s), Some(0x2000));
            assert!(l.remove(&0x1000).is_some());
            assert_eq!(l.containing(0x1008), None);
            assert_eq!(l.iter().count(), 1);
        }
    }

    #[test]
    fn the_table_agrees_with_a_map_through_inserts_removals_and_growth() {
        // Addresses that crowd a few home slots, freed in another order than made:
        // removal must keep every entry reachable past the emptied slots.
        let mut l = Live::new(false);
        let mut model = std::collections::HashMap::new();
        let mut x: u64 = 1;
        for round in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ptr = (x % 4096) * 16;
            l.prefetch(ptr);
            if x % 3 == 0 {
                assert_eq!(l.remove(&ptr), model.remove(&ptr), "round {round}");
            } else {
                let b = block(round);
                assert_eq!(l.insert(ptr, b), model.insert(ptr, b), "round {round}");
            }
            if round % 997 == 0 {
                for (p, b) in &model {
                    assert_eq!(l.get(p), Some(b));
                }
                assert_eq!(l.iter().count(), model.len());
            }
        }
        let mut all: Vec<u64> = l.iter().map(|(&p, _)| p).collect();
        all.sort_unstable();
        let mut want: Vec<u64> = model.keys().copied().collect();
        want.sort_unstable();
        assert_eq!(all, want);
        for p in want {
            assert!(l.remove(&p).is_some());
        }
        assert_eq!(l.iter().count(), 0);
        assert_eq!(l.get(&16), None);
    }

    /// The flags /proc/self/smaps gives the mapping that holds `addr`.
    fn vm_flags(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let mut inside = false;
        for line in smaps.lines() {
            let range = line.split_whitespace().next().unwrap_or("");
            if let Some((lo, hi)) = range.split_once('-') {
                if let (Ok(lo), Ok(hi)) =
                    (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16))
                {
                    inside = lo <= addr && addr < hi;
                    continue;
                }
            }
            if inside {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.to_string());
                }
            }
        }
        None
    }

    #[test]
    fn a_big_table_asks_for_huge_pages() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            eprintln!("this kernel has no transparent huge pages: nothing to ask for");
            return;
        }
        let big = table_vec(HUGE_FROM / 8 * 2, 0u64);
        assert!(big.iter().all(|&v| v == 0));
        // A page well inside it: the advice covers whole pages only.
        let flags = vm_flags(big.as_ptr() as usize + HUGE_FROM).expect("the table is mapped");
        assert!(
            flags.split_whitespace().any(|f| f == "hg"),
            "flags: {flags}"
        );
    }
}
