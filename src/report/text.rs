//! The report as text, in valgrind memcheck's layout, so that people (and their grep
//! habits) read it without learning a new format.

use super::{HeapError, JsonFrame, Leak, Report, Suppressed};
use crate::suppress::generate;
use std::fmt::Write;

/// Leak kinds in valgrind's order, with its words for them.
const KINDS: [(&str, &str); 5] = [
    ("definite", "definitely lost"),
    ("indirect", "indirectly lost"),
    ("possible", "possibly lost"),
    ("reachable", "still reachable"),
    ("unclassified", "unclassified"),
];

/// Renders the whole report; every line starts with `==PID== `.
pub fn render_text(report: &Report) -> String {
    render_text_with(report, false)
}

/// The same, with `gen_suppressions`: after each finding, the suppression that hides
/// it (`--gen-suppressions`), unprefixed, ready to paste, as valgrind prints them.
pub fn render_text_with(report: &Report, gen_suppressions: bool) -> String {
    let mut out = Lines {
        prefix: format!("=={}== ", report.target.pid),
        text: String::new(),
    };
    for e in &report.errors {
        render_error(&mut out, e);
        if gen_suppressions {
            out.text.push_str(&generate::for_error(e).text());
        }
    }
    render_summary(&mut out, report);
    // Ages matter when the trace saw only part of the program's life.
    let ages = report.target.mode == "attach" || report.min_age_ms.is_some();
    for (i, leak) in report.leaks.iter().enumerate() {
        render_leak(&mut out, leak, i + 1, report.leaks.len());
        if ages {
            render_ages(&mut out, leak, report.min_age_ms);
        }
        out.line("");
        if gen_suppressions {
            out.text.push_str(&generate::for_leak(leak).text());
        }
    }
    render_leak_summary(&mut out, &report.leaks, &report.suppressed);
    let detached = report.end.how == "detached";
    for line in
        super::mappings::text_lines(&report.mappings, report.mapping_totals.as_ref(), detached)
    {
        out.line(&line);
    }
    render_footer(&mut out, report);
    out.text
}

/// Accumulates prefixed lines.
struct Lines {
    prefix: String,
    text: String,
}

impl Lines {
    fn line(&mut self, s: &str) {
        self.text.push_str(&self.prefix);
        self.text.push_str(s);
        self.text.push('\n');
    }

    fn stack(&mut self, frames: &[JsonFrame]) {
        if frames.is_empty() {
            self.line("   (no stack)");
        }
        for (i, f) in frames.iter().enumerate() {
            let word = if i == 0 { "at" } else { "by" };
            self.line(&format!(
                "   {word} {}: {}",
                upper_hex(&f.address),
                frame_text(f)
            ));
        }
    }
}

/// valgrind's layout: the bad call, the address and where it lies, then the stack that
/// tells (the first free of a double free, else the allocation), then the allocation.
fn render_error(out: &mut Lines, e: &HeapError) {
    let title = match e.kind.as_str() {
        "double_free" | "invalid_free" => "Invalid free() / delete / delete[] / realloc()",
        "mismatched_free" => "Mismatched free() / delete / delete []",
        other => other,
    };
    out.line(title);
    out.stack(&e.stack);
    out.line(&format!(" Address {} {}", e.address, e.description));
    if !e.first_free_stack.is_empty() {
        out.stack(&e.first_free_stack);
        if !e.alloc_stack.is_empty() {
            out.line(" Block was alloc'd at");
            out.stack(&e.alloc_stack);
        }
    } else if !e.alloc_stack.is_empty() {
        out.stack(&e.alloc_stack);
    }
    if e.count > 1 {
        out.line(&format!(" (seen {} times)", thousands(e.count)));
    }
    out.line("");
}

fn render_summary(out: &mut Lines, r: &Report) {
    let t = &r.totals;
    out.line("HEAP SUMMARY:");
    out.line(&format!(
        "{:>18}: {} bytes in {} blocks",
        if r.end.how == "detached" {
            "in use at detach"
        } else {
            "in use at exit"
        },
        thousands(t.live_bytes),
        thousands(t.live_blocks)
    ));
    out.line(&format!(
        "{:>18}: {} allocs, {} frees, {} bytes allocated",
        "total heap usage",
        thousands(t.allocs),
        thousands(t.frees),
        thousands(t.bytes_allocated)
    ));
    out.line("");
}

