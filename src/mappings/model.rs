//! The live mappings the program made: ranges by address, each with the call that
//! made it. Fed with [`MapCall`]s only; knows nothing of processes.
//!
//! What the kernel does, the model does: a partial munmap or mprotect splits a
//! mapping (pieces of one call merge again when their protections agree, as the
//! kernel's areas do), mremap moves, grows or shrinks it, and a mapping made over
//! an existing one (MAP_FIXED) replaces what it covers. Lengths are rounded up to
//! pages, as the kernel rounds them. A call of the C library's own (`internal`)
//! changes what is mapped but makes nothing the program's.

use crate::event::{DescKind, MapCall, MapSource, StackId, Tid};
use crate::hooks::HookFn;
use rustc_hash::FxHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const PAGE: u64 = 4096;
/// mremap's flags (linux/mman.h).
const MREMAP_DONTUNMAP: u32 = 4;

/// One live range of a mapping the program made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub len: u64,
    pub prot: u32,
    /// mmap's flags (MAP_SHARED or MAP_PRIVATE...).
    pub flags: u32,
    /// None: mremap of a range memtrace never saw mapped.
    pub source: Option<MapSource>,
    /// What made the descriptor it maps, when memtrace saw it.
    pub desc: Option<DescKind>,
    /// File offset of `start`.
    pub offset: u64,
    pub stack: StackId,
    /// The function that made it (mmap, shmat; mremap for a range not seen before).
    pub func: HookFn,
    /// Which call made it: the pieces of one mapping share it.
    pub seq: u64,
    /// When: nanoseconds since the trace began.
    pub at_ns: u64,
}

impl Live {
    /// The protection as `/proc/PID/maps` spells it: `rw-p`, `r-xs`.
    pub fn perms(&self) -> String {
        let p = self.prot as i32;
        let flag = |bit: i32, c: char| if p & bit != 0 { c } else { '-' };
        let shared = self.flags & libc::MAP_SHARED as u32 != 0;
        [
            flag(libc::PROT_READ, 'r'),
            flag(libc::PROT_WRITE, 'w'),
            flag(libc::PROT_EXEC, 'x'),
            if shared { 's' } else { 'p' },
        ]
        .iter()
        .collect()
    }
}

/// The trace's mapping calls, counted (the report's `mapping_totals`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MapTotals {
    /// Mappings the program made (mmap, shmat), and their bytes.
    pub maps: u64,
    pub bytes_mapped: u64,
    /// munmap and shmdt calls of the program that released tracked memory.
    pub unmaps: u64,
    /// mremap calls that moved, grew or shrank a tracked mapping.
    pub remaps: u64,
    /// mprotect calls that changed a tracked mapping.
    pub protects: u64,
    /// Live at the end, and the most bytes ever live.
    pub live_mappings: u64,
    pub live_bytes: u64,
    pub peak_live_bytes: u64,
    /// munmap, shmdt or mremap by the program of memory memtrace did not see it map
    /// (attach: mappings from before; else the loader's, or nothing at all).
    pub unmaps_of_unknown: u64,
    /// Mapping calls of the C library's own (thread stacks, locale files, free's
    /// munmap of a large block): not the program's.
    pub internal_calls: u64,
    /// memfd_create, shm_open and shm_unlink calls.
    pub memfds: u64,
    pub shm_opens: u64,
    pub shm_unlinks: u64,
}

/// What one stack (a mapping site) has mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapSite {
    pub maps: u64,
    pub bytes: u64,
    pub live: u64,
    pub live_bytes: u64,
}

/// An mremap in flight: the pieces of its old range, out of the live set.
#[derive(Debug)]
struct Remapping {
    old: u64,
    pieces: Vec<(u64, Live)>,
}

#[derive(Debug, Default)]
pub struct Mappings {
    pub(super) live: BTreeMap<u64, Live>,
    remaps: HashMap<Tid, Remapping>,
    /// Descriptors memfd_create and shm_open returned (no close is seen: a hint only;
    /// what a mapping maps is read from the kernel while it lives).
    fds: HashMap<i32, DescKind>,
    /// Attach: what was mapped before is unknown.
    unknown_history: bool,
    pub(super) totals: MapTotals,
    pub(super) sites: HashMap<StackId, MapSite>,
    seq: u64,
    now_ns: u64,
}

/// `len` rounded up to whole pages of `page` bytes.
fn pages(len: u64, page: u64) -> u64 {
    len.checked_next_multiple_of(page).unwrap_or(!(page - 1))
}

