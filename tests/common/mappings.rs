//! The mapping fixtures: their expectations (`MAPPING:` and `EXPECT-MAP-TOTALS:`
//! markers, see `fixtures/maps.h`), the report's `mappings`, and the kernel's view
//! of the process at its end (the fixture's copy of `/proc/self/maps`), which the
//! report must agree with: valgrind reports no mappings, the kernel is the oracle.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::Path;

use serde_json::Value;

use super::basename;
use super::build::{build_fixture, fixture_source, DEBUG};
use super::markers::tagged_lines;
use super::process::{run_memtrace_env, Run, Target};
use super::report::{stack, Frame};

/// One `MAPPING:` marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingMarker {
    pub line: u32,
    pub count: u64,
    pub bytes: u64,
    pub kind: String,
    /// Compared with the base name of the report's name.
    pub name: Option<String>,
    pub descriptor_open: Option<bool>,
    /// The protections, in any order.
    pub prot: Option<Vec<String>>,
}

const KINDS: [&str; 5] = ["anonymous", "file", "memfd", "posix_shm", "sysv_shm"];

/// Parses the `MAPPING:` markers of one source text.
pub fn parse_mapping_markers(file: &str, text: &str) -> Result<Vec<MappingMarker>, String> {
    let mut found = Vec::new();
    for tagged in tagged_lines(file, text, "MAPPING:") {
        let (line, where_, words) = tagged?;
        let number = |i: usize| -> Result<u64, String> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| format!("{where_}: MAPPING marker: word {} is no number", i + 1))
        };
        let kind = words.get(2).copied().unwrap_or_default();
        if !KINDS.contains(&kind) {
            return Err(format!("{where_}: MAPPING marker: unknown kind {kind:?}"));
        }
        let mut m = MappingMarker {
            line,
            count: number(0)?,
            bytes: number(1)?,
            kind: kind.to_string(),
            name: None,
            descriptor_open: None,
            prot: None,
        };
        for word in &words[3..] {
            match word.split_once('=') {
                Some(("name", v)) => m.name = Some(v.to_string()),
                Some(("descriptor", "open")) => m.descriptor_open = Some(true),
                Some(("descriptor", "closed")) => m.descriptor_open = Some(false),
                Some(("prot", v)) => m.prot = Some(v.split(',').map(String::from).collect()),
                _ => return Err(format!("{where_}: MAPPING marker: unexpected {word:?}")),
            }
        }
        found.push(m);
    }
    Ok(found)
}

/// The `EXPECT-MAP-TOTALS:` of a source text: each `key=value`.
pub fn parse_map_totals(text: &str) -> Result<Vec<(String, u64)>, String> {
    let Some(line) = text.lines().find(|l| l.contains("EXPECT-MAP-TOTALS:")) else {
        return Ok(Vec::new());
    };
    let rest = line.split("EXPECT-MAP-TOTALS:").nth(1).unwrap_or_default();
    let rest = rest.split("*/").next().unwrap_or(rest);
    rest.split_whitespace()
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("EXPECT-MAP-TOTALS: bad {pair:?}"))?;
            let v = v
                .parse()
                .map_err(|_| format!("EXPECT-MAP-TOTALS: bad number in {pair:?}"))?;
            Ok((k.to_string(), v))
        })
        .collect()
}

/// One `mappings[]` entry of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportMapping {
    pub kind: String,
    pub name: Option<String>,
    pub count: u64,
    pub bytes: u64,
    pub rss_bytes: Option<u64>,
    pub prot: Vec<String>,
    pub descriptor_open: Option<bool>,
    pub stack: Vec<Frame>,
    pub ranges: Vec<(u64, u64)>,
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not a hex address: {s:?}"))
}

