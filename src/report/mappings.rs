//! The report's mappings: memory the program mapped itself (mmap, mremap, shmat)
//! and still had mapped when the trace ended, grouped by stack and backing like
//! the heap's leaks (the contract's `mappings`), and their text section.

use super::text::{frame_text, thousands, upper_hex};
use super::{symbolize_stack, JsonFrame};
use crate::event::StackTable;
use crate::mappings::{MapTotals, Tracked};
use crate::symbols::Symbolizer;
use serde::{Deserialize, Serialize};

/// Live mappings sharing a stack and a backing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    /// `anonymous`, `file`, `memfd`, `posix_shm` or `sysv_shm`.
    pub kind: String,
    /// The file's path, the memfd's name, the shared memory's name or key.
    pub name: Option<String>,
    pub count: u64,
    pub bytes: u64,
    /// Resident bytes at the end (null: the process was gone before they could be
    /// read).
    pub rss_bytes: Option<u64>,
    /// The protections, as `/proc/PID/maps` spells them (`rw-p`, `r-xs`).
    pub prot: Vec<String>,
    /// For memfd, file and POSIX shared memory: whether a descriptor of the same
    /// file was still open at the end.
    pub descriptor_open: Option<bool>,
    pub stack: Vec<JsonFrame>,
    /// Extension: the function that made them (`mmap`, `shmat`; `mremap` for
    /// memory memtrace did not see mapped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Extension: each mapping's range, `0x7f00...-0x7f00...`, by address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<String>,
    /// Extension: when the oldest and the youngest were made, in milliseconds since
    /// the trace began.
    #[serde(default)]
    pub first_map_ms: u64,
    #[serde(default)]
    pub last_map_ms: u64,
}

/// The mappings still live, symbolized, and the trace's mapping calls counted.
pub fn build(
    tracked: &Tracked,
    stacks: &StackTable,
    sym: &mut Symbolizer,
) -> (Vec<Mapping>, MapTotals) {
    let list = tracked
        .groups()
        .into_iter()
        .map(|g| Mapping {
            kind: g.kind.name().to_string(),
            name: g.name,
            count: g.count,
            bytes: g.bytes,
            rss_bytes: g.rss_bytes,
            prot: g.prots,
            descriptor_open: g.descriptor_open,
            stack: symbolize_stack(stacks, g.stack, sym),
            function: Some(g.func.name().to_string()),
            ranges: g
                .ranges
                .iter()
                .map(|(s, e)| format!("{s:#x}-{e:#x}"))
                .collect(),
            first_map_ms: g.first_ns / 1_000_000,
            last_map_ms: g.last_ns / 1_000_000,
        })
        .collect();
    (list, tracked.model.totals())
}

/// `memfd "doublemapper"`, `anonymous memory`, `file /data/x.bin`.
fn backing_words(m: &Mapping) -> String {
    match (m.kind.as_str(), &m.name) {
        ("anonymous", _) => "anonymous memory".into(),
        ("file", Some(path)) => format!("file {path}"),
        ("sysv_shm", Some(key)) => format!("System V shared memory {key}"),
        ("posix_shm", Some(name)) => format!("POSIX shared memory \"{name}\""),
        (kind, Some(name)) => format!("{kind} \"{name}\""),
        (kind, None) => kind.to_string(),
    }
}