fn render_leak(out: &mut Lines, leak: &Leak, n: usize, of: usize) {
    let bytes = if leak.indirect_bytes > 0 {
        // valgrind's words for a lost block that took others with it.
        format!(
            "{} ({} direct, {} indirect)",
            thousands(leak.bytes + leak.indirect_bytes),
            thousands(leak.bytes),
            thousands(leak.indirect_bytes)
        )
    } else {
        thousands(leak.bytes)
    };
    out.line(&format!(
        "{bytes} bytes in {} blocks are {} in loss record {} of {}",
        thousands(leak.blocks),
        kind_words(&leak.kind),
        thousands(n as u64),
        thousands(of as u64)
    ));
    out.stack(&leak.stack);
}

/// ` allocated 0.1 s to 2.9 s into the trace; grows 1,200 B/s (last third: 1,180 B/s);
/// 3 blocks (300 bytes) are older than 1 s`
fn render_ages(out: &mut Lines, leak: &Leak, min_age_ms: Option<u64>) {
    let secs = |ms: u64| format!("{}.{:01}", ms / 1000, (ms % 1000) / 100);
    let mut line = format!(
        " allocated {} s to {} s into the trace; grows {} B/s (last third: {} B/s)",
        secs(leak.first_alloc_ms),
        secs(leak.last_alloc_ms),
        thousands(leak.growth_bytes_per_sec),
        thousands(leak.recent_growth_bytes_per_sec)
    );
    if let (Some(old), Some(min)) = (leak.older_than_min_age, min_age_ms) {
        let _ = write!(
            line,
            "; {} blocks ({} bytes) older than {} s",
            thousands(old.blocks),
            thousands(old.bytes),
            secs(min)
        );
    }
    out.line(&line);
}

fn render_leak_summary(out: &mut Lines, leaks: &[Leak], suppressed: &[Suppressed]) {
    let hidden = suppressed
        .iter()
        .fold((0, 0), |(n, b), s| (n + s.blocks, b + s.bytes));
    if leaks.is_empty() && hidden.0 == 0 {
        out.line("All heap blocks were freed -- no leaks are possible");
        out.line("");
        return;
    }
    out.line("LEAK SUMMARY:");
    // Known kinds in valgrind's order, then any kind this version does not know.
    let mut kinds: Vec<&str> = KINDS.iter().map(|(k, _)| *k).collect();
    for l in leaks {
        if !kinds.contains(&l.kind.as_str()) {
            kinds.push(&l.kind);
        }
    }
    for kind in kinds {
        if !leaks.iter().any(|l| l.kind == kind) {
            continue;
        }
        let of_kind = leaks.iter().filter(|l| l.kind == kind);
        let (blocks, bytes) = of_kind.fold((0, 0), |(n, b), l| (n + l.blocks, b + l.bytes));
        out.line(&format!(
            "{:>18}: {} bytes in {} blocks",
            kind_words(kind),
            thousands(bytes),
            thousands(blocks)
        ));
    }
    if !suppressed.is_empty() {
        out.line(&format!(
            "{:>18}: {} bytes in {} blocks",
            "suppressed",
            thousands(hidden.1),
            thousands(hidden.0)
        ));
    }
    out.line("");
}

/// How the calls were recorded and what it took: the stacks unwound and those never
/// needed, and the program's waits for room in the ring.
fn recording_line(rec: &crate::tracer::RecordStats) -> String {
    let mode = match rec.mode {
        crate::tracer::RecordMode::Inline => "recorded inline",
        crate::tracer::RecordMode::Stops => "recorded at a stop each (--stops)",
    };
    let mut line = format!(
        "{} allocator calls {mode}; stacks unwound: {}, never needed: {}",
        thousands(rec.calls),
        thousands(rec.stacks_unwound),
        thousands(rec.stacks_never_needed)
    );
    if rec.ring_waits > 0 {
        line.push_str(&format!(
            "; the program waited for memtrace {} times ({} ms)",
            thousands(rec.ring_waits),
            thousands(rec.ring_wait_ns / 1_000_000)
        ));
    }
    line
}

