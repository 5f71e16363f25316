//! The tracer side of the live view: keeps the heap model and sends the UI a snapshot
//! at most every [`SNAPSHOT_EVERY`], so the trace pays one clock read per event and
//! a snapshot a few times a second, whatever the allocation rate.

use super::run::{UiEvent, Update};
use super::snapshot::{MapSnapshot, Snapshotter, TargetState};
use crate::event::{Event, StackTable};
use crate::heap::Heap;
use crate::mappings::Tracked;
use crate::maps::Module;
use crate::tracer::{Scan, Sink};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);
/// A snapshot at least this often even when nothing changed.
const HEARTBEAT: Duration = Duration::from_secs(1);

pub struct Feed {
    pub heap: Heap,
    pub mappings: Tracked,
    tx: Sender<UiEvent>,
    snapshots: Snapshotter,
    started: Instant,
    /// `started`'s clock, cheap enough for every event.
    clock: crate::clock::EventClock,
    last: Option<Instant>,
    /// Something changed since the last snapshot.
    dirty: bool,
    pub state: TargetState,
    /// The last reachability scan's figures, and why none could be made at the end.
    pub scan: Option<crate::tracer::ScanStats>,
    pub scan_error: Option<String>,
    /// The traced process (for the census), once its objects are known.
    pid: i32,
}

impl Feed {
    /// `started`: when the trace began (blocks are stamped with the time since).
    pub fn new(tx: Sender<UiEvent>, started: Instant) -> Feed {
        Feed {
            heap: Heap::new(),
            mappings: Tracked::new(false),
            tx,
            snapshots: Snapshotter::default(),
            started,
            clock: crate::clock::EventClock::new(started),
            last: None,
            dirty: true,
            state: TargetState::Running,
            scan: None,
            scan_error: None,
            pid: 0,
        }
    }

    pub fn event(&mut self, ev: &Event) {
        if *ev == Event::Exec {
            self.snapshots.reset();
            self.scan = None;
            self.send(Update::Exec);
        }
        let now = self.clock.now_ns();
        self.heap.set_now(now);
        self.heap.apply(ev);
        self.mappings.event(ev, now);
        self.dirty = true;
    }

    /// The process ran before the trace (attach): its older blocks and mappings
    /// are unknown, their frees and unmaps counted apart.
    pub fn attached(mut self) -> Feed {
        self.heap = Heap::attached();
        self.mappings = Tracked::new(true);
        self
    }

    pub fn modules(&mut self, pid: i32, modules: &[Module], generation: u32) {
        self.pid = pid;
        self.send(Update::Modules {
            pid,
            modules: modules.to_vec(),
            generation,
        });
    }

    /// Sends a snapshot if one is due (or `force`): call it at every stop and tick.
    pub fn tick(&mut self, stacks: &StackTable, force: bool) {
        let now = Instant::now();
        let send = force
            || match self.last.map(|t| now - t) {
                None => true,
                // Unchanged: still now and then, so that rates fall back to zero.
                Some(d) => (self.dirty && d >= SNAPSHOT_EVERY) || d >= HEARTBEAT,
            };
        if !send {
            return;
        }
        self.last = Some(now);
        self.dirty = false;
        let elapsed = now - self.started;
        let snap = self
            .snapshots
            .take(&self.heap, stacks, elapsed, self.state.clone());
        self.send(Update::Snapshot(snap));
        self.send(Update::Mappings(MapSnapshot::of(
            &self.mappings.model,
            elapsed,
        )));
    }

    /// The process's memory, read by the tracer (for the mappings view, every
    /// second while it is shown; at every scan): kept for the report, and sent to
    /// the view as a census, with the bytes live malloc blocks hold in the heap.
    pub fn memory(&mut self, m: crate::procmem::ProcMemory) {
        let blocks = self.heap.live_spans();
        let census = crate::census::census(self.pid, &m, Some(&blocks));
        self.mappings.memory(m);
        let at = self.started.elapsed();
        self.send(Update::Census(Box::new((at, census))));
    }

