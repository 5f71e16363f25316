//! What grew from one report to another, per allocation site: the way to compare two
//! attaches an hour apart, or a run before and after a change.
//!
//! Sites are matched by their symbolized stacks (function, file, line and object of
//! each frame; the address only where nothing else is known), so that two runs of a
//! program loaded at different addresses compare. The kinds of a site are summed.

use super::collapsed::{fold, NOT_RECORDED};
use super::text::thousands;
use super::{JsonFrame, Report};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

pub const SCHEMA: &str = "memtrace-diff/1";

/// One site's live blocks and bytes in both reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SiteGrowth {
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub blocks_before: u64,
    pub blocks_after: u64,
    /// `bytes_after - bytes_before` (negative: it shrank).
    pub bytes_growth: i64,
    pub blocks_growth: i64,
    /// The site's leak kinds in the later report (empty: nothing live there now).
    pub kinds: Vec<String>,
    pub stack: Vec<JsonFrame>,
}

/// The comparison, as `--format json` writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diff {
    pub schema: &'static str,
    pub before: Summary,
    pub after: Summary,
    /// Every site whose live bytes or blocks changed, largest growth first.
    pub sites: Vec<SiteGrowth>,
}

/// Which report a side is, and its live totals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub file: String,
    pub pid: i32,
    pub duration_ms: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

/// A frame as it is matched across runs.
type FrameKey = (
    Option<String>,
    Option<String>,
    Option<u32>,
    Option<String>,
    String,
);

fn key(stack: &[JsonFrame]) -> Vec<FrameKey> {
    stack
        .iter()
        .map(|f| {
            let address = if f.function.is_some() {
                String::new()
            } else {
                f.address.clone()
            };
            (
                f.function.clone(),
                f.file.clone(),
                f.line,
                f.object.clone(),
                address,
            )
        })
        .collect()
}

/// Compares `before` (named `before_name`) with `after`.
pub fn diff(before: &Report, before_name: &str, after: &Report, after_name: &str) -> Diff {
    let mut sites: HashMap<Vec<FrameKey>, SiteGrowth> = HashMap::new();
    let mut order: Vec<Vec<FrameKey>> = Vec::new();
    let mut entry = |stack: &[JsonFrame]| -> Vec<FrameKey> {
        let k = key(stack);
        if !sites.contains_key(&k) {
            order.push(k.clone());
            sites.insert(
                k.clone(),
                SiteGrowth {
                    bytes_before: 0,
                    bytes_after: 0,
                    blocks_before: 0,
                    blocks_after: 0,
                    bytes_growth: 0,
                    blocks_growth: 0,
                    kinds: Vec::new(),
                    stack: stack.to_vec(),
                },
            );
        }
        k
    };
    let mut keys_before = Vec::new();
    for l in &before.leaks {
        keys_before.push((entry(&l.stack), l.blocks, l.bytes));
    }
    let mut keys_after = Vec::new();
    for l in &after.leaks {
        keys_after.push((entry(&l.stack), l.blocks, l.bytes, l));
    }
    for (k, blocks, bytes) in keys_before {
        if let Some(s) = sites.get_mut(&k) {
            s.blocks_before += blocks;
            s.bytes_before += bytes;
        }
    }
    for (k, blocks, bytes, leak) in keys_after {
        if let Some(s) = sites.get_mut(&k) {
            s.blocks_after += blocks;
            s.bytes_after += bytes;
            // The later report's stack: its addresses are the ones to look up now.
            s.stack = leak.stack.clone();
            if !s.kinds.contains(&leak.kind) {
                s.kinds.push(leak.kind.clone());
            }
        }
    }
    let signed = |after: u64, before: u64| after as i64 - before as i64;
    let mut out: Vec<SiteGrowth> = order
        .into_iter()
        .filter_map(|k| sites.remove(&k))
        .map(|mut s| {
            s.bytes_growth = signed(s.bytes_after, s.bytes_before);
            s.blocks_growth = signed(s.blocks_after, s.blocks_before);
            s
        })
        .filter(|s| s.bytes_growth != 0 || s.blocks_growth != 0)
        .collect();
    out.sort_by(|a, b| {
        b.bytes_growth
            .cmp(&a.bytes_growth)
            .then(b.blocks_growth.cmp(&a.blocks_growth))
    });
    let summary = |r: &Report, name: &str| Summary {
        file: name.to_string(),
        pid: r.target.pid,
        duration_ms: r.duration_ms,
        live_blocks: r.totals.live_blocks,
        live_bytes: r.totals.live_bytes,
    };
    Diff {
        schema: SCHEMA,
        before: summary(before, before_name),
        after: summary(after, after_name),
        sites: out,
    }
}

