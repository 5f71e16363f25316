//! The report in valgrind memcheck's XML (protocol 4, as `valgrind --xml=yes` writes
//! it), so that what parses valgrind's XML (CI plugins, IDEs, scripts) reads
//! memtrace's leaks and errors unchanged.
//!
//! What valgrind knows and memtrace does not is filled in plainly: the parent pid is
//! 0, an error's thread is 1, the allocator's frame has address 0 (valgrind's is in
//! its own preloaded object). Leaks keep memtrace's order (largest first, as in the
//! text report); an `unclassified` leak (no reachability scan) is a
//! `Leak_DefinitelyLost`, the kind `--error-exitcode` takes it for, and its text says
//! unclassified.

use super::text::thousands;
use super::{HeapError, JsonFrame, Leak, Report};
use crate::suppress::frames::allocator_frames;
use crate::suppress::generate::{self, Generated, NAME};
use crate::suppress::LeakKind;
use crate::symbols::demangle;
use std::fmt::Write;

/// The whole XML document; with `gen_suppressions`, each error carries its
/// suppression as valgrind's `--gen-suppressions=all` adds it. Only leaks of
/// `kinds` are listed (valgrind's `--show-leak-kinds`), numbered among all of them
/// as valgrind numbers its loss records.
pub fn render_xml(report: &Report, gen_suppressions: bool, kinds: &[LeakKind]) -> String {
    let mut x = String::new();
    x.push_str("<?xml version=\"1.0\"?>\n\n<valgrindoutput>\n\n");
    x.push_str("<protocolversion>4</protocolversion>\n<protocoltool>memcheck</protocoltool>\n\n");
    x.push_str("<preamble>\n");
    let command = report.target.argv.join(" ");
    for line in [
        "memtrace, a memory-leak debugger, in memcheck's XML format",
        &format!("Command: {command}"),
    ] {
        let _ = writeln!(x, "  <line>{}</line>", esc(line));
    }
    x.push_str("</preamble>\n\n");
    let _ = writeln!(
        x,
        "<pid>{}</pid>\n<ppid>0</ppid>\n<tool>memcheck</tool>\n",
        report.target.pid
    );
    render_args(&mut x, report);
    status(&mut x, "RUNNING", 0);
    let mut unique = 0u64;
    let mut counts = Vec::new();
    for e in &report.errors {
        render_error(&mut x, e, unique, gen_suppressions);
        counts.push((e.count, unique));
        unique += 1;
    }
    status(&mut x, "FINISHED", report.duration_ms);
    let shown = |l: &Leak| LeakKind::of_report(&l.kind).is_none_or(|k| kinds.contains(&k));
    for (i, leak) in report.leaks.iter().enumerate().filter(|(_, l)| shown(l)) {
        render_leak(
            &mut x,
            leak,
            unique,
            (i + 1, report.leaks.len()),
            gen_suppressions,
        );
        unique += 1;
    }
    x.push_str("<errorcounts>\n");
    for (count, u) in counts {
        let _ = writeln!(
            x,
            "  <pair>\n    <count>{count}</count>\n    <unique>{u:#x}</unique>\n  </pair>"
        );
    }
    x.push_str("</errorcounts>\n\n<suppcounts>\n");
    for s in &report.suppressed {
        let _ = writeln!(
            x,
            "  <pair>\n    <count>{}</count>\n    <name>{}</name>\n  </pair>",
            s.count,
            esc(&s.name)
        );
    }
    x.push_str("</suppcounts>\n\n</valgrindoutput>\n\n");
    x
}

/// memtrace's own command in `vargv`, the program's in `argv`.
fn render_args(x: &mut String, report: &Report) {
    x.push_str("<args>\n  <vargv>\n    <exe>memtrace</exe>\n");
    let _ = writeln!(x, "    <arg>{}</arg>", esc(&report.target.mode));
    x.push_str("  </vargv>\n  <argv>\n");
    let mut argv = report.target.argv.iter();
    if let Some(exe) = argv.next() {
        let _ = writeln!(x, "    <exe>{}</exe>", esc(exe));
    }
    for a in argv {
        let _ = writeln!(x, "    <arg>{}</arg>", esc(a));
    }
    x.push_str("  </argv>\n</args>\n\n");
}

/// `<status>` with valgrind's `DD:HH:MM:SS.mmm ` elapsed time.
fn status(x: &mut String, state: &str, ms: u64) {
    let (s, ms) = (ms / 1000, ms % 1000);
    let _ = writeln!(
        x,
        "<status>\n  <state>{state}</state>\n  <time>{:02}:{:02}:{:02}:{:02}.{ms:03} </time>\n</status>\n",
        s / 86400,
        s / 3600 % 24,
        s / 60 % 60,
        s % 60
    );
}

fn leak_kind(kind: &str) -> (&'static str, &'static str) {
    match kind {
        "indirect" => ("Leak_IndirectlyLost", "indirectly lost"),
        "possible" => ("Leak_PossiblyLost", "possibly lost"),
        "reachable" => ("Leak_StillReachable", "still reachable"),
        "definite" => ("Leak_DefinitelyLost", "definitely lost"),
        _ => ("Leak_DefinitelyLost", "unclassified (no reachability scan)"),
    }
}