/// The report's `mappings` (none when it has no such list).
pub fn mappings(report: &Value) -> Vec<ReportMapping> {
    let Some(list) = report["mappings"].as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|m| ReportMapping {
            kind: m["kind"].as_str().unwrap_or_default().to_string(),
            name: m["name"].as_str().map(String::from),
            count: m["count"]
                .as_u64()
                .unwrap_or_else(|| panic!("count of {m}")),
            bytes: m["bytes"]
                .as_u64()
                .unwrap_or_else(|| panic!("bytes of {m}")),
            rss_bytes: m["rss_bytes"].as_u64(),
            prot: m["prot"]
                .as_array()
                .unwrap_or_else(|| panic!("prot of {m}"))
                .iter()
                .filter_map(|p| p.as_str().map(String::from))
                .collect(),
            descriptor_open: m["descriptor_open"].as_bool(),
            stack: stack(&m["stack"]),
            ranges: m["ranges"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|r| {
                            let (s, e) = r.split_once('-').unwrap_or_else(|| panic!("{r}"));
                            (hex(s), hex(e))
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The contract's shape of `mappings`: known kinds, largest first, ranges that add
/// up to the bytes and the count.
pub fn check_mappings_shape(list: &[ReportMapping]) {
    for m in list {
        assert!(KINDS.contains(&m.kind.as_str()), "kind of {m:?}");
        assert!(m.count > 0 && m.bytes > 0, "{m:?}");
        assert!(
            m.rss_bytes.is_none_or(|r| r <= m.bytes),
            "rss above size: {m:?}"
        );
        assert_eq!(m.ranges.len() as u64, m.count, "ranges of {m:?}");
        let sum: u64 = m.ranges.iter().map(|(s, e)| e - s).sum();
        assert_eq!(sum, m.bytes, "range sizes of {m:?}");
        let has_descriptor = ["file", "memfd", "posix_shm"].contains(&m.kind.as_str());
        assert_eq!(m.descriptor_open.is_some(), has_descriptor, "{m:?}");
    }
    let bytes: Vec<u64> = list.iter().map(|m| m.bytes).collect();
    assert!(
        bytes.windows(2).all(|w| w[0] >= w[1]),
        "not largest first: {bytes:?}"
    );
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub path: String,
}

pub fn parse_maps(text: &str) -> Vec<Vma> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(6, ' ');
            let (s, e) = it.next()?.split_once('-')?;
            let perms = it.next()?.to_string();
            let path = it.nth(3).unwrap_or("").trim().to_string();
            Some(Vma {
                start: u64::from_str_radix(s, 16).ok()?,
                end: u64::from_str_radix(e, 16).ok()?,
                perms,
                path,
            })
        })
        .collect()
}

/// The contract's kind and name of what a map line maps, the tests' own reading
/// of the kernel's names (None for the kernel's own areas).
pub fn kind_of(path: &str) -> Option<(&'static str, Option<String>)> {
    let undeleted = path.strip_suffix(" (deleted)").unwrap_or(path);
    if path.is_empty() || path == "/dev/zero (deleted)" {
        Some(("anonymous", None))
    } else if let Some(name) = undeleted.strip_prefix("/memfd:") {
        Some(("memfd", Some(name.to_string())))
    } else if let Some(name) = undeleted.strip_prefix("/dev/shm/") {
        Some(("posix_shm", Some(name.to_string())))
    } else if let Some(key) = undeleted.strip_prefix("/SYSV") {
        Some(("sysv_shm", Some(format!("0x{key}"))))
    } else if path.starts_with('/') {
        Some(("file", Some(path.to_string())))
    } else {
        None
    }
}

/// Every reported range lies in areas of the kernel's map whose protection is one
/// of its group's, and which map what the group says they map.
pub fn check_against_maps(list: &[ReportMapping], vmas: &[Vma]) {
    for m in list {
        for &(start, end) in &m.ranges {
            let mut at = start;
            while at < end {
                let v = vmas
                    .iter()
                    .find(|v| v.start <= at && at < v.end)
                    .unwrap_or_else(|| {
                        panic!("{at:#x} of a reported {m:?} is not mapped at the end")
                    });
                assert!(m.prot.contains(&v.perms), "{v:?} under {m:?}");
                let (kind, name) = kind_of(&v.path).unwrap_or_else(|| panic!("{v:?}"));
                assert_eq!(kind, m.kind, "{v:?} under {m:?}");
                assert_eq!(name, m.name, "{v:?} under {m:?}");
                at = v.end;
            }
        }
    }
}

/// The fixture's own shared memory and files, every page of it, is in some
/// reported range: nothing it mapped is missing.
pub fn check_nothing_missing(list: &[ReportMapping], vmas: &[Vma], own: &dyn Fn(&Vma) -> bool) {
    for v in vmas.iter().filter(|v| own(v)) {
        let mut at = v.start;
        while at < v.end {
            let (_, e) = list
                .iter()
                .flat_map(|m| m.ranges.iter())
                .find(|&&(s, e)| s <= at && at < e)
                .unwrap_or_else(|| panic!("{v:?}: {at:#x} is in no reported mapping"));
            at = *e;
        }
    }
}

/// The reported groups, summed by the line of their first frame in `file`.
fn by_line(list: &[ReportMapping], file: &str) -> BTreeMap<u32, Vec<ReportMapping>> {
    let mut out: BTreeMap<u32, Vec<ReportMapping>> = BTreeMap::new();
    for m in list {
        let first = m.stack.first().unwrap_or_else(|| panic!("no stack: {m:?}"));
        assert_eq!(
            first.file.as_deref().map(basename),
            Some(file),
            "the first frame of {m:?} is not in {file}"
        );
        let line = first.line.unwrap_or_else(|| panic!("no line: {m:?}")) as u32;
        out.entry(line).or_default().push(m.clone());
    }
    out
}

/// The report's mappings are exactly what the markers say, line by line.
pub fn check_markers(list: &[ReportMapping], source: &Path) {
    let file = basename(source.to_str().unwrap_or_default()).to_string();
    let text = fs::read_to_string(source).unwrap_or_else(|e| panic!("{e}"));
    let markers = parse_mapping_markers(&file, &text).unwrap_or_else(|e| panic!("{e}"));
    let got = by_line(list, &file);
    let mut marked: Vec<u32> = markers.iter().map(|m| m.line).collect();
    marked.sort_unstable();
    assert_eq!(
        got.keys().copied().collect::<Vec<u32>>(),
        marked,
        "the lines of the reported mappings are not the marked ones: {list:#?}"
    );
    for marker in &markers {
        let groups = &got[&marker.line];
        let count: u64 = groups.iter().map(|g| g.count).sum();
        let bytes: u64 = groups.iter().map(|g| g.bytes).sum();
        let what = format!("{file}:{} {groups:#?}", marker.line);
        assert_eq!((count, bytes), (marker.count, marker.bytes), "{what}");
        for g in groups {
            assert_eq!(g.kind, marker.kind, "{what}");
            if let Some(name) = &marker.name {
                assert_eq!(
                    g.name.as_deref().map(basename),
                    Some(name.as_str()),
                    "{what}"
                );
            }
            if marker.descriptor_open.is_some() {
                assert_eq!(g.descriptor_open, marker.descriptor_open, "{what}");
            }
        }
        if let Some(prot) = &marker.prot {
            let mut want = prot.clone();
            let mut have: Vec<String> = groups.iter().flat_map(|g| g.prot.clone()).collect();
            want.sort();
            have.sort();
            have.dedup();
            assert_eq!(have, want, "{what}");
        }
    }
}

/// The report's `mapping_totals` agree with `EXPECT-MAP-TOTALS:`.
pub fn check_totals(report: &Value, source: &Path) {
    let text = fs::read_to_string(source).unwrap_or_else(|e| panic!("{e}"));
    for (key, value) in parse_map_totals(&text).unwrap_or_else(|e| panic!("{e}")) {
        assert_eq!(
            report["mapping_totals"][&key].as_u64(),
            Some(value),
            "mapping_totals.{key} of {}",
            report["mapping_totals"]
        );
    }
}

/// Runs fixture `name` (built with the default flags) under memtrace in both
/// recording modes, with its map copied at its end; checks the report's mappings
/// against the markers and against that map. Returns the run and the map.
pub fn check_fixture(name: &str, args: &[&str]) -> (Run, Vec<Vma>) {
    check_fixture_built(name, DEBUG, args)
}

/// [`check_fixture`] with the fixture built with `flags`.
pub fn check_fixture_built(name: &str, flags: &[&str], args: &[&str]) -> (Run, Vec<Vma>) {
    let exe = build_fixture(name, flags);
    let mut target = Target::new(exe);
    for a in args {
        target = target.arg(a);
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dump = dir.path().join("maps");
    let env = [("MEMTRACE_FIXTURE_MAPS", OsString::from(&dump))];
    let run = run_memtrace_env(&env, &[], &target);
    let report = run.report();
    let list = mappings(report);
    check_mappings_shape(&list);
    let source = fixture_source(name);
    check_markers(&list, &source);
    check_totals(report, &source);
    let text = fs::read_to_string(&dump)
        .unwrap_or_else(|e| panic!("{name} left no copy of its maps: {e}\n{}", run.stderr));
    let vmas = parse_maps(&text);
    check_against_maps(&list, &vmas);
    (run, vmas)
}

/// `memtrace maps --json PID`, parsed.
pub fn census_json(pid: i32) -> Value {
    let mut census = std::process::Command::new(super::process::memtrace_binary());
    census.args(["maps", "--json", &pid.to_string()]);
    let out = super::process::run_with_watchdog_stdout(
        census,
        super::process::MEMTRACE_LIMIT,
        "memtrace maps",
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("memtrace maps --json: {e}: {}", out.stderr))
}
