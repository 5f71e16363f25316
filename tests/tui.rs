//! The live view, end to end: the real memtrace binary in a real pseudo-terminal
//! (tmux), against a fixture that leaks steadily. The leaking site's row must show
//! its `function file:line` (the line taken from the fixture's `LEAK:` marker) and its
//! block count must grow; `q` then asks whether to kill the launched program, `k`
//! kills it, the view stays on the final state until `q`, and the report is written.
//!
//! Every wait is bounded: a hang fails the test, and the tmux server (with memtrace
//! and the program under it) is killed whatever happens.

mod common;

use common::markers::marker_line;
use common::{build_fixture, markers, process::memtrace_binary, DEBUG};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// `name`: the test's own, so that tests running at once use separate servers.
    fn start(name: &str, command: &str, width: u16, height: u16) -> Tmux {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join(name).display().to_string();
        let t = Tmux { socket, _dir: dir };
        let status = t
            .cmd()
            .args(["new-session", "-d", "-s", "t", "-x"])
            .arg(width.to_string())
            .arg("-y")
            .arg(height.to_string())
            .arg(command)
            .status()
            .expect("tmux runs (the test needs tmux)");
        assert!(status.success(), "tmux new-session failed");
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-S", &self.socket, "-f", "/dev/null"]);
        c
    }

    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "t", keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "t"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Waits for memtrace (the session's only command) to end.
    fn wait_gone(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.alive() {
            assert!(
                Instant::now() < until,
                "memtrace did not end within {limit:?}:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The screen once `ok` holds for it, or a panic with the last screen after `limit`.
    fn wait_for(&self, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + limit;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < until,
                "waited {limit:?} for {what}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").status();
    }
}

/// The Blocks column of the row that holds `site`.
fn blocks_of(screen: &str, site: &str) -> Option<u64> {
    let line = screen.lines().find(|l| l.contains(site))?;
    // "│> 3.2 KiB     50   50   ...  leak_slowly tui_leak.c:11": bytes, unit, blocks.
    let cells: Vec<&str> = line
        .trim_start_matches(['│', '>', ' '])
        .split_whitespace()
        .collect();
    let at = if cells.get(1).is_some_and(|u| u.ends_with('B')) {
        2
    } else {
        1
    };
    cells.get(at)?.replace(',', "").parse().ok()
}

#[test]
fn live_view_shows_the_growing_site_and_quits_cleanly() {
    let program = build_fixture("tui_leak", DEBUG);
    let (marker, site) = leak_site();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let command = format!(
        "{} launch --json {} -- {} 100000",
        shell_quote(memtrace_binary()),
        shell_quote(&json),
        shell_quote(&program)
    );
    let tmux = Tmux::start("live", &command, 120, 36);
    let first = tmux.wait_for(
        &format!("the row of {site}"),
        Duration::from_secs(30),
        |s| blocks_of(s, &site).is_some(),
    );
    assert!(first.contains("running"), "{first}");
    let before = blocks_of(&first, &site).unwrap_or(0);
    let later = tmux.wait_for("the site's count to grow", Duration::from_secs(30), |s| {
        blocks_of(s, &site).is_some_and(|n| n > before + 5)
    });
    assert!(later.contains("pid "), "{later}");

    // The detail pane shows the stack with the fixture's frames.
    tmux.keys("Enter");
    tmux.wait_for("the stack pane", Duration::from_secs(10), |s| {
        s.contains("Stack") && s.contains("main tui_leak.c")
    });
    tmux.keys("Escape");

    // p holds the program: the count stops; p again lets it go on.
    tmux.keys("p");
    let paused = tmux.wait_for("the paused state", Duration::from_secs(10), |s| {
        s.contains("· paused ·")
    });
    let held = blocks_of(&paused, &site).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1500));
    let still = tmux.screen();
    assert_eq!(blocks_of(&still, &site), Some(held), "paused:\n{still}");
    tmux.keys("p");
    tmux.wait_for("the count to grow again", Duration::from_secs(30), |s| {
        s.contains("· running ·") && blocks_of(s, &site).is_some_and(|n| n > held)
    });

    // l classifies the heap now: the leaking site's blocks are definitely lost.
    tmux.keys("l");
    tmux.wait_for("the leak check", Duration::from_secs(30), |s| {
        s.contains("definitely lost") && !s.contains("definitely lost 0 B")
    });

    // q asks; k kills the program, and then memtrace ends with its report.
    tmux.keys("q");
    tmux.wait_for("the quit question", Duration::from_secs(10), |s| {
        s.contains("k kill the program")
    });
    tmux.keys("k");
    tmux.wait_gone(Duration::from_secs(30));
    let report = read_report(&json);
    assert_eq!(report["end"]["signal"], "SIGKILL", "{report:#}");
    let leaks = report["leaks"].as_array().expect("leaks");
    assert!(
        leaks.iter().any(|l| l["stack"][0]["line"] == marker.line),
        "the leak site is in the report: {report:#}"
    );
}

