//! Whole stacks compared with valgrind's: every memtrace leak entry has a valgrind
//! loss record (or several, one per kind) with the same frames, and the same blocks
//! and bytes in all.
//!
//! Frames are compared by what both sides can know: `file:line` where both have it,
//! else the function name, else the object. valgrind's unwinder runs past the
//! outermost frame (`_start`) into words that are not return addresses (`???` with no
//! object); its stack is cut there, and ours, which stops at the outermost frame,
//! must have the same length.
//!
//! One difference is the environment's, not the tools': valgrind 3.19 does not
//! implement the clone3 system call, so under it glibc starts threads with clone. A
//! thread's outermost frame is `clone3 (clone3.S:..)` natively and `clone (clone.S:..)`
//! under valgrind; both count as [`Sym::ThreadStart`].

use super::basename;
use super::markers::FrameMarker;
use super::report::{Frame, Leak};
use super::valgrind::{LossRecord, VgFrame};

/// A frame as both sides can describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sym {
    Line(String, u32),
    Function(String),
    /// Only the object is known (valgrind's `??? (in /lib/x.so)`).
    Object(Option<String>),
    /// glibc's clone or clone3, where a thread starts.
    ThreadStart,
}

impl Sym {
    /// Equal as far as the less knowing side can tell: a valgrind frame with only an
    /// object matches any frame in that object.
    fn matches(&self, ours: &Sym, our_object: Option<&str>) -> bool {
        match self {
            Sym::Object(object) => object.as_deref() == our_object.map(basename),
            other => other == ours,
        }
    }
}

/// `__libc_start_main@@GLIBC_2.34` -> `__libc_start_main`.
fn plain(function: &str) -> String {
    function.split('@').next().unwrap_or(function).to_string()
}

/// `clone3.S:81` and `clone.S:100` are both where a thread starts.
fn thread_start(file: &str) -> bool {
    matches!(basename(file), "clone.S" | "clone3.S")
}

fn ours(f: &Frame) -> Sym {
    match (&f.file, f.line, &f.function) {
        (Some(file), Some(_), _) if thread_start(file) => Sym::ThreadStart,
        (Some(file), Some(line), _) => Sym::Line(basename(file).to_string(), line as u32),
        (_, _, Some(function)) => Sym::Function(plain(function)),
        _ => Sym::Object(f.object.as_deref().map(|o| basename(o).to_string())),
    }
}

fn theirs(f: &VgFrame) -> Sym {
    match (&f.file, f.line) {
        (Some(file), Some(_)) if thread_start(file) => Sym::ThreadStart,
        (Some(file), Some(line)) => Sym::Line(basename(file).to_string(), line),
        _ if f.function != "???" => Sym::Function(plain(&f.function)),
        _ => Sym::Object(f.object.as_deref().map(|o| basename(o).to_string())),
    }
}

/// valgrind's stack without its allocator frames and without what lies past the
/// outermost frame.
pub fn valgrind_stack(record: &LossRecord) -> Vec<&VgFrame> {
    record
        .frames
        .iter()
        .skip_while(|f| f.is_valgrind_allocator())
        .take_while(|f| !(f.function == "???" && f.object.is_none()))
        .collect()
}

fn same_stack(leak: &Leak, record: &LossRecord) -> bool {
    let vg = valgrind_stack(record);
    vg.len() == leak.stack.len()
        && vg
            .iter()
            .zip(&leak.stack)
            .all(|(v, o)| theirs(v).matches(&ours(o), o.object.as_deref()))
}

fn describe_leak(leak: &Leak) -> String {
    let frames: Vec<String> = leak
        .stack
        .iter()
        .map(|f| format!("    {}", f.short()))
        .collect();
    format!(
        "{} blocks, {} bytes:\n{}",
        leak.blocks,
        leak.bytes,
        frames.join("\n")
    )
}

fn describe_record(record: &LossRecord) -> String {
    let frames: Vec<String> = valgrind_stack(record)
        .iter()
        .map(|f| format!("    {:?}", theirs(f)))
        .collect();
    format!(
        "{} {} blocks, {} bytes:\n{}",
        record.kind,
        record.blocks,
        record.bytes,
        frames.join("\n")
    )
}

