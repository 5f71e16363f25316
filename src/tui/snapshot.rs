//! What the tracer side sends the live view a few times a second: totals, the counts of
//! every allocation site, and the stacks it has not sent before.
//!
//! The heap model keeps per-site counts up to date event by event ([`Heap::sites`]), so
//! a snapshot costs one pass over the sites, never over the live blocks. Stacks are
//! append-only in the [`StackTable`], so each is sent once, as raw addresses with the
//! module generation they were taken in: the UI side symbolizes them itself, off the
//! tracer's thread.

use crate::event::{StackId, StackTable};
use crate::heap::{Heap, SiteCounts, Totals};
use crate::mappings::{MapTotals, Mappings};
use std::time::Duration;

/// What the traced program is doing, as the header shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetState {
    Running,
    /// Stopped by the user (`p`).
    Paused,
    /// The program ended: "exited with status 0", "killed by SIGSEGV".
    Ended(String),
    /// memtrace let go of the program; it runs on untraced.
    Detached,
}

impl TargetState {
    pub fn label(&self) -> &str {
        match self {
            TargetState::Running => "running",
            TargetState::Paused => "paused",
            TargetState::Ended(how) => how,
            TargetState::Detached => "detached",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteSnapshot {
    pub stack: StackId,
    pub counts: SiteCounts,
}

/// A stack the UI has not seen yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStack {
    pub id: StackId,
    pub generation: u32,
    /// Return addresses, innermost (the allocator's caller) first.
    pub frames: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Time since the trace started.
    pub elapsed: Duration,
    pub state: TargetState,
    pub totals: Totals,
    /// Heap errors seen (alike ones counted each time).
    pub errors: u64,
    pub sites: Vec<SiteSnapshot>,
    pub new_stacks: Vec<NewStack>,
}

/// The mapping sites and the mapping calls counted, sent with each snapshot (the
/// stacks go with the snapshot's). A site's counts say mappings where a heap
/// site's say blocks: live mappings, their bytes, and the mappings it made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapSnapshot {
    pub elapsed: Duration,
    pub totals: MapTotals,
    pub sites: Vec<SiteSnapshot>,
}

impl MapSnapshot {
    pub fn of(m: &Mappings, elapsed: Duration) -> MapSnapshot {
        MapSnapshot {
            elapsed,
            totals: m.totals(),
            sites: m
                .sites()
                .map(|(stack, c)| SiteSnapshot {
                    stack,
                    counts: SiteCounts {
                        allocs: c.maps,
                        bytes: c.bytes,
                        live_blocks: c.live,
                        live_bytes: c.live_bytes,
                    },
                })
                .collect(),
        }
    }
}

/// Makes snapshots, remembering which stacks were already sent.
#[derive(Debug, Default)]
pub struct Snapshotter {
    stacks_sent: usize,
}

impl Snapshotter {
    pub fn take(
        &mut self,
        heap: &Heap,
        stacks: &StackTable,
        elapsed: Duration,
        state: TargetState,
    ) -> Snapshot {
        let new_stacks = (self.stacks_sent..stacks.len())
            .map(|i| {
                let id = StackId(i as u32);
                NewStack {
                    id,
                    generation: stacks.generation(id),
                    frames: stacks.get(id).to_vec(),
                }
            })
            .collect();
        self.stacks_sent = self.stacks_sent.max(stacks.len());
        Snapshot {
            elapsed,
            state,
            totals: heap.totals(),
            errors: heap.errors().iter().map(|e| e.count).sum(),
            // Blocks freed before their stack was ever needed have no site.
            sites: heap
                .sites()
                .filter(|(stack, _)| *stack != crate::recorder::NOT_UNWOUND)
                .map(|(stack, counts)| SiteSnapshot { stack, counts })
                .collect(),
            new_stacks,
        }
    }

    /// The program executed a new image: its stack table starts again from nothing.
    pub fn reset(&mut self) {
        self.stacks_sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AllocKind, Event};
    use crate::hooks::HookFn;

    #[test]
    fn stacks_are_sent_once_and_sites_every_time() {
        let mut stacks = StackTable::new();
        let mut heap = Heap::new();
        let a = stacks.intern(&[0x10, 0x20], false, 0);
        heap.apply(&Event::Alloc {
            tid: 1,
            kind: AllocKind::Malloc,
            ptr: 0x1000,
            size: 30,
            stack: a,
            func: HookFn::Malloc,
        });
        let mut s = Snapshotter::default();
        let first = s.take(&heap, &stacks, Duration::ZERO, TargetState::Running);
        assert_eq!(first.new_stacks.len(), 1);
        assert_eq!(first.new_stacks[0].frames, vec![0x10, 0x20]);
        assert_eq!(first.sites.len(), 1);
        assert_eq!(first.sites[0].counts.live_bytes, 30);
        let b = stacks.intern(&[0x30], false, 1);
        let second = s.take(&heap, &stacks, Duration::ZERO, TargetState::Running);
        assert_eq!(second.new_stacks.len(), 1);
        assert_eq!(
            (second.new_stacks[0].id, second.new_stacks[0].generation),
            (b, 1)
        );
        assert_eq!(
            second.sites.len(),
            1,
            "a stack with no allocation is no site"
        );
        assert_eq!(second.totals.live_blocks, 1);
    }
}