/// A terminal too small for the view gets a message, and a resize brings the view.
/// A program that ends by itself leaves the view on its final state until `q`.
#[test]
fn tiny_terminal_and_the_end_of_the_program() {
    let program = build_fixture("tui_leak", DEBUG);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let command = format!(
        "{} launch --json {} -- {} 150",
        shell_quote(memtrace_binary()),
        shell_quote(&json),
        shell_quote(&program)
    );
    let tmux = Tmux::start("tiny", &command, 30, 6);
    tmux.wait_for("the too-small message", Duration::from_secs(30), |s| {
        s.contains("too small")
    });
    let _ = tmux
        .cmd()
        .args(["resize-window", "-t", "t", "-x", "120", "-y", "36"])
        .status();
    tmux.wait_for("the view after a resize", Duration::from_secs(30), |s| {
        s.contains("sites")
    });
    let end = tmux.wait_for("the end", Duration::from_secs(30), |s| {
        s.contains("exited with status 0")
    });
    let (_, site) = leak_site();
    assert_eq!(
        blocks_of(&end, &site),
        Some(150),
        "every round's block:\n{end}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(tmux.alive(), "the view stays until q");
    tmux.keys("q");
    tmux.wait_gone(Duration::from_secs(30));
    let report = read_report(&json);
    assert_eq!(report["end"]["code"], 0, "{report:#}");
}

/// The leaking site of `tui_leak.c` (its `LEAK:` marker) and its row label.
fn leak_site() -> (common::Marker, String) {
    let marker = markers(&common::fixtures_dir().join("tui_leak.c"))
        .into_iter()
        .next()
        .expect("tui_leak.c has a LEAK marker");
    let site = format!("leak_slowly {}:{}", marker.file, marker.line);
    (marker, site)
}

/// The JSON report memtrace wrote once its view closed.
fn read_report(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no report at {}: {e}", path.display()));
    serde_json::from_str(&text).expect("the report is JSON")
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// `--break-at` with the live view: the stopped view opens at the marked line, `n`
/// steps to the next marked line, `c` lets the program finish as it would have.
/// (Waits are longer than elsewhere in this file: the test runs beside valgrind.)
#[test]
fn break_at_opens_the_stopped_view_and_steps() {
    let program = build_fixture("step", DEBUG);
    let source = common::fixtures_dir().join("step.c");
    let brk = marker_line(&source, "BREAK", "main");
    let next = marker_line(&source, "NEXT", "main");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let command = format!(
        "{} launch --json {} --break-at step.c:{brk} -- {}",
        shell_quote(memtrace_binary()),
        shell_quote(&json),
        shell_quote(&program)
    );
    let tmux = Tmux::start("break", &command, 140, 40);
    // A capture can catch the screen mid-redraw: wait for the whole view, malloc's own first
    // bytes in the disassembly included (not memtrace's int3).
    tmux.wait_for(
        "the stopped view with malloc's own first bytes",
        Duration::from_secs(60),
        |s| {
            s.contains("stopped in the debugger")
                && s.contains(&format!("=>{brk:>4} "))
                && s.contains("41 54")
        },
    );
    tmux.keys("n");
    tmux.wait_for("the next line", Duration::from_secs(60), |s| {
        s.contains(&format!("=>{next:>4} "))
    });
    tmux.keys("c");
    tmux.wait_for("the program's end", Duration::from_secs(60), |s| {
        s.contains("exited with status 3")
    });
    tmux.keys("q");
    tmux.wait_gone(Duration::from_secs(60));
    let report = read_report(&json);
    assert_eq!(report["end"]["code"], 3, "{report:#}");
}

/// `b` on a site of a running program stops it at that site's next allocation.
#[test]
fn b_on_a_site_stops_at_its_next_allocation() {
    let program = build_fixture("tui_leak", DEBUG);
    let (marker, site) = leak_site();
    let command = format!(
        "{} launch -- {} 100000",
        shell_quote(memtrace_binary()),
        shell_quote(&program)
    );
    let tmux = Tmux::start("b", &command, 140, 40);
    tmux.wait_for(
        &format!("the row of {site}"),
        Duration::from_secs(60),
        |s| blocks_of(s, &site).is_some(),
    );
    // The leaking site is the largest: selected first.
    tmux.keys("b");
    let stop = tmux.wait_for("the stopped view", Duration::from_secs(60), |s| {
        s.contains("stopped in the debugger")
    });
    assert!(
        stop.contains(&format!("{}:{}", marker.file, marker.line)),
        "the site's line:\n{stop}"
    );
    tmux.keys("c");
    tmux.wait_for("the live view again", Duration::from_secs(60), |s| {
        s.contains("running")
    });
    tmux.keys("q");
    tmux.keys("k");
    tmux.wait_gone(Duration::from_secs(60));
}

/// q then d in launch mode: memtrace detaches, reports, and waits for the program,
/// which finishes untraced.
#[test]
fn launch_q_d_lets_the_program_run_on() {
    let program = build_fixture("tui_leak", DEBUG);
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let command = format!(
        "{} launch --json {} -- {} 250",
        shell_quote(memtrace_binary()),
        shell_quote(&json),
        shell_quote(&program)
    );
    let tmux = Tmux::start("detach", &command, 120, 36);
    tmux.wait_for("the first site", Duration::from_secs(30), |s| {
        s.contains("leak_slowly")
    });
    tmux.keys("q");
    tmux.wait_for("the quit question", Duration::from_secs(10), |s| {
        s.contains("d let it run on untraced")
    });
    tmux.keys("d");
    tmux.wait_gone(Duration::from_secs(60));
    let report = read_report(&json);
    assert_eq!(report["end"]["how"], "detached", "{report:#}");
    // Scanned before the detach, and fewer blocks than the program's 250 rounds.
    assert_eq!(report["scan"]["when"], "on_demand", "{report:#}");
    let live = report["totals"]["live_blocks"]
        .as_u64()
        .expect("live blocks");
    assert!(live > 0 && live < 250, "{report:#}");
}

/// The live view on an attached process: q detaches, and the process runs on to
/// its normal end.
#[test]
fn attach_q_detaches() {
    let program = build_fixture("tui_leak", DEBUG);
    let mut child = std::process::Command::new(&program)
        .arg("300")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let command = format!(
        "{} attach --json {} {}",
        shell_quote(memtrace_binary()),
        shell_quote(&json),
        child.id()
    );
    let tmux = Tmux::start("attach", &command, 120, 36);
    tmux.wait_for("the site", Duration::from_secs(30), |s| {
        s.contains("leak_slowly") && s.contains("· running ·")
    });
    tmux.keys("q");
    tmux.wait_gone(Duration::from_secs(60));
    let report = read_report(&json);
    assert_eq!(report["end"]["how"], "detached", "{report:#}");
    assert_eq!(report["target"]["mode"], "attach", "{report:#}");
    // The process goes on untraced to its own end.
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the fixture") {
            break status;
        }
        assert!(Instant::now() < until, "the fixture did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
}

/// A site that leaks mappings is a row like a heap leak's, marked `mmap`, and its
/// count grows; `m` shows the census of the process's memory, refreshed, and back.
#[test]
fn mapping_sites_and_the_mappings_view() {
    let program = build_fixture("tui_maps", DEBUG);
    let source = common::build::fixture_source("tui_maps");
    let line = marker_line(&source, "MAPPING", "500");
    let site = format!("map_slowly tui_maps.c:{line}");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let command = format!(
        "{} launch --json {} -- {} 100000",
        shell_quote(memtrace_binary()),
        shell_quote(&json),
        shell_quote(&program)
    );
    let tmux = Tmux::start("maps", &command, 140, 36);
    let mmap_row = |s: &str| {
        s.lines()
            .find(|l| l.contains(&site))
            .filter(|l| l.contains(" mmap "))
            .map(String::from)
    };
    let first = tmux.wait_for(
        &format!("the mmap row of {site}"),
        Duration::from_secs(30),
        |s| mmap_row(s).is_some(),
    );
    let before = blocks_of(&first, &site).unwrap_or(0);
    tmux.wait_for(
        "the mapping site's count to grow",
        Duration::from_secs(30),
        |s| blocks_of(s, &site).is_some_and(|n| n > before + 5) && s.contains("mapped "),
    );
    // m: the census, with the anonymous memory growing and the heap's live blocks.
    tmux.keys("m");
    let census = tmux.wait_for("the mappings view", Duration::from_secs(30), |s| {
        s.contains("mappings at") && s.contains("anonymous") && s.contains("in live malloc blocks")
    });
    assert!(census.contains("image"), "{census}");
    tmux.wait_for(
        "the anonymous memory to grow",
        Duration::from_secs(30),
        |s| {
            s.lines()
                .any(|l| l.contains("anonymous") && l.contains("KiB/s") && l.contains('+'))
        },
    );
    tmux.keys("m");
    tmux.wait_for("the sites again", Duration::from_secs(10), |s| {
        mmap_row(s).is_some()
    });
    tmux.keys("q");
    tmux.wait_for("the quit question", Duration::from_secs(10), |s| {
        s.contains("k kill the program")
    });
    tmux.keys("k");
    tmux.wait_gone(Duration::from_secs(30));
    let report = read_report(&json);
    let mappings = report["mappings"].as_array().expect("mappings");
    assert!(
        mappings
            .iter()
            .any(|m| m["stack"][0]["line"] == line && m["kind"] == "anonymous"),
        "the mapping site is in the report: {report:#}"
    );
}

/// The live view on an attached process knows that the blocks allocated before it
/// came are unknown: their frees are counted apart, never reported as errors.
#[test]
fn attach_counts_frees_of_older_blocks_apart() {
    let program = build_fixture("attach_loop", DEBUG);
    let mut child = std::process::Command::new(&program)
        .args(["1", "4"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the fixture");
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("report.json");
    let command = format!(
        "{} attach --json {} {}",
        shell_quote(memtrace_binary()),
        shell_quote(&json),
        child.id()
    );
    let tmux = Tmux::start("attach-old", &command, 120, 36);
    tmux.wait_for("the end of the program", Duration::from_secs(60), |s| {
        s.contains("exited with status 7")
    });
    tmux.keys("q");
    tmux.wait_gone(Duration::from_secs(30));
    let _ = child.wait();
    let report = read_report(&json);
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");
    assert!(
        report["totals"]["frees_of_unknown"].as_u64().unwrap_or(0) > 0,
        "{report:#}"
    );
}
