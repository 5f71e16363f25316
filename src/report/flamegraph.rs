//! An interactive flamegraph (SVG, drawn by inferno) of the live bytes by allocation
//! stack: the width of a frame is the bytes still allocated under it when the trace
//! ended. Click to zoom, Ctrl-F to search, as in every flamegraph.

use super::text::thousands;
use super::{collapsed, Report};
use inferno::flamegraph::color::{BasicPalette, Palette};
use inferno::flamegraph::{self, Options};
use std::io::Write;

/// Writes the flamegraph SVG of `report` to `out`.
pub fn write_flamegraph(report: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let folded = collapsed::live_bytes(report);
    let mut options = Options::default();
    options.title = format!("memtrace: live heap of {}", command(report));
    options.subtitle = Some(format!(
        "{} bytes in {} blocks {} ({})",
        thousands(report.totals.live_bytes),
        thousands(report.totals.live_blocks),
        if report.end.how == "detached" {
            "at detach"
        } else {
            "at exit"
        },
        kinds(report)
    ));
    options.count_name = "bytes".into();
    options.colors = Palette::Basic(BasicPalette::Mem);
    // Colours from the function names, the same in every run: two flamegraphs of one
    // program compare at a glance.
    options.hash = true;
    options.deterministic = true;
    if weightless(&report.leaks) {
        return write_empty(&options, out);
    }
    flamegraph::from_lines(&mut options, folded.lines(), out)
}

/// Nothing to draw: no block live, or only blocks of zero bytes (`malloc(0)`), which
/// have no width. inferno refuses a profile whose counts are all zero ("No stack
/// counts found") after writing an SVG that says ERROR.
fn weightless(leaks: &[super::model::Leak]) -> bool {
    leaks.iter().all(|l| l.bytes == 0)
}

/// A differential flamegraph from `before` to `after`: widths are the later live
/// bytes, red what grew, blue what shrank (hover: by how much).
pub fn write_diff_flamegraph(
    before: &Report,
    after: &Report,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let folded = super::diff::render_collapsed(before, after);
    let mut options = Options::default();
    options.title = format!("memtrace: growth of the live heap of {}", command(after));
    options.subtitle = Some(format!(
        "{} bytes in {} blocks, then {} bytes in {} blocks; red: grew, blue: shrank",
        thousands(before.totals.live_bytes),
        thousands(before.totals.live_blocks),
        thousands(after.totals.live_bytes),
        thousands(after.totals.live_blocks)
    ));
    options.count_name = "bytes".into();
    options.hash = true;
    options.deterministic = true;
    // Widths are the later bytes: nothing to draw when none are left.
    if weightless(&after.leaks) {
        return write_empty(&options, out);
    }
    flamegraph::from_lines(&mut options, folded.lines(), out)
}

/// `./app x`, or `pid 1234` when the command line is unknown.
fn command(report: &Report) -> String {
    if report.target.argv.is_empty() {
        format!("pid {}", report.target.pid)
    } else {
        report.target.argv.join(" ")
    }
}

/// `definite 1,000 bytes, reachable 48 bytes`
fn kinds(report: &Report) -> String {
    let mut parts: Vec<(String, u64)> = Vec::new();
    for l in &report.leaks {
        match parts.iter_mut().find(|(k, _)| *k == l.kind) {
            Some((_, b)) => *b += l.bytes,
            None => parts.push((l.kind.clone(), l.bytes)),
        }
    }
    if parts.is_empty() {
        return "no leaks".into();
    }
    parts
        .iter()
        .map(|(k, b)| format!("{k} {} bytes", thousands(*b)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// inferno refuses an empty profile; a heap with nothing live still gets a picture
/// that says so.
fn write_empty(options: &Options, out: &mut dyn Write) -> std::io::Result<()> {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    writeln!(
        out,
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="80" xmlns="http://www.w3.org/2000/svg">
<text x="600" y="24" text-anchor="middle" font-size="17">{}</text>
<text x="600" y="56" text-anchor="middle" font-size="12">{}</text>
</svg>"#,
        escape(&options.title),
        escape(options.subtitle.as_deref().unwrap_or(""))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::sample;

    fn svg(report: &Report) -> String {
        let mut out = Vec::new();
        write_flamegraph(report, &mut out).expect("flamegraph");
        String::from_utf8(out).expect("UTF-8")
    }

    /// Parses an SVG as XML (inferno's has a DOCTYPE).
    fn parse(svg: &str) -> roxmltree::Document<'_> {
        let options = roxmltree::ParsingOptions {
            allow_dtd: true,
            ..roxmltree::ParsingOptions::default()
        };
        roxmltree::Document::parse_with_options(svg, options).expect("the SVG is XML")
    }

    /// `<title>` texts of the frames: `name (N bytes, P%)`.
    fn titles(svg: &str) -> Vec<String> {
        let doc = parse(svg);
        doc.descendants()
            .filter(|n| n.has_tag_name("title"))
            .filter_map(|n| n.text().map(String::from))
            .collect()
    }

    #[test]
    fn every_site_is_a_frame_with_its_bytes() {
        let s = svg(&sample());
        let t = titles(&s);
        let has = |prefix: &str| t.iter().any(|x| x.starts_with(prefix));
        assert!(has("fill (1,000 bytes"), "{t:?}");
        assert!(has("Widget::make() (48 bytes"), "{t:?}");
        assert!(has("??? (in libx.so) (130 bytes"), "{t:?}");
        assert!(has("all (1,178 bytes, 100%)"), "{t:?}");
        // Interactive: inferno's script for zoom and search is in it.
        assert!(s.contains("<script"), "no script");
        assert!(s.contains("memtrace: live heap of ./leak x"));
    }

    #[test]
    fn an_empty_heap_still_gives_an_svg() {
        let mut r = sample();
        r.leaks.clear();
        let s = svg(&r);
        parse(&s);
        assert!(s.contains("no leaks"), "{s}");
    }

    #[test]
    fn blocks_of_zero_bytes_give_an_svg_that_says_so() {
        let mut r = sample();
        for l in &mut r.leaks {
            l.bytes = 0;
        }
        r.totals.live_bytes = 0;
        let s = svg(&r);
        parse(&s);
        assert!(!s.contains("ERROR"), "{s}");
        assert!(s.contains("0 bytes in "), "{s}");
        let mut out = Vec::new();
        write_diff_flamegraph(&sample(), &r, &mut out).expect("a diff to nothing live");
        let s = String::from_utf8(out).expect("UTF-8");
        parse(&s);
        assert!(!s.contains("ERROR"), "{s}");
    }

    #[test]
    fn names_with_markup_are_escaped() {
        let mut r = sample();
        r.leaks[2].stack[0].function = Some("std::vector<int, A<&B>>::push".into());
        let t = titles(&svg(&r));
        assert!(
            t.iter()
                .any(|x| x.starts_with("std::vector<int, A<&B>>::push (48 bytes")),
            "{t:?}"
        );
    }
}
