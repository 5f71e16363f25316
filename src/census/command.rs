//! `memtrace maps [--json] PID`: the census of a process's memory, without tracing
//! it (like `pmap -X`): reads `/proc/PID/smaps`, the first words of its anonymous
//! mappings (`/proc/PID/mem`, where permitted) and where its threads' stacks are.

use super::{census, Census};
use crate::attachable::Refusal;
use crate::procmem::ProcMemory;
use crate::progress::size;
use std::fmt::Write;

/// Runs the command; returns memtrace's exit status.
pub fn run(pid: i32, json: bool) -> i32 {
    let mem = match ProcMemory::read(pid, &[]) {
        Ok(m) => m,
        Err(e) => {
            let (line, code) = match e.raw_os_error() {
                _ if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
                    (Refusal::NoSuchProcess(pid).to_string(), 127)
                }
                Some(libc::EACCES | libc::EPERM) => (
                    format!("cannot read the memory map of {pid}: permission denied (another user's process: run as that user or as root)"),
                    126,
                ),
                _ => (format!("cannot read the memory map of {pid}: {e}"), 1),
            };
            eprintln!("memtrace: {line}");
            return code;
        }
    };
    let c = census(pid, &mem, None);
    let out = if json {
        match serde_json::to_string_pretty(&c) {
            Ok(s) => s + "\n",
            Err(e) => {
                eprintln!("memtrace: {e}");
                return 1;
            }
        }
    } else {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        render_text(&c, comm.trim())
    };
    use std::io::Write as _;
    // A reader that went away (`| head`) is no failure.
    let _ = std::io::stdout().write_all(out.as_bytes());
    0
}

/// The census as a table: one line per kind and name, largest first, then the total.
pub fn render_text(c: &Census, comm: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} ({comm}): {} mappings, {} mapped, {} resident",
        c.pid,
        c.total.count,
        size(c.total.bytes),
        size(c.total.rss_bytes)
    );
    let _ = writeln!(
        s,
        "{:<13} {:>7} {:>12} {:>12}  NAME",
        "KIND", "COUNT", "SIZE", "RESIDENT"
    );
    for g in &c.groups {
        let mut name = g.name.clone().unwrap_or_default();
        if let Some(live) = g.live_bytes {
            let held = format!("{} in live malloc blocks", size(live));
            name = if name.is_empty() {
                held
            } else {
                format!("{name} ({held})")
            };
        }
        let _ = writeln!(
            s,
            "{:<13} {:>7} {:>12} {:>12}  {name}",
            g.kind,
            g.count,
            size(g.bytes),
            size(g.rss_bytes)
        );
    }
    let _ = writeln!(
        s,
        "{:<13} {:>7} {:>12} {:>12}",
        "total",
        c.total.count,
        size(c.total.bytes),
        size(c.total.rss_bytes)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::census::{Group, Total, SCHEMA};

    #[test]
    fn the_table_says_each_group_and_the_total() {
        let c = Census {
            schema: SCHEMA.into(),
            pid: 42,
            total: Total {
                count: 3,
                bytes: 3 << 30,
                rss_bytes: 1 << 20,
            },
            groups: vec![
                Group {
                    kind: "memfd".into(),
                    name: Some("doublemapper".into()),
                    count: 2,
                    bytes: 2 << 30,
                    rss_bytes: 1 << 20,
                    live_bytes: None,
                },
                Group {
                    kind: "heap".into(),
                    name: None,
                    count: 1,
                    bytes: 1 << 30,
                    rss_bytes: 0,
                    live_bytes: Some(512 << 20),
                },
            ],
        };
        let text = render_text(&c, "app");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "42 (app): 3 mappings, 3.0 GiB mapped, 1.0 MiB resident"
        );
        assert!(
            lines[2].starts_with("memfd") && lines[2].ends_with("doublemapper"),
            "{text}"
        );
        assert!(
            lines[3].ends_with("512.0 MiB in live malloc blocks"),
            "{text}"
        );
        assert!(lines[4].starts_with("total"), "{text}");
    }
}