/// Every leak entry's stack is a valgrind loss record's with the same blocks and
/// bytes (summed over kinds), and every loss record is some leak entry's.
pub fn compare_stacks(leaks: &[Leak], records: &[LossRecord]) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut used = vec![false; records.len()];
    for leak in leaks {
        let matching: Vec<usize> = (0..records.len())
            .filter(|&i| !used[i] && same_stack(leak, &records[i]))
            // A classified leak is one record of valgrind's: same stack, same kind.
            .filter(|&i| leak.kind == "unclassified" || leak.kind == records[i].kind)
            .collect();
        let blocks: u64 = matching.iter().map(|&i| records[i].blocks).sum();
        let bytes: u64 = matching.iter().map(|&i| records[i].bytes).sum();
        if matching.is_empty() {
            problems.push(format!(
                "no valgrind record has the stack of {}",
                describe_leak(leak)
            ));
        } else if (blocks, bytes) != (leak.blocks, leak.bytes) {
            problems.push(format!(
                "valgrind has {blocks} blocks, {bytes} bytes for {}",
                describe_leak(leak)
            ));
        }
        for i in matching {
            used[i] = true;
        }
    }
    for (i, record) in records.iter().enumerate() {
        if !used[i] {
            problems.push(format!(
                "no memtrace leak has the stack of valgrind's {}",
                describe_record(record)
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n\n"))
    }
}

/// The frames of the leaks' stacks that lie in a fixture's sources agree with its
/// `FRAME:` markers: after each stack's first frame, every frame in `sources` is at a
/// marker's line, in its function, repeated exactly the marker's count in a row; and
/// every marker is passed through by some stack.
pub fn check_frames(leaks: &[Leak], markers: &[FrameMarker]) -> Result<(), String> {
    let sources: Vec<&str> = markers.iter().map(|m| m.file.as_str()).collect();
    let mut problems = Vec::new();
    let mut seen = vec![false; markers.len()];
    for leak in leaks {
        // Runs of consecutive frames at one file:line, after the first frame.
        let mut runs: Vec<(&Frame, usize)> = Vec::new();
        for frame in leak.stack.iter().skip(1) {
            let here = (frame.file.as_deref().map(basename), frame.line);
            match runs.last_mut() {
                Some((first, count))
                    if (first.file.as_deref().map(basename), first.line) == here =>
                {
                    *count += 1
                }
                _ => runs.push((frame, 1)),
            }
        }
        for (frame, count) in runs {
            let Some(file) = frame.file.as_deref().map(basename) else {
                continue;
            };
            if !sources.contains(&file) {
                continue;
            }
            let at = markers
                .iter()
                .position(|m| m.file == file && Some(u64::from(m.line)) == frame.line);
            let Some(i) = at else {
                problems.push(format!("a frame at no FRAME marker: {}", frame.short()));
                continue;
            };
            let marker = &markers[i];
            seen[i] = true;
            let function = frame.function.as_deref().unwrap_or("?");
            let name = function.split('(').next().unwrap_or(function);
            if name != marker.function || count != marker.count {
                problems.push(format!(
                    "{}:{}: marker says {} frames of {}; the stack has {count} of {function}",
                    marker.file, marker.line, marker.count, marker.function
                ));
            }
        }
    }
    for (marker, seen) in markers.iter().zip(seen) {
        if !seen {
            problems.push(format!(
                "{}:{}: no leak's stack passes through this FRAME marker",
                marker.file, marker.line
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// `remember.constprop.0` -> `remember`: valgrind names a function by its symbol, which
/// for a copy GCC specialised carries a suffix; memtrace names it by its DWARF name,
/// the one in the source.
fn without_clone_suffix(name: &str) -> &str {
    [".constprop.", ".isra.", ".part.", ".cold"]
        .iter()
        .filter_map(|s| name.find(s))
        .min()
        .map_or(name, |at| &name[..at])
}

/// Where valgrind names a frame in one of `sources`, memtrace names it the same
/// (demangled C++ included). Stacks are paired as [`compare_stacks`] pairs them.
pub fn compare_names(
    leaks: &[Leak],
    records: &[LossRecord],
    sources: &[&str],
) -> Result<(), String> {
    let mut problems = Vec::new();
    for leak in leaks {
        let Some(record) = records.iter().find(|r| same_stack(leak, r)) else {
            continue;
        };
        for (v, o) in valgrind_stack(record).iter().zip(&leak.stack) {
            let in_sources = o
                .file
                .as_deref()
                .is_some_and(|f| sources.contains(&basename(f)));
            let named_alike = o.function.as_deref().is_some_and(|name| {
                name == v.function || name == without_clone_suffix(&v.function)
            });
            if in_sources && !named_alike {
                problems.push(format!(
                    "valgrind names {} where memtrace says {}",
                    v.function,
                    o.short()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Where valgrind names a frame for which `here` holds, memtrace names it the same,
/// a symbol's version left out (`dlopen@@GLIBC_2.34` is `dlopen`). Stacks are paired
/// as [`compare_stacks`] pairs them. Returns how many frames were compared.
pub fn compare_names_where(
    leaks: &[Leak],
    records: &[LossRecord],
    here: impl Fn(&Frame) -> bool,
) -> Result<usize, String> {
    let mut problems = Vec::new();
    let mut compared = 0;
    for leak in leaks {
        let Some(record) = records.iter().find(|r| same_stack(leak, r)) else {
            continue;
        };
        for (v, o) in valgrind_stack(record).iter().zip(&leak.stack) {
            if v.function == "???" || !here(o) {
                continue;
            }
            compared += 1;
            if o.function.as_deref().map(plain) != Some(plain(&v.function)) {
                problems.push(format!(
                    "valgrind names {} where memtrace says {}",
                    v.function,
                    o.short()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(compared)
    } else {
        Err(problems.join("\n"))
    }
}
