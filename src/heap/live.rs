//! The live blocks, by address.
//!
//! Every allocator call looks a block up by its exact address: a hash map, one
//! probe. Only a free of a pointer that is not a block's start asks which block it
//! points into (an invalid free, or in attach mode a free of a block from before the
//! trace, where the question comes with every such free): for that an ordered index
//! of the starts is kept in attach mode, and a scan of the blocks is made otherwise
//! (an error, rare).

use super::Block;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Live {
    blocks: FxHashMap<u64, Block>,
    /// Start to size, in address order (attach mode).
    order: Option<BTreeMap<u64, u64>>,
}

impl Live {
    /// Live blocks with an ordered index (for the many interior questions of attach
    /// mode), or without.
    pub fn new(ordered: bool) -> Live {
        Live {
            blocks: FxHashMap::default(),
            order: ordered.then(BTreeMap::new),
        }
    }

    pub fn get(&self, ptr: &u64) -> Option<&Block> {
        self.blocks.get(ptr)
    }

    pub fn get_mut(&mut self, ptr: &u64) -> Option<&mut Block> {
        self.blocks.get_mut(ptr)
    }

    pub fn contains_key(&self, ptr: &u64) -> bool {
        self.blocks.contains_key(ptr)
    }

    /// Puts `b` at `ptr`; gives back the block that was there, if any.
    pub fn insert(&mut self, ptr: u64, b: Block) -> Option<Block> {
        if let Some(o) = &mut self.order {
            o.insert(ptr, b.size);
        }
        self.blocks.insert(ptr, b)
    }

    pub fn remove(&mut self, ptr: &u64) -> Option<Block> {
        let b = self.blocks.remove(ptr)?;
        if let Some(o) = &mut self.order {
            o.remove(ptr);
        }
        Some(b)
    }

    /// Every block, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Block)> {
        self.blocks.iter()
    }

    /// The block `ptr` points into, not at its start.
    pub fn containing(&self, ptr: u64) -> Option<(u64, &Block)> {
        let inside = |start: u64, size: u64| start < ptr && ptr < start.saturating_add(size.max(1));
        match &self.order {
            Some(o) => {
                let (&start, &size) = o.range(..ptr).next_back()?;
                inside(start, size).then(|| (start, &self.blocks[&start]))
            }
            None => self
                .blocks
                .iter()
                .find(|(&s, b)| inside(s, b.size))
                .map(|(&s, b)| (s, b)),
        }
    }
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
}