/// `+1,200` / `-30` / `0`
fn signed(n: i64) -> String {
    match n {
        0 => "0".into(),
        n if n > 0 => format!("+{}", thousands(n as u64)),
        n => format!("-{}", thousands(n.unsigned_abs())),
    }
}

/// The comparison as text, in the words of valgrind's `leak_check ... increased`:
/// `5,000 (+4,000) bytes in 50 (+40) blocks are definitely lost in site 1 of 2`.
pub fn render_text(d: &Diff) -> String {
    let mut out = String::new();
    let side = |s: &Summary| {
        format!(
            "{} (pid {}, {} s of trace): {} bytes in {} blocks",
            s.file,
            s.pid,
            s.duration_ms / 1000,
            thousands(s.live_bytes),
            thousands(s.live_blocks)
        )
    };
    out.push_str(&format!("from {}\n", side(&d.before)));
    out.push_str(&format!("  to {}\n", side(&d.after)));
    out.push_str(&format!(
        "live heap: {} bytes, {} blocks\n\n",
        signed(d.after.live_bytes as i64 - d.before.live_bytes as i64),
        signed(d.after.live_blocks as i64 - d.before.live_blocks as i64)
    ));
    if d.sites.is_empty() {
        out.push_str("no site changed\n");
        return out;
    }
    let n = d.sites.len();
    for (i, s) in d.sites.iter().enumerate() {
        let kinds = if s.kinds.is_empty() {
            "gone".to_string()
        } else {
            s.kinds
                .iter()
                .map(|k| kind_words(k))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        out.push_str(&format!(
            "{} ({}) bytes in {} ({}) blocks are {kinds} in site {} of {}\n",
            thousands(s.bytes_after),
            signed(s.bytes_growth),
            thousands(s.blocks_after),
            signed(s.blocks_growth),
            thousands(i as u64 + 1),
            thousands(n as u64)
        ));
        if s.stack.is_empty() {
            out.push_str(&format!("   {NOT_RECORDED}\n"));
        }
        for (j, f) in s.stack.iter().enumerate() {
            out.push_str(&format!(
                "   {} {}: {}\n",
                if j == 0 { "at" } else { "by" },
                f.address,
                super::text::frame_text(f)
            ));
        }
        out.push('\n');
    }
    out
}

fn kind_words(kind: &str) -> &str {
    match kind {
        "definite" => "definitely lost",
        "indirect" => "indirectly lost",
        "possible" => "possibly lost",
        "reachable" => "still reachable",
        other => other,
    }
}

/// Folded stacks with both sides' live bytes (`stack BEFORE AFTER`), every stack of
/// either report: the input of a differential flamegraph (what `difffolded.pl`
/// writes), where what grew is red and what shrank blue.
pub fn render_collapsed(before: &Report, after: &Report) -> String {
    let mut folded: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in &before.leaks {
        folded.entry(fold(&l.stack)).or_default().0 += l.bytes;
    }
    for l in &after.leaks {
        folded.entry(fold(&l.stack)).or_default().1 += l.bytes;
    }
    folded
        .into_iter()
        .map(|(stack, (a, b))| format!("{stack} {a} {b}\n"))
        .collect()
}

#[cfg(test)]
mod tests;