fn render_footer(out: &mut Lines, r: &Report) {
    // valgrind's `-s` lines: which suppressions were used, how often.
    for s in &r.suppressed {
        out.line(&format!(
            "used_suppression: {:>6} {}{}{}",
            thousands(s.count),
            s.name,
            if s.origin.is_empty() { "" } else { " " },
            s.origin
        ));
    }
    if !r.errors.is_empty() {
        let total: u64 = r.errors.iter().map(|e| e.count).sum();
        out.line(&format!(
            "ERROR SUMMARY: {} errors from {} contexts",
            thousands(total),
            thousands(r.errors.len() as u64)
        ));
    }
    if r.stats.truncated_stacks > 0 {
        out.line(&format!(
            "{} of {} distinct stacks are cut short (--depth limit or failed unwind)",
            thousands(r.stats.truncated_stacks),
            thousands(r.stats.distinct_stacks)
        ));
    }
    if let Some(scan) = &r.scan {
        let when = match scan.when {
            crate::tracer::ScanWhen::Exit => "at exit",
            crate::tracer::ScanWhen::ExitEvent => "at the exiting thread's last stop",
            crate::tracer::ScanWhen::OnDemand => "on demand",
        };
        out.line(&format!(
            "leak kinds from a reachability scan {when}: {} blocks, {} bytes read in {} ms",
            thousands(scan.blocks),
            thousands(scan.bytes_scanned),
            thousands(scan.ns / 1_000_000)
        ));
    }
    if let Some(why) = &r.scan_missing {
        out.line(&format!(
            "leaks are unclassified: no reachability scan ({why})"
        ));
    }
    if let Some(rec) = r.trace.as_ref().and_then(|t| t.recording.as_ref()) {
        out.line(&recording_line(rec));
    }
    if r.target.images.len() > 1 {
        let chain: Vec<&str> = r.target.images.iter().map(|i| i.exe.as_str()).collect();
        out.line(&format!(
            "the process ran {} images: {}; this report covers the last",
            r.target.images.len(),
            chain.join(" -> ")
        ));
    }
    let end = match (r.end.how.as_str(), r.end.code, &r.end.signal) {
        ("exited", Some(code), _) => format!("program exited with status {code}"),
        ("signaled", _, Some(sig)) => format!("program killed by {sig}"),
        ("detached", _, _) => "detached; the program runs on".to_string(),
        (how, _, _) => format!("program {how}"),
    };
    out.line(&format!("memtrace: {end}"));
}

fn kind_words(kind: &str) -> &str {
    KINDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, words)| *words)
        .unwrap_or(kind)
}

/// `make_leak (leak.c:12)`, `malloc+0x1c (in /lib/libc.so.6)`, `??? (in /lib/x.so)`.
pub fn frame_text(f: &JsonFrame) -> String {
    let mut s = match (&f.function, f.symbol_offset) {
        (Some(func), Some(off)) if f.file.is_none() && off > 0 => format!("{func}+{off:#x}"),
        (Some(func), _) => func.clone(),
        (None, _) => "???".to_string(),
    };
    // Like valgrind: the file's base name; the JSON keeps the full path.
    let base = f.file.as_deref().map(|p| p.rsplit('/').next().unwrap_or(p));
    match (base, f.line, &f.object) {
        (Some(file), Some(line), _) => write!(s, " ({file}:{line})"),
        (Some(file), None, _) => write!(s, " ({file})"),
        (None, _, Some(obj)) => write!(s, " (in {obj})"),
        (None, _, None) => Ok(()),
    }
    .unwrap_or(());
    s
}

