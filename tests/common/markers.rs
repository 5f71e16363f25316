//! Expectations written in the fixture sources.
//!
//! `LEAK: <blocks> <size> [kind]` on the line of an allocating call: that call site
//! leaves `blocks` blocks of `size` bytes each live at exit; `kind` (optional) is
//! valgrind's classification. `EXPECT-TOTALS: allocs=.. frees=.. ...` gives the
//! totals of a fixture that valgrind cannot run.

use std::fs;
use std::path::Path;

use super::report::Totals;

/// One `LEAK:` marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The source file's name, without directories (valgrind prints no directories).
    pub file: String,
    /// 1-based line of the allocating call.
    pub line: u32,
    /// Blocks left live at exit by this call site.
    pub blocks: u64,
    /// Total bytes of those blocks (`blocks` times the size in the marker).
    pub bytes: u64,
    /// `definite`, `indirect`, `possible` or `reachable`, when the marker says.
    pub kind: Option<String>,
}

const KINDS: [&str; 4] = ["definite", "indirect", "possible", "reachable"];

/// Each line of `text` holding `TAG:`: its 1-based number, a `file:line` for
/// messages, and the words after the tag up to the comment's end.
pub(super) fn tagged_lines<'t>(
    file: &'t str,
    text: &'t str,
    tag: &'t str,
) -> impl Iterator<Item = Result<(u32, String, Vec<&'t str>), String>> + 't {
    text.lines().enumerate().filter_map(move |(index, line)| {
        let at = line.find(tag)?;
        let where_ = format!("{file}:{}", index + 1);
        let rest = &line[at + tag.len()..];
        let rest = rest.split("*/").next().unwrap_or(rest);
        let words = rest.split_whitespace().collect();
        Some(
            u32::try_from(index + 1)
                .map(|n| (n, where_.clone(), words))
                .map_err(|_| format!("{where_}: line too far")),
        )
    })
}

/// Parses the markers of one source text. `file` is the name they are reported under.
pub fn parse_markers(file: &str, text: &str) -> Result<Vec<Marker>, String> {
    let mut found = Vec::new();
    for tagged in tagged_lines(file, text, "LEAK:") {
        let (line, where_, words) = tagged?;
        let number = |i: usize, what: &str| -> Result<u64, String> {
            let word = words
                .get(i)
                .ok_or_else(|| format!("{where_}: LEAK marker without {what}"))?;
            word.replace(',', "")
                .parse()
                .map_err(|_| format!("{where_}: LEAK marker: {what} {word:?} is not a number"))
        };
        let blocks = number(0, "a block count")?;
        let size = number(1, "a block size")?;
        let kind = match words.get(2) {
            None => None,
            Some(kind) if KINDS.contains(kind) => Some(kind.to_string()),
            Some(other) => return Err(format!("{where_}: LEAK marker: unknown kind {other:?}")),
        };
        if words.len() > 3 {
            return Err(format!(
                "{where_}: LEAK marker: unexpected {:?}",
                &words[3..]
            ));
        }
        found.push(Marker {
            file: file.to_string(),
            line,
            blocks,
            bytes: blocks * size,
            kind,
        });
    }
    Ok(found)
}

/// Reads a source file and parses it with `parse` under its file name.
fn read_markers<T>(source: &Path, parse: fn(&str, &str) -> Result<Vec<T>, String>) -> Vec<T> {
    let text = fs::read_to_string(source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let name = source
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    parse(name, &text).unwrap_or_else(|e| panic!("{e}"))
}

/// The `LEAK:` markers of a source file.
pub fn markers(source: &Path) -> Vec<Marker> {
    read_markers(source, parse_markers)
}

/// Parses an `EXPECT-TOTALS:` line, if the text has one.
pub fn parse_expected_totals(text: &str) -> Result<Option<Totals>, String> {
    let Some(line) = text.lines().find(|l| l.contains("EXPECT-TOTALS:")) else {
        return Ok(None);
    };
    let rest = &line[line.find("EXPECT-TOTALS:").unwrap_or(0) + "EXPECT-TOTALS:".len()..];
    let rest = rest.split("*/").next().unwrap_or(rest);
    let mut totals = Totals::default();
    let mut seen = 0;
    for pair in rest.split_whitespace() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("EXPECT-TOTALS: bad {pair:?}"))?;
        let value: u64 = value
            .parse()
            .map_err(|_| format!("EXPECT-TOTALS: bad number in {pair:?}"))?;
        let slot = match key {
            "allocs" => &mut totals.allocs,
            "frees" => &mut totals.frees,
            "bytes_allocated" => &mut totals.bytes_allocated,
            "live_blocks" => &mut totals.live_blocks,
            "live_bytes" => &mut totals.live_bytes,
            _ => return Err(format!("EXPECT-TOTALS: unknown {key:?}")),
        };
        *slot = value;
        seen += 1;
    }
    if seen != 5 {
        return Err(
            "EXPECT-TOTALS: give all of allocs, frees, bytes_allocated, live_blocks, live_bytes"
                .into(),
        );
    }
    Ok(Some(totals))
}

