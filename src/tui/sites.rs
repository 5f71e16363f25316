//! The sites table's rows: sites grouped (by whole stack, or by top frame only),
//! their rates over the last seconds, filtered and sorted. Pure: fed with snapshots and
//! resolved frames, it never sees the target. A site allocates heap blocks, or makes
//! mappings (mmap, shmat): both kinds are rows, told apart by [`What`], so that a
//! program that leaks through mmap shows its site growing like a heap leak.

use super::snapshot::Snapshot;
use crate::event::StackId;
use crate::heap::SiteCounts;
use crate::symbols::Frame;
use std::collections::{HashMap, VecDeque};

/// Rates (allocs/s, growth) are measured over this many seconds of snapshots.
pub const RATE_WINDOW_SECS: f64 = 10.0;

/// What a site makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum What {
    /// Heap blocks (malloc, operator new...).
    Heap,
    /// Mappings (mmap, mremap, shmat): for these the blocks are mappings.
    Map,
}

impl What {
    pub fn label(self) -> &'static str {
        match self {
            What::Heap => "heap",
            What::Map => "mmap",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// One row per distinct allocation stack.
    Stack,
    /// One row per top frame (function, file:line): sites that differ only deeper in
    /// the stack are added up.
    TopFrame,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    LiveBytes,
    LiveBlocks,
    Allocs,
    AllocRate,
    Growth,
    Site,
}

impl SortKey {
    pub const ALL: [SortKey; 6] = [
        SortKey::LiveBytes,
        SortKey::LiveBlocks,
        SortKey::Allocs,
        SortKey::AllocRate,
        SortKey::Growth,
        SortKey::Site,
    ];

    pub fn next(self) -> SortKey {
        let i = Self::ALL.iter().position(|&k| k == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    pub fn title(self) -> &'static str {
        match self {
            SortKey::LiveBytes => "Live bytes",
            SortKey::LiveBlocks => "Blocks",
            SortKey::Allocs => "Allocs",
            SortKey::AllocRate => "Allocs/s",
            SortKey::Growth => "Growth/s",
            SortKey::Site => "Site",
        }
    }
}

/// One row of the table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub what: What,
    /// The stacks added up in this row (one when grouping by stack), largest first.
    pub stacks: Vec<StackId>,
    /// The top frame as `function file:line`, or its address until it is resolved.
    pub label: String,
    pub live_blocks: u64,
    pub live_bytes: u64,
    pub allocs: u64,
    /// Allocations per second over the last [`RATE_WINDOW_SECS`].
    pub alloc_rate: f64,
    /// Live bytes gained per second over the same window (negative: shrinking).
    pub growth: f64,
}

/// One site's counts over the last seconds.
#[derive(Debug, Default)]
struct History {
    /// (seconds since start, live bytes, allocs), oldest first.
    points: VecDeque<(f64, u64, u64)>,
}

impl History {
    fn push(&mut self, t: f64, c: SiteCounts) {
        self.points.push_back((t, c.live_bytes, c.allocs));
        // Keep one point at or before the window's start, so a rate always spans it.
        while self.points.len() > 2 && self.points[1].0 <= t - RATE_WINDOW_SECS {
            self.points.pop_front();
        }
    }

    /// (allocs per second, live bytes per second) between the oldest and newest point.
    fn rates(&self) -> (f64, f64) {
        match (self.points.front(), self.points.back()) {
            (Some(&(t0, b0, a0)), Some(&(t1, b1, a1))) if t1 > t0 => {
                let dt = t1 - t0;
                (
                    a1.saturating_sub(a0) as f64 / dt,
                    (b1 as f64 - b0 as f64) / dt,
                )
            }
            _ => (0.0, 0.0),
        }
    }
}

/// Every site's latest counts and recent history.
#[derive(Debug, Default)]
pub struct Sites {
    counts: HashMap<(What, StackId), SiteCounts>,
    history: HashMap<(What, StackId), History>,
}

impl Sites {
    pub fn update(&mut self, snap: &Snapshot) {
        self.update_what(What::Heap, snap.elapsed, &snap.sites);
    }

    /// The counts of the sites that make `what`, at `elapsed`.
    pub fn update_what(
        &mut self,
        what: What,
        elapsed: std::time::Duration,
        sites: &[super::snapshot::SiteSnapshot],
    ) {
        let t = elapsed.as_secs_f64();
        for s in sites {
            self.counts.insert((what, s.stack), s.counts);
            self.history
                .entry((what, s.stack))
                .or_default()
                .push(t, s.counts);
        }
    }

