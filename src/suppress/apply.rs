//! Leaving suppressed findings out of a report, and counting them.

use super::{Suppression, Suppressions};
use crate::report::{Report, Suppressed};

/// Removes from `report` every leak and heap error a suppression hides, and counts
/// them in `report.suppressed` (added to what an earlier application counted).
pub fn apply(report: &mut Report, supps: &Suppressions) {
    if supps.is_empty() {
        return;
    }
    let mut counts = std::mem::take(&mut report.suppressed);
    let mut kept = Vec::with_capacity(report.leaks.len());
    for leak in std::mem::take(&mut report.leaks) {
        match supps.for_leak(&leak) {
            Some(s) => {
                let c = entry(&mut counts, s);
                c.count += 1;
                c.blocks += leak.blocks;
                c.bytes += leak.bytes;
            }
            None => kept.push(leak),
        }
    }
    report.leaks = kept;
    let mut kept = Vec::with_capacity(report.errors.len());
    for e in std::mem::take(&mut report.errors) {
        match supps.for_error(&e) {
            Some(s) => entry(&mut counts, s).count += e.count,
            None => kept.push(e),
        }
    }
    report.errors = kept;
    report.suppressed = counts;
}

/// The count of suppression `s`, made on first use.
fn entry<'a>(counts: &'a mut Vec<Suppressed>, s: &Suppression) -> &'a mut Suppressed {
    let i = match counts
        .iter()
        .position(|c| c.name == s.name && c.origin == s.origin)
    {
        Some(i) => i,
        None => {
            counts.push(Suppressed {
                name: s.name.clone(),
                origin: s.origin.clone(),
                ..Suppressed::default()
            });
            counts.len() - 1
        }
    };
    &mut counts[i]
}
