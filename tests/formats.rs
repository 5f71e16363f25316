//! The report in the formats other tools read, from a real trace: a flamegraph (read
//! back as XML), a pprof profile (decoded from protobuf), folded stacks, and
//! `memtrace report`, which renders a saved report again or compares two. The
//! expected sites, bytes and blocks come from the fixture's markers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::cases;
use common::process::{memtrace_binary, run_with_watchdog_stdout, Output, MEMTRACE_LIMIT};
use common::{basename, report, run_memtrace_opts, Marker, Run};
use flate2::read::GzDecoder;
use memtrace::report::pprof::proto::Profile;
use prost::Message;
use serde_json::Value;
use std::io::Read;

/// `1234567` as `1,234,567`, as the flamegraph's titles write bytes.
fn thousands(n: u64) -> String {
    memtrace::report::text::thousands(n)
}

/// One leak site of the fixture: its marker and the function holding its line.
struct Site {
    marker: Marker,
    function: String,
}

/// The fixture's sites, each marker with the function the report names at its line.
fn sites(run: &Run, markers: &[Marker]) -> Vec<Site> {
    let leaks = report::leaks(run.report());
    markers
        .iter()
        .map(|m| {
            let leak = leaks
                .iter()
                .find(|l| {
                    l.stack.first().is_some_and(|f| {
                        f.file.as_deref().map(basename) == Some(m.file.as_str())
                            && f.line == Some(u64::from(m.line))
                    })
                })
                .unwrap_or_else(|| panic!("no leak at {}:{}: {leaks:#?}", m.file, m.line));
            Site {
                marker: m.clone(),
                function: leak.stack[0].function.clone().expect("a named function"),
            }
        })
        .collect()
}

/// `memtrace ARGS...` that traces nothing (`report`, `completions`, `manpage`).
fn memtrace(args: &[&str]) -> Output {
    let mut command = Command::new(memtrace_binary());
    command.args(args);
    run_with_watchdog_stdout(command, MEMTRACE_LIMIT, &format!("memtrace {args:?}"))
}

/// three_leaks traced once with every output; the run and the files' directory.
struct Traced {
    run: Run,
    dir: tempfile::TempDir,
    sites: Vec<Site>,
}

