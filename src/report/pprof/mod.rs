//! The report as a pprof heap profile (gzip'd protobuf), the format `go tool pprof`,
//! Pyroscope, Parca and Grafana read.
//!
//! The sample types are those of Go's heap profiles, so these tools offer their usual
//! views: `alloc_objects` and `alloc_space` (every allocation of the trace, from the
//! report's `allocation_sites`), `inuse_objects` and `inuse_space` (the blocks live at
//! the end, from `leaks`; the default). Live samples carry the leak kind as a label
//! (`-tagfocus kind=definite`). Frames keep function, file and line, inlined frames
//! folded into their caller's location as pprof expects.

pub mod proto;

use super::collapsed::NOT_RECORDED;
use super::{JsonFrame, Report};
use flate2::write::GzEncoder;
use flate2::Compression;
use prost::Message;
use proto::{Function, Label, Line, Location, Mapping, Profile, Sample, ValueType};
use std::collections::HashMap;
use std::io::Write;

/// The sample types, in the order of every sample's values.
pub const SAMPLE_TYPES: [(&str, &str); 4] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
];

/// Writes the gzip'd profile of `report` to `out`.
pub fn write_pprof(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let bytes = profile(report).encode_to_vec();
    let mut gz = GzEncoder::new(out, Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?;
    Ok(())
}

/// The profile of `report`.
pub fn profile(report: &Report) -> Profile {
    let mut b = Builder::default();
    b.string(""); // index 0, as the format wants
    let sample_type = SAMPLE_TYPES
        .iter()
        .map(|(t, u)| ValueType {
            r#type: b.string(t),
            unit: b.string(u),
        })
        .collect();
    let kind_key = b.string("kind");
    let mut sample = Vec::new();
    for site in &report.allocation_sites {
        sample.push(Sample {
            location_id: b.stack(&site.stack),
            value: vec![count(site.allocs), count(site.bytes), 0, 0],
            label: Vec::new(),
        });
    }
    for leak in &report.leaks {
        sample.push(Sample {
            location_id: b.stack(&leak.stack),
            value: vec![0, 0, count(leak.blocks), count(leak.bytes)],
            label: vec![Label {
                key: kind_key,
                str: b.string(&leak.kind),
                ..Label::default()
            }],
        });
    }
    let period_type = Some(ValueType {
        r#type: b.string("space"),
        unit: b.string("bytes"),
    });
    let comment = vec![b.string(&format!(
        "memtrace: {} (pid {}, {})",
        report.target.argv.join(" "),
        report.target.pid,
        report.target.mode
    ))];
    let default_sample_type = b.string("inuse_space");
    Profile {
        sample_type,
        sample,
        mapping: b.mappings,
        location: b.locations,
        function: b.functions,
        string_table: b.strings,
        duration_nanos: count(report.duration_ms.saturating_mul(1_000_000)),
        period_type,
        // Every allocation is counted, none sampled.
        period: 1,
        comment,
        default_sample_type,
        ..Profile::default()
    }
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The tables of a profile, each entry made once.
#[derive(Default)]
struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<Function>,
    function_ids: HashMap<(i64, i64, i64), u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<String, u64>,
    locations: Vec<Location>,
    location_ids: HashMap<Vec<JsonFrame>, u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.string_ids.get(s) {
            return i;
        }
        let i = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), i);
        i
    }

    /// The location ids of a stack, leaf first: one location per address, holding
    /// the frames inlined there. A stack that was not recorded is one location.
    fn stack(&mut self, frames: &[JsonFrame]) -> Vec<u64> {
        if frames.is_empty() {
            let placeholder = JsonFrame {
                function: Some(NOT_RECORDED.into()),
                ..JsonFrame::default()
            };
            return vec![self.location(std::slice::from_ref(&placeholder))];
        }
        let mut ids = Vec::new();
        let mut start = 0;
        for (i, f) in frames.iter().enumerate() {
            // A frame inlined into the next shares its location.
            if !f.inlined || i + 1 == frames.len() {
                ids.push(self.location(&frames[start..=i]));
                start = i + 1;
            }
        }
        ids
    }

    fn location(&mut self, group: &[JsonFrame]) -> u64 {
        if let Some(&id) = self.location_ids.get(group) {
            return id;
        }
        let outer = &group[group.len() - 1];
        let line = group
            .iter()
            .filter(|f| f.function.is_some())
            .map(|f| Line {
                function_id: self.function(f),
                line: f.line.map_or(0, i64::from),
                column: 0,
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        let mapping_id = outer.object.as_deref().map_or(0, |o| self.mapping(o));
        self.locations.push(Location {
            id,
            mapping_id,
            address: parse_address(&outer.address),
            line,
            is_folded: false,
        });
        self.location_ids.insert(group.to_vec(), id);
        id
    }

    fn function(&mut self, f: &JsonFrame) -> u64 {
        let name = self.string(f.function.as_deref().unwrap_or(""));
        let system_name = match &f.mangled {
            Some(m) => self.string(m),
            None => name,
        };
        let filename = self.string(f.file.as_deref().unwrap_or(""));
        let key = (name, system_name, filename);
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(Function {
            id,
            name,
            system_name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert(key, id);
        id
    }

    fn mapping(&mut self, object: &str) -> u64 {
        if let Some(&id) = self.mapping_ids.get(object) {
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(object);
        self.mappings.push(Mapping {
            id,
            filename,
            // Symbolized already: tools must not try again from the binaries.
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
            ..Mapping::default()
        });
        self.mapping_ids.insert(object.to_string(), id);
        id
    }
}

/// `0x55d0c0a01182` -> its value (0 when it is not hex).
fn parse_address(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or(0)
}

#[cfg(test)]
mod tests;