/// The page size of an mmap: a huge page's with MAP_HUGETLB (its log2 in the
/// flags' top bits, 2 MiB by default).
fn page_of(flags: u32) -> u64 {
    if flags & libc::MAP_HUGETLB as u32 == 0 {
        return PAGE;
    }
    match (flags >> libc::MAP_HUGE_SHIFT) & 0x3f {
        0 => 2 << 20,
        shift => 1 << shift,
    }
}

impl Mappings {
    pub fn new() -> Mappings {
        Mappings::default()
    }

    /// Mappings from before the trace are unknown (attach).
    pub fn attached() -> Mappings {
        Mappings {
            unknown_history: true,
            ..Mappings::default()
        }
    }

    pub fn set_now(&mut self, ns: u64) {
        self.now_ns = ns;
    }

    pub fn totals(&self) -> MapTotals {
        self.totals
    }

    pub fn unknown_history(&self) -> bool {
        self.unknown_history
    }

    /// Every live range, by address.
    pub fn live(&self) -> impl Iterator<Item = (u64, &Live)> {
        self.live.iter().map(|(&s, l)| (s, l))
    }

    /// Every mapping stack seen, with what it mapped.
    pub fn sites(&self) -> impl Iterator<Item = (StackId, MapSite)> + '_ {
        self.sites.iter().map(|(&s, &c)| (s, c))
    }

    /// The program executed a new image: its mappings are gone.
    pub fn exec(&mut self) {
        *self = Mappings {
            now_ns: self.now_ns,
            ..Mappings::new()
        };
    }

    /// mremaps still in flight at the end of the trace: their old ranges were never
    /// released.
    pub fn end_of_trace(&mut self) {
        for (_, r) in std::mem::take(&mut self.remaps) {
            for (s, l) in r.pieces {
                self.insert(s, l);
            }
        }
    }

    pub fn apply(&mut self, call: &MapCall) {
        match *call {
            MapCall::Map {
                addr,
                len,
                prot,
                flags,
                source,
                offset,
                stack,
                func,
                internal,
                ..
            } => {
                // shmat's size is the segment's: a page when it could not be known.
                let len = pages(len.max(1), page_of(flags));
                let end = addr.saturating_add(len);
                // Whatever was there is gone: MAP_FIXED replaced it, or its unmap
                // was not seen.
                self.cut(addr, end);
                if internal {
                    self.totals.internal_calls += 1;
                    return;
                }
                let desc = match source {
                    MapSource::Fd(fd) => self.fds.get(&fd).copied(),
                    _ => None,
                };
                self.seq += 1;
                let live = Live {
                    len,
                    prot,
                    flags,
                    source: Some(source),
                    desc,
                    offset,
                    stack,
                    func,
                    seq: self.seq,
                    at_ns: self.now_ns,
                };
                self.made(stack, len);
                self.insert(addr, live);
            }
            MapCall::Unmap {
                addr,
                len,
                internal,
                ..
            } => {
                if addr % PAGE != 0 || len == 0 {
                    return; // EINVAL: nothing is unmapped
                }
                let gone = self.cut(addr, addr.saturating_add(pages(len, PAGE)));
                self.count_release(!gone.is_empty(), internal);
            }
            MapCall::Shmdt { addr, internal, .. } => {
                let seq = self
                    .live
                    .get(&addr)
                    .filter(|l| matches!(l.source, Some(MapSource::Sysv(_))))
                    .map(|l| l.seq);
                let starts: Vec<u64> = match seq {
                    Some(seq) => self
                        .live
                        .iter()
                        .filter(|(_, l)| l.seq == seq)
                        .map(|(&s, _)| s)
                        .collect(),
                    None => Vec::new(),
                };
                for s in &starts {
                    self.remove(*s);
                }
                self.count_release(!starts.is_empty(), internal);
            }
            MapCall::RemapStart {
                tid, old, old_len, ..
            } => {
                // old_len 0 duplicates a shared mapping: the old one stays.
                let pieces = if old % PAGE == 0 && old_len != 0 {
                    self.cut(old, old.saturating_add(pages(old_len, PAGE)))
                } else {
                    Vec::new()
                };
                if let Some(stale) = self.remaps.insert(tid, Remapping { old, pieces }) {
                    // A start without its end (the thread left the call some other way).
                    for (s, l) in stale.pieces {
                        self.insert(s, l);
                    }
                }
            }
            MapCall::RemapEnd { .. } => self.remap_end(call),
            MapCall::Protect {
                addr,
                len,
                prot,
                internal,
                ..
            } => {
                if addr % PAGE != 0 {
                    return;
                }
                let end = addr.saturating_add(pages(len, PAGE));
                let pieces = self.cut(addr, end);
                if internal {
                    self.totals.internal_calls += 1;
                } else if !pieces.is_empty() {
                    self.totals.protects += 1;
                }
                for (s, mut l) in pieces {
                    l.prot = prot;
                    self.insert(s, l);
                }
                self.merge(addr, end);
            }
            MapCall::Descriptor { fd, kind, .. } => match kind {
                DescKind::Memfd => {
                    self.totals.memfds += 1;
                    self.fds.insert(fd, kind);
                }
                DescKind::PosixShm => {
                    self.totals.shm_opens += 1;
                    self.fds.insert(fd, kind);
                }
                DescKind::ShmUnlink => self.totals.shm_unlinks += 1,
            },
        }
    }

    fn remap_end(&mut self, call: &MapCall) {
        let MapCall::RemapEnd {
            tid,
            old,
            old_len,
            new,
            new_len,
            flags,
            stack,
            internal,
        } = *call
        else {
            return;
        };
        let pieces = match self.remaps.remove(&tid) {
            Some(r) if r.old == old => r.pieces,
            Some(r) => {
                for (s, l) in r.pieces {
                    self.insert(s, l);
                }
                Vec::new()
            }
            None => Vec::new(),
        };
        let old_stays = old_len == 0 || flags & MREMAP_DONTUNMAP != 0;
        if new == u64::MAX || old_stays {
            // Failed: untouched. DONTUNMAP, or a duplicate: the old range stays too.
            for (s, l) in pieces.iter().cloned() {
                self.insert(s, l);
            }
            if new == u64::MAX {
                return;
            }
        }
        let new_len = pages(new_len, PAGE);
        self.cut(new, new.saturating_add(new_len));
        // The mapping the new range continues: the old range's first piece, or the
        // mapping duplicated.
        let template = pieces.first().map(|(_, l)| l.clone()).or_else(|| {
            (old_len == 0)
                .then(|| self.containing(old).map(|(_, l)| l.clone()))
                .flatten()
        });
        match template {
            Some(t) => {
                let before: u64 = if old_stays {
                    0
                } else {
                    pieces.iter().map(|(_, l)| l.len).sum()
                };
                if new_len > before {
                    // Growth is mapped memory as much as a new mapping is.
                    self.made_bytes(t.stack, new_len - before);
                }
                if !internal {
                    self.totals.remaps += 1;
                }
                self.insert(new, Live { len: new_len, ..t });
                self.merge(new, new.saturating_add(new_len));
            }
            None if internal => self.totals.internal_calls += 1,
            None => {
                // A mapping memtrace never saw made (attach): the new range is the
                // program's from now on, made here.
                self.totals.unmaps_of_unknown += 1;
                self.seq += 1;
                let live = Live {
                    len: new_len,
                    prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                    flags: libc::MAP_PRIVATE as u32,
                    source: None,
                    desc: None,
                    offset: 0,
                    stack,
                    func: HookFn::Mremap,
                    seq: self.seq,
                    at_ns: self.now_ns,
                };
                self.made(stack, new_len);
                self.insert(new, live);
            }
        }
    }

    /// A munmap or shmdt of the program's (`internal`: the C library's).
    fn count_release(&mut self, tracked: bool, internal: bool) {
        match (internal, tracked) {
            (true, _) => self.totals.internal_calls += 1,
            (false, true) => self.totals.unmaps += 1,
            (false, false) => self.totals.unmaps_of_unknown += 1,
        }
    }

    /// The live range holding `addr`.
    pub fn containing(&self, addr: u64) -> Option<(u64, &Live)> {
        let (&s, l) = self.live.range(..=addr).next_back()?;
        (addr < s + l.len).then_some((s, l))
    }

    fn made(&mut self, stack: StackId, len: u64) {
        self.totals.maps += 1;
        self.sites.entry(stack).or_default().maps += 1;
        self.made_bytes(stack, len);
    }

    fn made_bytes(&mut self, stack: StackId, len: u64) {
        self.totals.bytes_mapped += len;
        self.sites.entry(stack).or_default().bytes += len;
    }
}

#[cfg(test)]
#[path = "model_tests.rs"]
mod tests;