/// `0x55d0c0a01182` as valgrind prints addresses: `0x55D0C0A01182`.
pub(super) fn upper_hex(address: &str) -> String {
    match address.strip_prefix("0x") {
        Some(digits) => format!("0x{}", digits.to_ascii_uppercase()),
        None => address.to_string(),
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::{check_golden, sample};
    use crate::report::End;

    #[test]
    fn golden_text() {
        check_golden("report.txt", &render_text(&sample()));
    }

    #[test]
    fn golden_text_no_leaks() {
        let mut r = sample();
        r.leaks.clear();
        r.totals.live_blocks = 0;
        r.totals.live_bytes = 0;
        r.errors.clear();
        r.stats.truncated_stacks = 0;
        if let Some(scan) = &mut r.scan {
            scan.blocks = 0;
            scan.block_bytes = 0;
            scan.bytes_scanned = scan.roots_bytes;
        }
        r.end = End::exited(0);
        check_golden("report-clean.txt", &render_text(&r));
    }

    #[test]
    fn numbers_have_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(u64::MAX), "18,446,744,073,709,551,615");
    }

    #[test]
    fn frames_render_with_what_is_known() {
        let f = |function: Option<&str>, file: Option<&str>, line, object: Option<&str>, off| {
            frame_text(&JsonFrame {
                address: "0x1".into(),
                function: function.map(String::from),
                file: file.map(String::from),
                line,
                object: object.map(String::from),
                inlined: false,
                mangled: None,
                symbol_offset: off,
            })
        };
        assert_eq!(
            f(Some("main"), Some("/s/a.c"), Some(3), Some("/a"), None),
            "main (a.c:3)"
        );
        assert_eq!(
            f(Some("g"), None, None, Some("/l.so"), Some(0x1c)),
            "g+0x1c (in /l.so)"
        );
        assert_eq!(
            f(Some("g"), None, None, Some("/l.so"), None),
            "g (in /l.so)"
        );
        assert_eq!(f(None, None, None, Some("/l.so"), None), "??? (in /l.so)");
        assert_eq!(f(None, None, None, None, None), "???");
        assert_eq!(upper_hex("0x55d0c0a0116e"), "0x55D0C0A0116E");
    }

    #[test]
    fn a_missing_scan_says_why() {
        let mut r = sample();
        r.scan = None;
        r.scan_missing = Some("killed by SIGKILL".into());
        let text = render_text(&r);
        assert!(text.contains(
            "==1234== leaks are unclassified: no reachability scan (killed by SIGKILL)\n"
        ));
        assert!(!text.contains("reachability scan at exit"));
    }

    #[test]
    fn suppressed_findings_are_summed_and_named() {
        let mut r = sample();
        let supps = crate::suppress::Suppressions {
            list: crate::suppress::parse::parse(
                "{\n every leak\n Memcheck:Leak\n ...\n}\n",
                "s.supp",
            )
            .expect("parse"),
        };
        crate::suppress::apply::apply(&mut r, &supps);
        let text = render_text(&r);
        assert!(!text.contains("All heap blocks were freed"), "{text}");
        assert!(
            text.contains(
                "==1234== LEAK SUMMARY:\n==1234==         suppressed: 1,178 bytes in 4 blocks\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("==1234== used_suppression:      3 every leak s.supp:1\n"),
            "{text}"
        );
    }

    #[test]
    fn generated_suppressions_follow_their_findings() {
        let r = sample();
        let text = render_text_with(&r, true);
        let leak = text.find("in loss record 1 of 3").expect("record");
        let supp = text[leak..]
            .find("{\n   <insert_a_suppression_name_here>\n   Memcheck:Leak\n   match-leak-kinds: definite\n   fun:malloc\n")
            .expect("suppression after the record");
        let next = text[leak..]
            .find("in loss record 2 of 3")
            .expect("next record");
        assert!(supp < next);
        assert!(text.starts_with("==1234== Invalid free()"));
        assert!(text
            .contains("\n{\n   <insert_a_suppression_name_here>\n   Memcheck:Free\n   fun:free\n"));
        assert!(!render_text(&r).contains("insert_a_suppression"));
    }

    #[test]
    fn end_lines() {
        let mut r = sample();
        r.end = End::exited(3);
        assert!(render_text(&r).ends_with("==1234== memtrace: program exited with status 3\n"));
        r.end = End::detached();
        assert!(render_text(&r).ends_with("==1234== memtrace: detached; the program runs on\n"));
    }
}