    pub fn clear(&mut self) {
        self.counts.clear();
        self.history.clear();
    }

    /// The rows to show. `top` gives a stack's resolved top frame, when known;
    /// `matches` says whether a stack passes the filter.
    pub fn rows(
        &self,
        grouping: Grouping,
        top: &dyn Fn(StackId) -> Option<Frame>,
        top_address: &dyn Fn(StackId) -> Option<u64>,
        matches: &dyn Fn(StackId) -> bool,
    ) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (&(what, stack), &c) in &self.counts {
            if c.allocs == 0 || !matches(stack) {
                continue;
            }
            let frame = top(stack);
            let label = match &frame {
                Some(f) => frame_label(f),
                None => top_address(stack)
                    .map(|a| format!("{a:#x}"))
                    .unwrap_or_else(|| "?".into()),
            };
            let (alloc_rate, growth) = self
                .history
                .get(&(what, stack))
                .map_or((0.0, 0.0), History::rates);
            let key = match grouping {
                Grouping::Stack => format!("{} {}", what.label(), stack.0),
                Grouping::TopFrame => format!("{} {label}", what.label()),
            };
            let i = *by_key.entry(key).or_insert_with(|| {
                rows.push(Row {
                    what,
                    stacks: Vec::new(),
                    label: label.clone(),
                    live_blocks: 0,
                    live_bytes: 0,
                    allocs: 0,
                    alloc_rate: 0.0,
                    growth: 0.0,
                });
                rows.len() - 1
            });
            let r = &mut rows[i];
            r.stacks.push(stack);
            r.live_blocks += c.live_blocks;
            r.live_bytes += c.live_bytes;
            r.allocs += c.allocs;
            r.alloc_rate += alloc_rate;
            r.growth += growth;
        }
        for r in &mut rows {
            let counts = &self.counts;
            let what = r.what;
            r.stacks.sort_by_key(|s| {
                (
                    std::cmp::Reverse(counts.get(&(what, *s)).map_or(0, |c| c.live_bytes)),
                    *s,
                )
            });
        }
        rows
    }
}

/// Sorts rows by `key`, largest first (the site name A to Z), `reverse` flipping it.
/// Ties keep a stable order (by first stack id) so rows do not jump between refreshes.
pub fn sort_rows(rows: &mut [Row], key: SortKey, reverse: bool) {
    let first = |r: &Row| r.stacks.first().copied();
    rows.sort_by(|a, b| {
        let by = match key {
            SortKey::LiveBytes => b.live_bytes.cmp(&a.live_bytes),
            SortKey::LiveBlocks => b.live_blocks.cmp(&a.live_blocks),
            SortKey::Allocs => b.allocs.cmp(&a.allocs),
            SortKey::AllocRate => b.alloc_rate.total_cmp(&a.alloc_rate),
            SortKey::Growth => b.growth.total_cmp(&a.growth),
            SortKey::Site => a.label.cmp(&b.label),
        };
        let by = if reverse { by.reverse() } else { by };
        by.then_with(|| (first(a), a.what).cmp(&(first(b), b.what)))
    });
}

/// `function file:line`, with the file's base name; what is unknown is left out.
pub fn frame_label(f: &Frame) -> String {
    let function = f
        .function
        .clone()
        .unwrap_or_else(|| format!("{:#x}", f.address));
    match (&f.file, f.line) {
        (Some(file), Some(line)) => format!("{function} {}:{line}", base_name(file)),
        (Some(file), None) => format!("{function} {}", base_name(file)),
        _ => match &f.object {
            Some(o) if f.function.is_none() => format!("{function} ({})", base_name(o)),
            _ => function,
        },
    }
}

pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::snapshot::{SiteSnapshot, TargetState};
    use std::time::Duration;

    fn snap(t: f64, sites: &[(u32, u64, u64, u64)]) -> Snapshot {
        Snapshot {
            elapsed: Duration::from_secs_f64(t),
            state: TargetState::Running,
            totals: Default::default(),
            errors: 0,
            sites: sites
                .iter()
                .map(|&(s, allocs, live_blocks, live_bytes)| SiteSnapshot {
                    stack: StackId(s),
                    counts: SiteCounts {
                        allocs,
                        live_blocks,
                        live_bytes,
                        ..Default::default()
                    },
                })
                .collect(),
            new_stacks: Vec::new(),
        }
    }

    fn frame(function: &str, file: &str, line: u32) -> Frame {
        Frame {
            function: Some(function.into()),
            file: Some(file.into()),
            line: Some(line),
            ..Frame::default()
        }
    }

    #[test]
    fn rates_span_the_last_window() {
        let mut s = Sites::default();
        for i in 0..=20 {
            // Site 0 grows 100 bytes and 2 allocs a second; site 1 filled up at once.
            s.update(&snap(i as f64, &[(0, 2 * i, i, 100 * i), (1, 5, 5, 500)]));
        }
        let rows = s.rows(Grouping::Stack, &|_| None, &|_| Some(0x10), &|_| true);
        let row = |id| rows.iter().find(|r| r.stacks == [StackId(id)]).unwrap();
        assert!((row(0).growth - 100.0).abs() < 1e-9, "{:?}", row(0));
        assert!((row(0).alloc_rate - 2.0).abs() < 1e-9);
        assert_eq!(row(1).growth, 0.0);
        assert_eq!(row(1).label, "0x10");
    }

    #[test]
    fn grouping_by_top_frame_adds_sites_up() {
        let mut s = Sites::default();
        s.update(&snap(0.0, &[(0, 1, 1, 10), (1, 2, 2, 40), (2, 1, 1, 5)]));
        let top = |id: StackId| match id.0 {
            0 | 1 => Some(frame("make", "/src/a.c", 3)),
            _ => Some(frame("other", "/src/b.c", 9)),
        };
        let mut rows = s.rows(Grouping::TopFrame, &top, &|_| None, &|_| true);
        sort_rows(&mut rows, SortKey::LiveBytes, false);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].label, "make a.c:3");
        assert_eq!((rows[0].live_blocks, rows[0].live_bytes), (3, 50));
        assert_eq!(rows[0].stacks, vec![StackId(1), StackId(0)]);
        let rows = s.rows(Grouping::Stack, &top, &|_| None, &|_| true);
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn mapping_sites_are_rows_of_their_own() {
        let mut s = Sites::default();
        s.update(&snap(0.0, &[(0, 1, 1, 64)]));
        let map = |live: u64| SiteSnapshot {
            stack: StackId(0),
            counts: SiteCounts {
                allocs: live,
                live_blocks: live,
                live_bytes: live << 20,
                ..Default::default()
            },
        };
        s.update_what(What::Map, Duration::from_secs(0), &[map(1)]);
        s.update_what(What::Map, Duration::from_secs(2), &[map(5)]);
        let top = |_| Some(frame("same", "/a.c", 1));
        for g in [Grouping::Stack, Grouping::TopFrame] {
            let mut rows = s.rows(g, &top, &|_| None, &|_| true);
            sort_rows(&mut rows, SortKey::LiveBytes, false);
            assert_eq!(rows.len(), 2, "{g:?}");
            assert_eq!((rows[0].what, rows[0].live_blocks), (What::Map, 5));
            assert_eq!(rows[0].growth, (2 << 20) as f64);
            assert_eq!((rows[1].what, rows[1].live_bytes), (What::Heap, 64));
        }
    }

    #[test]
    fn sorting_by_each_column() {
        let mut s = Sites::default();
        s.update(&snap(0.0, &[(0, 9, 1, 10), (1, 1, 3, 40)]));
        let top = |id: StackId| Some(frame(if id.0 == 0 { "b" } else { "a" }, "/x.c", 1));
        let mut rows = s.rows(Grouping::Stack, &top, &|_| None, &|_| true);
        let order = |rows: &[Row]| rows.iter().map(|r| r.stacks[0].0).collect::<Vec<_>>();
        sort_rows(&mut rows, SortKey::LiveBytes, false);
        assert_eq!(order(&rows), [1, 0]);
        sort_rows(&mut rows, SortKey::Allocs, false);
        assert_eq!(order(&rows), [0, 1]);
        sort_rows(&mut rows, SortKey::Allocs, true);
        assert_eq!(order(&rows), [1, 0]);
        sort_rows(&mut rows, SortKey::Site, false);
        assert_eq!(order(&rows), [1, 0], "a before b");
        assert_eq!(SortKey::Site.next(), SortKey::LiveBytes);
    }

    #[test]
    fn labels() {
        assert_eq!(
            frame_label(&frame("main", "/src/leak.c", 12)),
            "main leak.c:12"
        );
        let bare = Frame {
            address: 0x1234,
            object: Some("/usr/lib/libx.so".into()),
            ..Frame::default()
        };
        assert_eq!(frame_label(&bare), "0x1234 (libx.so)");
    }
}