/// The `EXPECT-TOTALS:` of a source file, if it has one.
pub fn expected_totals(source: &Path) -> Option<Totals> {
    let text = fs::read_to_string(source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    parse_expected_totals(&text).unwrap_or_else(|e| panic!("{}: {e}", source.display()))
}

/// One `FRAME: <count> <function>` marker: a leak's stack passes through this line
/// `count` times in a row, in `function` (the function as the report names it,
/// compared up to its first `(` so that C++ parameters need not be spelled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameMarker {
    pub file: String,
    pub line: u32,
    pub count: usize,
    pub function: String,
}

/// Parses the `FRAME:` markers of one source text.
pub fn parse_frame_markers(file: &str, text: &str) -> Result<Vec<FrameMarker>, String> {
    let mut found = Vec::new();
    for tagged in tagged_lines(file, text, "FRAME:") {
        let (line, where_, words) = tagged?;
        let [count, function] = words[..] else {
            return Err(format!(
                "{where_}: FRAME marker is not `<count> <function>`"
            ));
        };
        found.push(FrameMarker {
            file: file.to_string(),
            line,
            count: count
                .parse()
                .map_err(|_| format!("{where_}: FRAME count {count:?} is not a number"))?,
            function: function.to_string(),
        });
    }
    Ok(found)
}

/// The `FRAME:` markers of a source file.
pub fn frame_markers(source: &Path) -> Vec<FrameMarker> {
    read_markers(source, parse_frame_markers)
}

/// One `BAD-FREE: <kind>` marker: the call on this line is a bad free of that kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFreeMarker {
    pub file: String,
    pub line: u32,
    pub kind: String,
}

/// Parses the `BAD-FREE:` markers of one source text.
pub fn parse_bad_free_markers(file: &str, text: &str) -> Result<Vec<BadFreeMarker>, String> {
    let mut found = Vec::new();
    for tagged in tagged_lines(file, text, "BAD-FREE:") {
        let (line, where_, words) = tagged?;
        let [kind] = words[..] else {
            return Err(format!("{where_}: BAD-FREE marker is not `<kind>`"));
        };
        if !["double_free", "invalid_free", "mismatched_free"].contains(&kind) {
            return Err(format!("{where_}: BAD-FREE marker: unknown kind {kind:?}"));
        }
        found.push(BadFreeMarker {
            file: file.to_string(),
            line,
            kind: kind.to_string(),
        });
    }
    Ok(found)
}

/// The `BAD-FREE:` markers of a source file.
pub fn bad_free_markers(source: &Path) -> Vec<BadFreeMarker> {
    read_markers(source, parse_bad_free_markers)
}

/// The 1-based line of `source` holding the marker `TAG: name` (for example
/// `BREAK: main`); panics when there is none or more than one.
pub fn marker_line(source: &Path, tag: &str, name: &str) -> u32 {
    let text = fs::read_to_string(source)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", source.display()));
    let file = source.display().to_string();
    let found: Vec<u32> = tagged_lines(&file, &text, &format!("{tag}:"))
        .filter_map(Result::ok)
        .filter(|(_, _, words)| words.first() == Some(&name))
        .map(|(line, _, _)| line)
        .collect();
    match found[..] {
        [line] => line,
        _ => panic!("{file}: want one `{tag}: {name}` marker, found {found:?}"),
    }
}