/// The text report's section: one entry per group, largest first, then a summary.
/// Empty when the program had nothing of its own mapped and made no mapping.
pub fn text_lines(list: &[Mapping], totals: Option<&MapTotals>, detached: bool) -> Vec<String> {
    let mut out = Vec::new();
    let made = totals.is_some_and(|t| t.maps > 0);
    if list.is_empty() && !made {
        return out;
    }
    let when = if detached { "detach" } else { "exit" };
    out.push(format!(
        "MAPPINGS (memory outside malloc the program mapped itself, still mapped at {when}):"
    ));
    for (i, m) in list.iter().enumerate() {
        let rss = m
            .rss_bytes
            .map(|r| format!(" ({} resident)", thousands(r)))
            .unwrap_or_default();
        let descriptor = match m.descriptor_open {
            Some(true) => ", a descriptor still open",
            Some(false) => ", no descriptor open",
            None => "",
        };
        out.push(format!(
            "{} bytes{rss} in {} mappings of {} ({}){descriptor}, made by {} in mapping record {} of {}",
            thousands(m.bytes),
            thousands(m.count),
            backing_words(m),
            m.prot.join(", "),
            m.function.as_deref().unwrap_or("?"),
            i + 1,
            list.len()
        ));
        if m.stack.is_empty() {
            out.push("   (no stack)".into());
        }
        for (j, f) in m.stack.iter().enumerate() {
            let word = if j == 0 { "at" } else { "by" };
            out.push(format!(
                "   {word} {}: {}",
                upper_hex(&f.address),
                frame_text(f)
            ));
        }
        out.push(String::new());
    }
    out.push("MAPPING SUMMARY:".into());
    let (count, bytes) = list
        .iter()
        .fold((0, 0), |(c, b), m| (c + m.count, b + m.bytes));
    let rss: Option<u64> = list.iter().map(|m| m.rss_bytes).sum();
    out.push(format!(
        "{:>18}: {} bytes{} in {} mappings",
        format!("mapped at {when}"),
        thousands(bytes),
        rss.map(|r| format!(" ({} resident)", thousands(r)))
            .unwrap_or_default(),
        thousands(count)
    ));
    if let Some(t) = totals {
        out.push(format!(
            "{:>18}: {} maps, {} unmaps, {} bytes mapped",
            "total",
            thousands(t.maps),
            thousands(t.unmaps),
            thousands(t.bytes_mapped)
        ));
        if t.unmaps_of_unknown > 0 {
            out.push(format!(
                "{:>18}: {} unmaps of memory mapped before the trace or not by the program",
                "unknown",
                thousands(t.unmaps_of_unknown)
            ));
        }
    }
    out.push(String::new());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(kind: &str, name: Option<&str>, open: Option<bool>) -> Mapping {
        Mapping {
            kind: kind.into(),
            name: name.map(String::from),
            count: 2,
            bytes: 8192,
            rss_bytes: Some(4096),
            prot: vec!["rw-s".into(), "r-xs".into()],
            descriptor_open: open,
            stack: vec![JsonFrame {
                address: "0x10a0".into(),
                function: Some("main".into()),
                file: Some("/src/map.c".into()),
                line: Some(40),
                ..JsonFrame::default()
            }],
            function: Some("mmap".into()),
            ranges: Vec::new(),
            first_map_ms: 0,
            last_map_ms: 0,
        }
    }

    #[test]
    fn the_section_says_what_is_mapped_and_whether_its_descriptor_is_open() {
        let list = [mapping("memfd", Some("doublemapper"), Some(false))];
        let totals = MapTotals {
            maps: 3,
            unmaps: 1,
            bytes_mapped: 12288,
            ..MapTotals::default()
        };
        let text = text_lines(&list, Some(&totals), false).join("\n");
        assert!(text.contains(
            "8,192 bytes (4,096 resident) in 2 mappings of memfd \"doublemapper\" (rw-s, r-xs), no descriptor open, made by mmap in mapping record 1 of 1"
        ), "{text}");
        assert!(text.contains("   at 0x10A0: main (map.c:40)"), "{text}");
        assert!(
            text.contains("mapped at exit: 8,192 bytes (4,096 resident) in 2 mappings"),
            "{text}"
        );
        assert!(
            text.contains("total: 3 maps, 1 unmaps, 12,288 bytes mapped"),
            "{text}"
        );
        // Nothing mapped, nothing made: no section at all.
        assert!(text_lines(&[], Some(&MapTotals::default()), false).is_empty());
    }

    #[test]
    fn a_saved_report_keeps_its_mappings_for_memtrace_report() {
        let mut r = crate::report::testing::sample();
        r.mappings = vec![mapping("memfd", Some("doublemapper"), Some(false))];
        r.mapping_totals = Some(MapTotals {
            maps: 2,
            ..MapTotals::default()
        });
        let text = crate::report::json::to_json_string(&r).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The contract's fields, as it spells them.
        let m = &v["mappings"][0];
        for key in [
            "kind",
            "name",
            "count",
            "bytes",
            "rss_bytes",
            "prot",
            "descriptor_open",
            "stack",
        ] {
            assert!(!m[key].is_null(), "{key} in {m}");
        }
        let back =
            crate::report::json::from_json_str(&text, std::path::Path::new("r.json")).unwrap();
        assert_eq!(back.mappings, r.mappings);
        let rendered = crate::report::text::render_text(&back);
        assert!(rendered.contains("MAPPING SUMMARY:"), "{rendered}");
        // A report without them (an older memtrace's) reads as having none.
        let older = text.replace("\"mappings\"", "\"not_mappings\"");
        let back =
            crate::report::json::from_json_str(&older, std::path::Path::new("r.json")).unwrap();
        assert!(back.mappings.is_empty());
    }
}