impl Traced {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn trace_three_leaks() -> Traced {
    let case = cases::three_leaks();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (svg, pb, xml, folded) = (p("r.svg"), p("r.pb.gz"), p("r.xml"), p("r.folded"));
    let run = run_memtrace_opts(
        &[
            "--flamegraph",
            &svg,
            "--pprof",
            &pb,
            "--xml",
            &xml,
            "--collapsed",
            &folded,
        ],
        &case.target(),
    );
    assert_eq!(run.status, 0, "stderr:\n{}", run.stderr);
    let sites = sites(&run, &case.markers());
    assert_eq!(sites.len(), 3);
    Traced { run, dir, sites }
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The frames' `<title>`s: `function (N bytes, P%)`.
fn flamegraph_titles(svg: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(svg).expect("UTF-8");
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(text, options).expect("the SVG is XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("title"))
        .filter_map(|n| n.text().map(String::from))
        .collect()
}

#[test]
fn the_flamegraph_has_each_site_with_its_bytes() {
    let t = trace_three_leaks();
    let titles = flamegraph_titles(&read(&t.path("r.svg")));
    let total: u64 = t.sites.iter().map(|s| s.marker.bytes).sum();
    for site in &t.sites {
        let want = format!(
            "{} ({} bytes, ",
            site.function,
            thousands(site.marker.bytes)
        );
        assert!(
            titles.iter().any(|x| x.starts_with(&want)),
            "no frame {want:?} in {titles:?}"
        );
    }
    // main holds all three.
    let main = format!("main ({} bytes, ", thousands(total));
    assert!(titles.iter().any(|x| x.starts_with(&main)), "{titles:?}");
}

/// Each sample as (function of each line, leaf first; its source lines; values).
fn samples(p: &Profile) -> Vec<(Vec<String>, Vec<i64>, Vec<i64>)> {
    let s = |i: i64| p.string_table[i as usize].clone();
    p.sample
        .iter()
        .map(|smp| {
            let mut names = Vec::new();
            let mut lines = Vec::new();
            for id in &smp.location_id {
                let loc = p.location.iter().find(|l| l.id == *id).expect("location");
                for line in &loc.line {
                    let f = p
                        .function
                        .iter()
                        .find(|f| f.id == line.function_id)
                        .expect("function");
                    names.push(s(f.name));
                    lines.push(line.line);
                }
            }
            (names, lines, smp.value.clone())
        })
        .collect()
}

#[test]
fn the_profile_has_each_sites_bytes_on_its_stack() {
    let t = trace_three_leaks();
    let mut raw = Vec::new();
    GzDecoder::new(&read(&t.path("r.pb.gz"))[..])
        .read_to_end(&mut raw)
        .expect("gzip");
    let p = Profile::decode(&raw[..]).expect("a pprof protobuf");
    let types: Vec<&str> = p
        .sample_type
        .iter()
        .map(|v| p.string_table[v.r#type as usize].as_str())
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    let samples = samples(&p);
    for site in &t.sites {
        let m = &site.marker;
        // The samples whose leaf is this site's line, in its function, called by main.
        let here: Vec<&(Vec<String>, Vec<i64>, Vec<i64>)> = samples
            .iter()
            .filter(|(names, lines, _)| {
                names.first() == Some(&site.function)
                    && lines.first() == Some(&i64::from(m.line))
                    && names.get(1).map(String::as_str) == Some("main")
            })
            .collect();
        let sum = |i: usize| here.iter().map(|(_, _, v)| v[i]).sum::<i64>();
        assert_eq!(
            (sum(2), sum(3)),
            (m.blocks as i64, m.bytes as i64),
            "live blocks and bytes of {} ({}:{}): {samples:?}",
            site.function,
            m.file,
            m.line
        );
        // Nothing of these was freed: every allocation is live.
        assert_eq!((sum(0), sum(1)), (m.blocks as i64, m.bytes as i64));
    }
    let files: Vec<&str> = p
        .function
        .iter()
        .map(|f| basename(&p.string_table[f.filename as usize]))
        .collect();
    assert!(files.contains(&"three_leaks.c"), "{files:?}");
}

#[test]
fn folded_stacks_are_one_line_per_site() {
    let t = trace_three_leaks();
    let text = String::from_utf8(read(&t.path("r.folded"))).expect("UTF-8");
    for site in &t.sites {
        let line = text
            .lines()
            .find(|l| {
                l.rsplit_once(' ')
                    .is_some_and(|(s, _)| s.ends_with(&format!(";main;{}", site.function)))
            })
            .unwrap_or_else(|| panic!("no line for {}: {text}", site.function));
        assert!(line.ends_with(&format!(" {}", site.marker.bytes)), "{line}");
    }
    assert_eq!(text.lines().count(), 3, "{text}");
}

/// `memtrace report` renders exactly what the trace wrote, in every format.
#[test]
fn a_saved_report_renders_as_the_trace_wrote_it() {
    let t = trace_three_leaks();
    let json = report_path(&t);
    for (format, written) in [
        ("flamegraph", "r.svg"),
        ("pprof", "r.pb.gz"),
        ("valgrind-xml", "r.xml"),
        ("collapsed", "r.folded"),
    ] {
        let out = t.path(&format!("again-{written}"));
        let o = memtrace(&["report", &json, "--format", format, "-o", path_str(&out)]);
        assert_eq!(o.exit.shell_code(), 0, "{format}: {}", o.stderr);
        assert!(
            read(&out) == read(&t.path(written)),
            "{format}: memtrace report differs from the trace's {written}"
        );
    }
    let text = memtrace(&["report", &json]);
    assert_eq!(text.exit.shell_code(), 0, "{}", text.stderr);
    assert_eq!(
        text.stdout, t.run.stderr,
        "the text report as printed at the end"
    );
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The JSON report of a traced run, saved in its directory.
fn report_path(t: &Traced) -> String {
    let path = t.path("r.json");
    let text = serde_json::to_string(t.run.report()).expect("JSON");
    std::fs::write(&path, text).expect("write the report");
    path_str(&path).to_string()
}

/// Two runs of three_leaks (one round, then three, at other addresses: ASLR) differ
/// by two rounds of every site, largest growth first.
#[test]
fn two_reports_compare_site_by_site() {
    let case = cases::three_leaks();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut paths = Vec::new();
    for rounds in ["1", "3"] {
        let run = run_memtrace_opts(&[], &case.target().arg(rounds));
        assert_eq!(run.status, 0, "{}", run.stderr);
        let path = dir.path().join(format!("r{rounds}.json"));
        std::fs::write(&path, run.report().to_string()).expect("write");
        paths.push(path_str(&path).to_string());
    }
    let o = memtrace(&["report", &paths[0], &paths[1], "--format", "json"]);
    assert_eq!(o.exit.shell_code(), 0, "{}", o.stderr);
    let d: Value = serde_json::from_str(&o.stdout).expect("JSON");
    assert_eq!(d["schema"], "memtrace-diff/1");
    let grown: Vec<(String, u64, i64, i64)> = d["sites"]
        .as_array()
        .expect("sites")
        .iter()
        .map(|s| {
            (
                format!(
                    "{}:{}",
                    basename(s["stack"][0]["file"].as_str().unwrap_or("?")),
                    s["stack"][0]["line"]
                ),
                s["bytes_after"].as_u64().unwrap_or(0),
                s["bytes_growth"].as_i64().unwrap_or(0),
                s["blocks_growth"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let mut want: Vec<(String, u64, i64, i64)> = case
        .markers()
        .iter()
        .map(|m| {
            (
                format!("{}:{}", m.file, m.line),
                3 * m.bytes,
                2 * m.bytes as i64,
                2 * m.blocks as i64,
            )
        })
        .collect();
    want.sort_by(|a, b| b.2.cmp(&a.2).then(b.3.cmp(&a.3)));
    assert_eq!(grown, want);
    let text = memtrace(&["report", &paths[0], &paths[1]]);
    let top = &want[0];
    assert!(
        text.stdout.contains(&format!(
            "{} (+{}) bytes in ",
            thousands(top.1),
            thousands(top.2 as u64)
        )),
        "{}",
        text.stdout
    );
}

#[test]
fn a_bad_report_is_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"schema\": \"memtrace-report/1\", \"target\": 3}").expect("write");
    for args in [
        vec!["report", path_str(&bad)],
        vec!["report", "/nonexistent/r.json"],
        vec![
            "report",
            path_str(&bad),
            "--suppressions",
            "/nonexistent.supp",
        ],
    ] {
        let o = memtrace(&args);
        assert_eq!(o.exit.shell_code(), 2, "{args:?}: {}", o.stderr);
        let lines: Vec<&str> = o.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", o.stderr);
        assert!(lines[0].starts_with("memtrace: "), "{}", lines[0]);
    }
}

/// Completions and the manual page come from the command line's definition.
#[test]
fn completions_and_manual_pages() {
    let bash = memtrace(&["completions", "bash"]);
    assert_eq!(bash.exit.shell_code(), 0, "{}", bash.stderr);
    for word in ["--flamegraph", "--suppressions", "valgrind-xml", "report"] {
        assert!(bash.stdout.contains(word), "bash completion lacks {word}");
    }
    let zsh = memtrace(&["completions", "zsh"]);
    assert!(
        zsh.stdout.starts_with("#compdef memtrace"),
        "{}",
        zsh.stdout
    );
    let man = memtrace(&["manpage"]);
    assert_eq!(man.exit.shell_code(), 0, "{}", man.stderr);
    assert!(man.stdout.contains(".TH memtrace 1"), "{}", man.stdout);
    assert!(man.stdout.contains("report"), "{}", man.stdout);
    let dir = tempfile::tempdir().expect("tempdir");
    let o = memtrace(&["manpage", "--dir", path_str(dir.path())]);
    assert_eq!(o.exit.shell_code(), 0, "{}", o.stderr);
    let page = std::fs::read_to_string(dir.path().join("memtrace-report.1")).expect("page");
    assert!(page.contains("valgrind\\-xml"), "{page}");
    // The examples are in --help.
    let help = memtrace(&["report", "--help"]);
    assert!(help.stdout.contains("Examples:"), "{}", help.stdout);
}

/// Blocks of zero bytes (`malloc(0)`) are live but have no width: the flamegraph
/// says so instead of failing, and the folded stacks carry them with 0 bytes.
#[test]
fn leaks_of_zero_bytes_still_give_a_flamegraph() {
    let case = cases::zero_leak();
    let dir = tempfile::tempdir().expect("tempdir");
    let (svg, folded) = (dir.path().join("r.svg"), dir.path().join("r.folded"));
    let run = run_memtrace_opts(
        &[
            "--flamegraph",
            path_str(&svg),
            "--collapsed",
            path_str(&folded),
        ],
        &case.target(),
    );
    assert_eq!(run.status, 0, "stderr:\n{}", run.stderr);
    let blocks: u64 = case.markers().iter().map(|m| m.blocks).sum();
    assert!(blocks > 0 && case.markers().iter().all(|m| m.bytes == 0));
    let text = String::from_utf8(read(&svg)).expect("UTF-8");
    flamegraph_titles(text.as_bytes());
    assert!(!text.contains("ERROR"), "{text}");
    assert!(
        text.contains(&format!("0 bytes in {blocks} blocks")),
        "{text}"
    );
    let stacks = String::from_utf8(read(&folded)).expect("UTF-8");
    assert!(
        !stacks.is_empty() && stacks.lines().all(|l| l.ends_with(";main 0")),
        "{stacks}"
    );
}

/// A file that cannot be written keeps no other from being written: each failure is
/// one line naming its file, and memtrace exits non-zero.
#[test]
fn an_unwritable_file_keeps_no_other_from_being_written() {
    let case = cases::three_leaks();
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n).display().to_string();
    let (pb, svg, xml, folded) = (
        p("none/r.pb.gz"),
        p("r.svg"),
        p("none/r.xml"),
        p("r.folded"),
    );
    let run = common::process::run_memtrace_once(
        &[
            "--pprof",
            &pb,
            "--flamegraph",
            &svg,
            "--xml",
            &xml,
            "--collapsed",
            &folded,
        ],
        &case.target(),
    );
    assert_eq!(run.status, 1, "stderr:\n{}", run.stderr);
    let failures: Vec<&str> = run
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("memtrace: cannot write"))
        .collect();
    assert_eq!(failures.len(), 2, "{}", run.stderr);
    assert!(failures[0].starts_with(&format!("memtrace: cannot write {pb}: ")));
    assert!(failures[1].starts_with(&format!("memtrace: cannot write {xml}: ")));
    run.report();
    flamegraph_titles(&read(Path::new(&svg)));
    assert_eq!(
        read(Path::new(&folded))
            .iter()
            .filter(|&&b| b == b'\n')
            .count(),
        3
    );
}
