//! The mappings view's state: the last census of the process's memory (see
//! [`crate::census`]), taken every second while the view is shown, and each
//! group's growth over the last seconds. Pure: fed with censuses, it never sees
//! the target.

use crate::census::{Census, Group};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Growth is measured over this many seconds of censuses.
pub const GROWTH_WINDOW_SECS: f64 = 10.0;

/// A group (kind and name).
type Key = (String, Option<String>);

#[derive(Debug, Default)]
pub struct CensusView {
    /// The last census, and when it was taken (since the trace began).
    pub last: Option<(Duration, Census)>,
    /// Each group's (time, bytes, resident bytes), oldest first.
    history: HashMap<Key, VecDeque<(f64, u64, u64)>>,
    pub selected: usize,
}

/// One row of the view: a group, and how fast it grew.
#[derive(Clone, Debug, PartialEq)]
pub struct CensusRow {
    pub group: Group,
    /// Bytes mapped, and resident, gained per second over the window.
    pub growth: f64,
    pub rss_growth: f64,
}

impl CensusView {
    pub fn update(&mut self, census: Census, at: Duration) {
        let t = at.as_secs_f64();
        for g in &census.groups {
            let h = self
                .history
                .entry((g.kind.clone(), g.name.clone()))
                .or_default();
            h.push_back((t, g.bytes, g.rss_bytes));
            while h.len() > 2 && h[1].0 <= t - GROWTH_WINDOW_SECS {
                h.pop_front();
            }
        }
        // A group gone from the census has shrunk to nothing.
        for (key, h) in self.history.iter_mut() {
            if !census
                .groups
                .iter()
                .any(|g| (&g.kind, &g.name) == (&key.0, &key.1))
            {
                h.push_back((t, 0, 0));
                while h.len() > 2 && h[1].0 <= t - GROWTH_WINDOW_SECS {
                    h.pop_front();
                }
            }
        }
        self.selected = self.selected.min(census.groups.len().saturating_sub(1));
        self.last = Some((at, census));
    }

    /// The groups of the last census, largest first, with their growth.
    pub fn rows(&self) -> Vec<CensusRow> {
        let Some((_, c)) = &self.last else {
            return Vec::new();
        };
        c.groups
            .iter()
            .map(|g| {
                let (growth, rss_growth) = self
                    .history
                    .get(&(g.kind.clone(), g.name.clone()))
                    .and_then(|h| {
                        let (&(t0, b0, r0), &(t1, b1, r1)) = (h.front()?, h.back()?);
                        let dt = t1 - t0;
                        (dt > 0.0)
                            .then(|| ((b1 as f64 - b0 as f64) / dt, (r1 as f64 - r0 as f64) / dt))
                    })
                    .unwrap_or((0.0, 0.0));
                CensusRow {
                    group: g.clone(),
                    growth,
                    rss_growth,
                }
            })
            .collect()
    }

    pub fn move_by(&mut self, delta: i64) {
        let len = self.last.as_ref().map_or(0, |(_, c)| c.groups.len());
        let to = (self.selected as i64).saturating_add(delta);
        self.selected = to.clamp(0, len.saturating_sub(1) as i64) as usize;
    }

    /// A new program image: its memory is another.
    pub fn clear(&mut self) {
        *self = CensusView::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::{Total, SCHEMA};

    fn census(memfd: u64) -> Census {
        let group = |kind: &str, name: Option<&str>, bytes| Group {
            kind: kind.into(),
            name: name.map(String::from),
            count: 1,
            bytes,
            rss_bytes: bytes / 2,
            live_bytes: None,
        };
        let mut groups = vec![group("heap", None, 1 << 20)];
        if memfd > 0 {
            groups.insert(0, group("memfd", Some("doublemapper"), memfd));
        }
        Census {
            schema: SCHEMA.into(),
            pid: 1,
            total: Total::default(),
            groups,
        }
    }

    #[test]
    fn growth_per_group_over_the_window() {
        let mut v = CensusView::default();
        assert!(v.rows().is_empty());
        for s in 0..=20u64 {
            v.update(census(s << 20), Duration::from_secs(s));
        }
        let rows = v.rows();
        assert_eq!(rows[0].group.kind, "memfd");
        assert_eq!(rows[0].growth, (1 << 20) as f64, "1 MiB a second");
        assert_eq!(rows[0].rss_growth, (1 << 19) as f64);
        assert_eq!(rows[1].growth, 0.0, "the heap did not grow");
        v.move_by(5);
        assert_eq!(v.selected, 1);
        // The memfds are unmapped: the group is gone, the heap stays selected.
        v.update(census(0), Duration::from_secs(21));
        assert_eq!(v.rows().len(), 1);
        assert_eq!(v.selected, 0);
    }
}
