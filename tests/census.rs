//! `memtrace maps PID`: the census of a live process's memory, without tracing it,
//! checked against the kernel's own sums (`/proc/PID/smaps_rollup`, the sizes in
//! `/proc/PID/maps`) on a process paused in the middle of its run.

mod common;

use std::process::Command;

use common::attach::Background;
use common::process::{memtrace_binary, run_with_watchdog_stdout, MEMTRACE_LIMIT};
use common::{build_fixture, build_shared, Target, DEBUG};
use serde_json::Value;

fn census(pid: i32, json: bool) -> (i32, String, String) {
    let mut c = Command::new(memtrace_binary());
    c.arg("maps");
    if json {
        c.arg("--json");
    }
    c.arg(pid.to_string());
    let out = run_with_watchdog_stdout(c, MEMTRACE_LIMIT, "memtrace maps");
    (out.exit.shell_code(), out.stdout, out.stderr)
}

/// The kernel's sums: mapped bytes (from /proc/PID/maps) and resident bytes (the
/// `Rss:` of /proc/PID/smaps_rollup), and the number of mappings.
fn kernel_sums(pid: i32) -> (u64, u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let (mut count, mut bytes) = (0, 0);
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap();
        let (s, e) = range.split_once('-').unwrap();
        bytes += u64::from_str_radix(e, 16).unwrap() - u64::from_str_radix(s, 16).unwrap();
        count += 1;
    }
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let kb: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no Rss in {rollup}"));
    (count, bytes, kb * 1024)
}

/// Stops `pid` (SIGSTOP) until the returned guard is dropped: a process blocked in
/// a read can still touch a page on its way there (Python's first `stdin.read`),
/// between the census and the kernel's sums.
fn stopped(pid: i32) -> impl Drop {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let p = Pid::from_raw(pid);
    kill(p, Signal::SIGSTOP).unwrap();
    // Stopped once /proc says so (state T).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next();
        if state == Some("T") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pid} does not stop: {stat}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Resume(p)
}

/// The census of `pid` (stopped meanwhile), checked against the kernel's sums;
/// returns it.
fn checked_census(pid: i32) -> Value {
    let _stopped = stopped(pid);
    let (code, stdout, stderr) = census(pid, true);
    assert_eq!(code, 0, "memtrace maps failed: {stderr}");
    let c: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(c["schema"], "memtrace-maps/1");
    assert_eq!(c["pid"], pid);
    let (count, bytes, rss) = kernel_sums(pid);
    let total = &c["total"];
    assert_eq!(total["count"].as_u64(), Some(count), "{total}");
    assert_eq!(total["bytes"].as_u64(), Some(bytes), "{total}");
    assert_eq!(total["rss_bytes"].as_u64(), Some(rss), "{total}");
    let groups = c["groups"].as_array().unwrap();
    let sum = |k: &str| groups.iter().map(|g| g[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!(
        (sum("count"), sum("bytes"), sum("rss_bytes")),
        (count, bytes, rss)
    );
    let sizes: Vec<u64> = groups
        .iter()
        .map(|g| g["bytes"].as_u64().unwrap())
        .collect();
    assert!(
        sizes.windows(2).all(|w| w[0] >= w[1]),
        "not largest first: {sizes:?}"
    );
    c
}

fn group<'a>(c: &'a Value, kind: &str, name: Option<&str>) -> Option<&'a Value> {
    c["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["kind"] == kind && name.is_none_or(|n| g["name"] == n))
}

#[test]
fn the_census_of_a_doublemapper_mid_run_sums_to_the_kernels() {
    let exe = build_fixture("doublemapper", DEBUG);
    let (bg, stdin) = Background::start_piped(&Target::new(exe).arg("32").arg("pause"));
    bg.wait_for_output("ready");
    let c = checked_census(bg.pid());
    // 32 rounds of two 1 MiB views, plus the round whose views were unmapped.
    let dm = group(&c, "memfd", Some("doublemapper")).unwrap_or_else(|| panic!("{c}"));
    assert_eq!(
        (dm["count"].as_u64(), dm["bytes"].as_u64()),
        (Some(64), Some(64 << 20))
    );
    assert_eq!(c["groups"][0], *dm, "the largest group");
    for kind in ["heap", "stack", "image", "special"] {
        assert!(group(&c, kind, None).is_some(), "no {kind} in {c}");
    }
    // The text says the same, a line a group.
    let (code, text, _) = census(bg.pid(), false);
    assert_eq!(code, 0);
    assert!(
        text.lines()
            .any(|l| l.starts_with("memfd") && l.ends_with(" doublemapper")),
        "{text}"
    );
    drop(stdin);
    assert_eq!(bg.finish().exit, common::Exit::Code(0));
}

#[test]
fn the_census_of_a_python_that_leaked_through_a_native_library() {
    // The interpreter itself (python3 may be a wrapper script): an ELF to start.
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let plugin = build_shared("plugin", DEBUG);
    let script = format!(
        "import ctypes, sys\n\
         lib = ctypes.CDLL({plugin:?})\n\
         for _ in range(20000): lib.plugin_leak()\n\
         print('ready', flush=True)\n\
         sys.stdin.read(1)\n",
        plugin = plugin.display().to_string()
    );
    let (bg, stdin) = Background::start_piped(&Target::new(&python).arg("-c").arg(&script));
    bg.wait_for_output("ready");
    let c = checked_census(bg.pid());
    let lib = plugin.display().to_string();
    assert!(group(&c, "image", Some(&lib)).is_some(), "{lib} not in {c}");
    // 20,000 lost blocks of 77 bytes (96 with their headers) live in the heap.
    let heap = group(&c, "heap", None).unwrap_or_else(|| panic!("{c}"));
    assert!(heap["bytes"].as_u64().unwrap() >= 20_000 * 96, "{heap}");
    drop(stdin);
    assert_eq!(bg.finish().exit, common::Exit::Code(0));
}

#[test]
fn a_process_that_is_not_there_is_one_line() {
    let (code, stdout, stderr) = census(i32::MAX, true);
    assert_eq!(code, 127);
    assert!(stdout.is_empty());
    assert_eq!(
        stderr.trim(),
        format!("memtrace: {}: no such process", i32::MAX)
    );
}
