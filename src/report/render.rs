//! Every way a report is written: to the files `launch` and `attach` were asked for
//! (`--json`, `--flamegraph`, `--pprof`, `--xml`, `--collapsed`), and by
//! `memtrace report` in any one format.

use super::{collapsed, diff, flamegraph, json, pprof, text, xml, Report};
use crate::suppress::LeakKind;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The formats `memtrace report --format` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The report as printed at the end of a trace (valgrind's layout).
    Text,
    /// The JSON report (schema memtrace-report/1).
    Json,
    /// An interactive SVG flamegraph of live bytes by allocation stack.
    Flamegraph,
    /// A gzip'd pprof heap profile (go tool pprof, Pyroscope, Parca).
    Pprof,
    /// valgrind memcheck's XML (protocol 4), as `valgrind --xml=yes` writes it.
    ValgrindXml,
    /// Folded stacks, one line each: `main;make_leak 1064`.
    Collapsed,
}

impl Format {
    /// Bytes that make no sense on a terminal.
    pub fn is_binary(self) -> bool {
        self == Format::Pprof
    }
}

/// Writes `report` in `format` to `out`; the valgrind XML lists the leaks of
/// `xml_kinds` only, as valgrind's `--show-leak-kinds` does.
pub fn render(
    report: &Report,
    format: Format,
    gen_suppressions: bool,
    xml_kinds: &[LeakKind],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match format {
        Format::Text => out.write_all(text::render_text_with(report, gen_suppressions).as_bytes()),
        Format::Json => out.write_all(
            json::to_json_string(report)
                .map_err(std::io::Error::other)?
                .as_bytes(),
        ),
        Format::Flamegraph => flamegraph::write_flamegraph(report, out),
        Format::Pprof => pprof::write_pprof(report, out),
        Format::ValgrindXml => {
            out.write_all(xml::render_xml(report, gen_suppressions, xml_kinds).as_bytes())
        }
        Format::Collapsed => out.write_all(collapsed::live_bytes(report).as_bytes()),
    }
}

/// Why a comparison cannot be written in a format.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("a comparison of two reports is written as text, json, collapsed or flamegraph{hint}")]
    Format { hint: &'static str },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Writes what grew from `before` to `after` in `format` to `out`.
pub fn render_diff(
    (before, before_name): (&Report, &str),
    (after, after_name): (&Report, &str),
    format: Format,
    out: &mut dyn Write,
) -> Result<(), DiffError> {
    let d = || diff::diff(before, before_name, after, after_name);
    match format {
        Format::Text => out.write_all(diff::render_text(&d()).as_bytes())?,
        Format::Json => {
            let mut s = serde_json::to_string_pretty(&d()).map_err(std::io::Error::other)?;
            s.push('\n');
            out.write_all(s.as_bytes())?
        }
        Format::Collapsed => out.write_all(diff::render_collapsed(before, after).as_bytes())?,
        Format::Flamegraph => flamegraph::write_diff_flamegraph(before, after, out)?,
        Format::Pprof => {
            return Err(DiffError::Format {
                hint: " (for pprof, write each profile and compare them with go tool pprof -diff_base A.pb.gz B.pb.gz)",
            })
        }
        Format::ValgrindXml => return Err(DiffError::Format { hint: "" }),
    }
    Ok(())
}

/// The files a trace writes its report to, each optional.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub flamegraph: Option<PathBuf>,
    pub pprof: Option<PathBuf>,
    pub xml: Option<PathBuf>,
    pub collapsed: Option<PathBuf>,
    pub gen_suppressions: bool,
    /// The leak kinds the valgrind XML lists (`--show-leak-kinds`).
    pub xml_leak_kinds: Vec<LeakKind>,
}

/// Writes every file asked for, each whatever became of the others (a trace cannot
/// be run again for the file that failed); each failure as one line naming its file.
pub fn write_outputs(report: &Report, o: &Outputs) -> Result<(), Vec<String>> {
    let files = [
        (&o.json, Format::Json),
        (&o.flamegraph, Format::Flamegraph),
        (&o.pprof, Format::Pprof),
        (&o.xml, Format::ValgrindXml),
        (&o.collapsed, Format::Collapsed),
    ];
    let failures: Vec<String> = files
        .into_iter()
        .filter_map(|(path, format)| {
            let p = path.as_ref()?;
            write_file(p, |out| {
                render(report, format, o.gen_suppressions, &o.xml_leak_kinds, out)
            })
            .err()
            .map(|e| format!("cannot write {}: {e}", p.display()))
        })
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

/// Creates (or truncates) `path` and writes it with `write`.
pub fn write_file(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    write(&mut out)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::sample;

    #[test]
    fn every_file_asked_for_is_written_in_its_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| Some(dir.path().join(n));
        let o = Outputs {
            json: p("r.json"),
            flamegraph: p("r.svg"),
            pprof: p("r.pb.gz"),
            xml: p("r.xml"),
            collapsed: p("r.folded"),
            gen_suppressions: false,
            xml_leak_kinds: LeakKind::ALL.to_vec(),
        };
        let r = sample();
        write_outputs(&r, &o).expect("write");
        let read = |n: &str| std::fs::read(dir.path().join(n)).expect(n);
        let json = json::from_json_str(
            &String::from_utf8(read("r.json")).expect("utf-8"),
            Path::new("r.json"),
        )
        .expect("json");
        assert_eq!(json, r);
        assert!(String::from_utf8(read("r.svg"))
            .expect("svg")
            .contains("<svg"));
        assert_eq!(&read("r.pb.gz")[..2], &[0x1f, 0x8b], "gzip magic");
        assert!(String::from_utf8(read("r.xml"))
            .expect("xml")
            .contains("<protocolversion>4</protocolversion>"));
        assert_eq!(
            String::from_utf8(read("r.folded")).expect("folded"),
            collapsed::live_bytes(&r)
        );
    }

    #[test]
    fn an_unwritable_file_is_named() {
        let o = Outputs {
            xml: Some(PathBuf::from("/nonexistent/r.xml")),
            ..Outputs::default()
        };
        let e = write_outputs(&sample(), &o).expect_err("unwritable");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("cannot write /nonexistent/r.xml: "),
            "{e:?}"
        );
    }

    #[test]
    fn a_file_that_fails_keeps_no_other_from_being_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = Outputs {
            json: Some(PathBuf::from("/nonexistent/r.json")),
            flamegraph: Some(dir.path().join("r.svg")),
            xml: Some(PathBuf::from("/nonexistent/r.xml")),
            collapsed: Some(dir.path().join("r.folded")),
            ..Outputs::default()
        };
        let e = write_outputs(&sample(), &o).expect_err("unwritable");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("cannot write /nonexistent/r.json: "),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("cannot write /nonexistent/r.xml: "),
            "{e:?}"
        );
        assert!(dir.path().join("r.svg").exists());
        assert!(dir.path().join("r.folded").exists());
    }

    #[test]
    fn a_comparison_refuses_formats_it_has_no_meaning_in() {
        let r = sample();
        let mut out = Vec::new();
        let e = render_diff((&r, "a"), (&r, "b"), Format::Pprof, &mut out).expect_err("pprof");
        assert!(e.to_string().contains("-diff_base"), "{e}");
        assert!(render_diff((&r, "a"), (&r, "b"), Format::ValgrindXml, &mut out).is_err());
        render_diff((&r, "a"), (&r, "b"), Format::Flamegraph, &mut out).expect("flamegraph");
    }
}
