//! The range bookkeeping of the mapping model: live ranges put in and taken out
//! with their counts kept (totals, per-stack sites), a range cut out of whatever
//! covers it (splitting what reaches past it), and the pieces of one mapping joined
//! again where they agree, as the kernel joins its areas.

use super::model::{Live, Mappings};

impl Mappings {
    pub(super) fn insert(&mut self, start: u64, l: Live) {
        let t = &mut self.totals;
        t.live_mappings += 1;
        t.live_bytes += l.len;
        t.peak_live_bytes = t.peak_live_bytes.max(t.live_bytes);
        let site = self.sites.entry(l.stack).or_default();
        site.live += 1;
        site.live_bytes += l.len;
        if let Some(stale) = self.live.insert(start, l) {
            self.forget(&stale);
        }
    }

    pub(super) fn remove(&mut self, start: u64) -> Option<Live> {
        let l = self.live.remove(&start)?;
        self.forget(&l);
        Some(l)
    }

    fn forget(&mut self, l: &Live) {
        self.totals.live_mappings -= 1;
        self.totals.live_bytes -= l.len;
        if let Some(site) = self.sites.get_mut(&l.stack) {
            site.live -= 1;
            site.live_bytes -= l.len;
        }
    }

    /// Takes `[start, end)` out of the live ranges, splitting those that reach past
    /// it; returns the pieces taken, by address.
    pub(super) fn cut(&mut self, start: u64, end: u64) -> Vec<(u64, Live)> {
        if start >= end {
            return Vec::new();
        }
        let starts: Vec<u64> = self
            .live
            .range(..end)
            .rev()
            .take_while(|(&s, l)| s + l.len > start)
            .map(|(&s, _)| s)
            .collect();
        let mut taken = Vec::new();
        for s in starts.into_iter().rev() {
            let Some(l) = self.remove(s) else { continue };
            let e = s + l.len;
            if s < start {
                self.insert(
                    s,
                    Live {
                        len: start - s,
                        ..l.clone()
                    },
                );
            }
            if e > end {
                self.insert(
                    end,
                    Live {
                        len: e - end,
                        offset: l.offset + (end - s),
                        ..l.clone()
                    },
                );
            }
            let from = s.max(start);
            taken.push((
                from,
                Live {
                    len: e.min(end) - from,
                    offset: l.offset + (from - s),
                    ..l
                },
            ));
        }
        taken
    }

    /// Joins the neighbouring pieces of one mapping that agree again, from the range
    /// before `start` to the one at `end`.
    pub(super) fn merge(&mut self, start: u64, end: u64) {
        let first = self
            .live
            .range(..start)
            .next_back()
            .map_or(start, |(&s, _)| s);
        let starts: Vec<u64> = self.live.range(first..=end).map(|(&s, _)| s).collect();
        let mut at = None::<u64>;
        for s in starts {
            let joined = match at.and_then(|a| Some((a, self.live.get(&a)?))) {
                Some((a, prev)) => {
                    let next = &self.live[&s];
                    let fits = a + prev.len == s
                        && prev.seq == next.seq
                        && prev.prot == next.prot
                        && prev.flags == next.flags
                        && prev.offset + prev.len == next.offset;
                    fits.then_some(a)
                }
                None => None,
            };
            match joined {
                Some(a) => {
                    let next = self.remove(s).map_or(0, |l| l.len);
                    if let Some(prev) = self.remove(a) {
                        self.insert(
                            a,
                            Live {
                                len: prev.len + next,
                                ..prev
                            },
                        );
                    }
                }
                None => at = Some(s),
            }
        }
    }
}