    pub fn set_state(&mut self, state: TargetState, stacks: &StackTable) {
        self.state = state;
        self.tick(stacks, true);
    }

    /// Tells the view what the last scan found, by kind.
    pub fn send_leak_check(&mut self) {
        use crate::leakcheck::Kind;
        let mut kinds = [(0u64, 0u64); 4];
        for g in self.heap.leak_groups(crate::heap::AgeQuery::default()) {
            let i = match g.kind {
                Some(Kind::Definite) => 0,
                Some(Kind::Indirect) => 1,
                Some(Kind::Possible) => 2,
                Some(Kind::Reachable) => 3,
                None => continue,
            };
            kinds[i].0 += g.blocks;
            kinds[i].1 += g.bytes;
        }
        let at = self.started.elapsed();
        self.send(Update::LeakCheck(super::run::LeakCheck { at, kinds }));
    }

    fn send(&self, u: Update) {
        // A UI that has gone (the user quit) just stops listening.
        let _ = self.tx.send(UiEvent::Update(u));
    }
}

impl Sink for Feed {
    fn event(&mut self, ev: Event) {
        Feed::event(self, &ev);
    }
    fn modules(&mut self, pid: i32, modules: &[Module], generation: u32) {
        Feed::modules(self, pid, modules, generation);
    }
    fn tick(&mut self, stacks: &StackTable) {
        Feed::tick(self, stacks, false);
    }
    fn paused(&mut self, paused: bool, stacks: &StackTable) {
        let state = if paused {
            TargetState::Paused
        } else {
            TargetState::Running
        };
        self.set_state(state, stacks);
    }
    fn live_blocks(&mut self) -> Vec<(u64, u64)> {
        self.heap.live_spans()
    }
    fn classified(&mut self, scan: &Scan) {
        self.heap
            .classify(&scan.blocks, &scan.kinds, &scan.indirect_bytes);
        self.scan = Some(scan.stats);
        self.send_leak_check();
    }
    fn check_free(&self, ev: &Event) -> crate::recorder::FreeCheck {
        self.heap.check_free(ev)
    }
    fn freed_tag(&self, ptr: u64) -> Option<u64> {
        self.heap.freed_tag(ptr)
    }
    fn prefetch(&self, ev: &Event) {
        self.heap.prefetch(ev);
    }
    fn memory(&mut self, m: crate::procmem::ProcMemory) {
        Feed::memory(self, m);
    }
    fn amend_freed(
        &mut self,
        ptr: u64,
        alloc: Option<crate::event::StackId>,
        free: Option<crate::event::StackId>,
    ) {
        self.heap.amend_freed(ptr, alloc, free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::AllocKind;
    use crate::hooks::HookFn;

    #[test]
    fn snapshots_are_rate_limited_and_forced_at_the_end() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut feed = Feed::new(tx, Instant::now());
        let mut stacks = StackTable::new();
        let s = stacks.intern(&[0x10], false, 0);
        for i in 0..1000u64 {
            feed.event(&Event::Alloc {
                tid: 1,
                kind: AllocKind::Malloc,
                ptr: 0x1000 + 16 * i,
                size: 8,
                stack: s,
                func: HookFn::Malloc,
            });
            feed.tick(&stacks, false);
        }
        feed.set_state(TargetState::Ended("exited with status 0".into()), &stacks);
        let updates: Vec<Update> = rx
            .try_iter()
            .filter_map(|e| match e {
                UiEvent::Update(u) => Some(u),
                _ => None,
            })
            .collect();
        let snaps: Vec<_> = updates
            .iter()
            .filter_map(|u| match u {
                Update::Snapshot(s) => Some(s),
                _ => None,
            })
            .collect();
        assert!(snaps.len() <= 3, "{} snapshots for a burst", snaps.len());
        let last = snaps.last().expect("a final snapshot");
        assert_eq!(last.totals.live_blocks, 1000);
        assert_eq!(
            last.state,
            TargetState::Ended("exited with status 0".into())
        );
    }
}