fn render_leak(x: &mut String, leak: &Leak, unique: u64, (n, of): (usize, usize), gen: bool) {
    let (kind, words) = leak_kind(&leak.kind);
    let total = leak.bytes + leak.indirect_bytes;
    let bytes = if leak.indirect_bytes > 0 {
        format!(
            "{} ({} direct, {} indirect)",
            thousands(total),
            thousands(leak.bytes),
            thousands(leak.indirect_bytes)
        )
    } else {
        thousands(leak.bytes)
    };
    let text = format!(
        "{bytes} bytes in {} blocks are {words} in loss record {} of {}",
        thousands(leak.blocks),
        thousands(n as u64),
        thousands(of as u64)
    );
    let _ = writeln!(
        x,
        "<error>\n  <unique>{unique:#x}</unique>\n  <tid>1</tid>\n  <kind>{kind}</kind>\n  <xwhat>\n    <text>{}</text>\n    <leakedbytes>{total}</leakedbytes>\n    <leakedblocks>{}</leakedblocks>\n  </xwhat>",
        esc(&text),
        leak.blocks
    );
    stack(x, leak.allocator.as_deref(), &leak.stack);
    if gen {
        suppression(x, &generate::for_leak(leak));
    }
    x.push_str("</error>\n\n");
}

fn render_error(x: &mut String, e: &HeapError, unique: u64, gen: bool) {
    let (kind, what) = match e.kind.as_str() {
        "mismatched_free" => ("MismatchedFree", "Mismatched free() / delete / delete []"),
        _ => (
            "InvalidFree",
            "Invalid free() / delete / delete[] / realloc()",
        ),
    };
    let _ = writeln!(
        x,
        "<error>\n  <unique>{unique:#x}</unique>\n  <tid>1</tid>\n  <kind>{kind}</kind>\n  <what>{what}</what>"
    );
    stack(x, e.deallocator.as_deref(), &e.stack);
    // valgrind's words stop at "alloc'd" / "free'd"; memtrace's description may say
    // by which functions after that.
    let description = match e.description.find("alloc'd") {
        Some(i) => &e.description[..i + "alloc'd".len()],
        None => &e.description,
    };
    auxwhat(x, &format!("Address {} {description}", e.address));
    if !e.first_free_stack.is_empty() {
        stack(x, e.first_deallocator.as_deref(), &e.first_free_stack);
        if !e.alloc_stack.is_empty() {
            auxwhat(x, "Block was alloc'd at");
            stack(x, e.allocator.as_deref(), &e.alloc_stack);
        }
    } else if !e.alloc_stack.is_empty() {
        stack(x, e.allocator.as_deref(), &e.alloc_stack);
    }
    if gen {
        suppression(x, &generate::for_error(e));
    }
    x.push_str("</error>\n\n");
}

fn auxwhat(x: &mut String, text: &str) {
    let _ = writeln!(x, "  <auxwhat>{}</auxwhat>", esc(text));
}

/// A `<stack>`: the allocator's frames as valgrind shows them (demangled, as its
/// `<fn>` are), then the program's.
fn stack(x: &mut String, allocator: Option<&str>, frames: &[JsonFrame]) {
    x.push_str("  <stack>\n");
    let alloc = allocator_frames(allocator)
        .into_iter()
        .next()
        .unwrap_or_default();
    for name in alloc {
        let _ = writeln!(
            x,
            "    <frame>\n      <ip>0x0</ip>\n      <fn>{}</fn>\n    </frame>",
            esc(&demangle(name))
        );
    }
    for f in frames {
        frame(x, f);
    }
    x.push_str("  </stack>\n");
}

fn frame(x: &mut String, f: &JsonFrame) {
    let ip = match f.address.strip_prefix("0x") {
        Some(hex) => format!("0x{}", hex.to_ascii_uppercase()),
        None => f.address.clone(),
    };
    let _ = writeln!(x, "    <frame>\n      <ip>{}</ip>", esc(&ip));
    if let Some(obj) = &f.object {
        let _ = writeln!(x, "      <obj>{}</obj>", esc(obj));
    }
    if let Some(func) = &f.function {
        let _ = writeln!(x, "      <fn>{}</fn>", esc(func));
    }
    if let Some(path) = &f.file {
        // valgrind splits the path into a directory and a base name.
        let (dir, file) = match path.rsplit_once('/') {
            Some((d, b)) if !d.is_empty() => (Some(d), b),
            _ => (None, path.as_str()),
        };
        if let Some(d) = dir {
            let _ = writeln!(x, "      <dir>{}</dir>", esc(d));
        }
        let _ = writeln!(x, "      <file>{}</file>", esc(file));
        if let Some(line) = f.line {
            let _ = writeln!(x, "      <line>{line}</line>");
        }
    }
    x.push_str("    </frame>\n");
}

/// valgrind's `<suppression>` element: the entry in parts, and as raw text.
fn suppression(x: &mut String, g: &Generated) {
    let _ = writeln!(
        x,
        "  <suppression>\n    <sname>{NAME}</sname>\n    <skind>{}</skind>",
        g.kind
    );
    if let Some(aux) = &g.aux {
        let _ = writeln!(x, "    <skaux>{}</skaux>", esc(aux));
    }
    for f in &g.frames {
        let (tag, value) = f.split_once(':').unwrap_or(("obj", "*"));
        let _ = writeln!(x, "    <sframe> <{tag}>{}</{tag}> </sframe>", esc(value));
    }
    // `]]>` cannot occur in a name memtrace writes, but a CDATA section must not hold it.
    let raw = g.text().replace("]]>", "]]]]><![CDATA[>");
    let _ = writeln!(
        x,
        "    <rawtext>\n<![CDATA[\n{raw}]]>\n    </rawtext>\n  </suppression>"
    );
}

/// Text escaped for an XML element (quotes need no escape there, and valgrind
/// writes `alloc'd` as it is).
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            // Control characters are not allowed in XML 1.0, even escaped.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
