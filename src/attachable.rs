//! Whether a process can be attached to, decided before touching it, and what to
//! tell the user when it cannot (one line each, with what to do).
//!
//! The decisions are pure functions of the `/proc` text they are given, so they are
//! tested here on crafted text; [`check`] reads the real files.

use object::{Object, ObjectSymbol};

/// Why memtrace will not (or could not) attach.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}: no such process")]
    NoSuchProcess(i32),
    #[error("{0} ({1}) is a zombie: it has exited and waits for its parent to reap it; there is nothing left to trace")]
    Zombie(i32, String),
    #[error("{0} ({1}) is a kernel thread: it has no user-space allocator to trace")]
    KernelThread(i32, String),
    #[error("{0} is memtrace itself")]
    Ourselves(i32),
    #[error("{pid} is a thread of process {tgid}: attach to {tgid} (every thread is traced)")]
    NotAProcess { pid: i32, tgid: i32 },
    #[error("{pid} ({name}) is already traced by process {tracer} ({tracer_name}): a process has one tracer at a time; detach that one first")]
    AlreadyTraced {
        pid: i32,
        name: String,
        tracer: i32,
        tracer_name: String,
    },
    #[error("cannot attach to {pid} ({name}): permission denied: {why}")]
    PermissionDenied { pid: i32, name: String, why: String },
    #[error("{pid} ({name}): {why}")]
    NoAllocator { pid: i32, name: String, why: String },
}

impl Refusal {
    /// Like a shell's: 127 when there is no such process, 126 when it cannot be traced.
    pub fn exit_code(&self) -> i32 {
        match self {
            Refusal::NoSuchProcess(_) => 127,
            _ => 126,
        }
    }
}

/// The fields of `/proc/PID/status` that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    /// The one-letter state: R, S, D, T, t, Z, X, I...
    pub state: char,
    pub tgid: i32,
    pub tracer_pid: i32,
    /// Real and effective user ids.
    pub uid: u32,
    pub euid: u32,
    /// Effective capabilities, as a bit mask.
    pub cap_eff: u64,
}

pub fn parse_status(text: &str) -> Status {
    let mut s = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => s.name = value.to_string(),
            "State" => s.state = value.chars().next().unwrap_or('?'),
            "Tgid" => s.tgid = value.parse().unwrap_or(0),
            "TracerPid" => s.tracer_pid = value.parse().unwrap_or(0),
            "Uid" => {
                let mut ids = value.split_whitespace().map(|v| v.parse().unwrap_or(0));
                s.uid = ids.next().unwrap_or(0);
                s.euid = ids.next().unwrap_or(0);
            }
            "CapEff" => s.cap_eff = u64::from_str_radix(value, 16).unwrap_or(0),
            _ => {}
        }
    }
    s
}

/// The kernel's per-process flags (field 9 of `/proc/PID/stat`).
pub fn stat_flags(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(9 - 3)?.parse().ok()
}

const PF_KTHREAD: u64 = 0x0020_0000;
const CAP_SYS_PTRACE: u64 = 19;

/// The refusal that the status of `pid` (and its stat flags) calls for, if any.
pub fn refusal(pid: i32, me: i32, st: &Status, flags: Option<u64>) -> Option<Refusal> {
    let name = st.name.clone();
    if pid == me || st.tgid == me {
        return Some(Refusal::Ourselves(pid));
    }
    if st.state == 'Z' || st.state == 'X' {
        return Some(Refusal::Zombie(pid, name));
    }
    if flags.is_some_and(|f| f & PF_KTHREAD != 0) {
        return Some(Refusal::KernelThread(pid, name));
    }
    if st.tgid != 0 && st.tgid != pid {
        return Some(Refusal::NotAProcess { pid, tgid: st.tgid });
    }
    None
}

/// Why PTRACE_SEIZE said EPERM, and how to fix it.
pub fn explain_eperm(me: &Status, target: &Status, yama_scope: Option<u32>) -> String {
    let mut why = Vec::new();
    let has_cap = me.cap_eff & (1 << CAP_SYS_PTRACE) != 0;
    if me.euid != 0 && me.euid != target.uid {
        why.push(format!(
            "memtrace runs as user {} and the process belongs to user {} (run memtrace with sudo)",
            me.euid, target.uid
        ));
    }
    if !has_cap {
        why.push(
            "memtrace lacks CAP_SYS_PTRACE (sudo, or: sudo setcap cap_sys_ptrace+ep $(which memtrace))"
                .to_string(),
        );
    }
    match yama_scope {
        Some(1) if !has_cap => why.push(
            "kernel.yama.ptrace_scope is 1: only a parent may trace its children (sudo sysctl kernel.yama.ptrace_scope=0, or sudo)"
                .to_string(),
        ),
        Some(2) if !has_cap => why.push(
            "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE may attach (sudo, or sudo sysctl kernel.yama.ptrace_scope=0)"
                .to_string(),
        ),
        Some(3) => why.push(
            "kernel.yama.ptrace_scope is 3: attaching is disabled until reboot".to_string(),
        ),
        _ => {}
    }
    if why.is_empty() {
        why.push(
            "the kernel refused (a security module, a setuid or non-dumpable process, or a container boundary)"
                .to_string(),
        );
    }
    why.join("; ")
}

/// Why an executable with no glibc mapped has no allocator memtrace knows, if so.
pub fn no_allocator(exe: &[u8]) -> Option<String> {
    let Ok(file) = object::File::parse(exe) else {
        return Some("its executable is not an ELF file memtrace can read".into());
    };
    let is_go = [".go.buildinfo", ".gopclntab", ".note.go.buildid"]
        .iter()
        .any(|n| file.section_by_name(n).is_some())
        || file.symbols().any(|s| s.name() == Ok("runtime.mallocgc"));
    if is_go {
        return Some(
            "a Go program: Go's allocator is its own runtime, not malloc; memtrace cannot trace it"
                .into(),
        );
    }
    if crate::elf::has_interpreter(exe) {
        return Some(
            "no glibc libc.so is mapped (another C library, such as musl? or the program is still starting: try again): no known allocator"
                .into(),
        );
    }
    if file.symbols().next().is_none() {
        return Some(
            "a static binary without a symbol table: its allocator cannot be found".into(),
        );
    }
    let has_malloc = file
        .symbols()
        .any(|s| s.is_definition() && s.name() == Ok("malloc"));
    (!has_malloc).then(|| "a static binary without malloc/free symbols: no known allocator".into())
}

/// Checks `pid` before attaching: it exists, is a user process that is not memtrace,
/// not traced already, and has an allocator memtrace knows.
pub fn check(pid: i32) -> Result<(), Refusal> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| Refusal::NoSuchProcess(pid))?;
    let st = parse_status(&status);
    let flags = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| stat_flags(&s));
    if let Some(r) = refusal(pid, std::process::id() as i32, &st, flags) {
        return Err(r);
    }
    if st.tracer_pid != 0 {
        let tracer_name = std::fs::read_to_string(format!("/proc/{}/comm", st.tracer_pid))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        return Err(Refusal::AlreadyTraced {
            pid,
            name: st.name,
            tracer: st.tracer_pid,
            tracer_name,
        });
    }
    let maps = crate::maps::read(pid).unwrap_or_default();
    let has_libc = crate::maps::modules(&maps).iter().any(|m| m.is_libc());
    if !has_libc {
        if let Ok(exe) = std::fs::read(format!("/proc/{pid}/exe")) {
            if let Some(why) = no_allocator(&exe) {
                return Err(Refusal::NoAllocator {
                    pid,
                    name: st.name,
                    why,
                });
            }
        }
    }
    Ok(())
}

/// The refusal for an EPERM from PTRACE_SEIZE, with the reasons found.
pub fn permission_denied(pid: i32) -> Refusal {
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
    let me = parse_status(&read("/proc/self/status".into()));
    let target = parse_status(&read(format!("/proc/{pid}/status")));
    // The file exists only with the Yama security module.
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Refusal::PermissionDenied {
        pid,
        name: target.name.clone(),
        why: explain_eperm(&me, &target, yama),
    }
}

/// What to tell the user when attaching failed, and the exit status: a refusal when
/// the kernel's error has one (permissions, a process that is gone), else the error.
pub fn attach_failure(pid: i32, e: &crate::tracer::AttachError) -> (String, i32) {
    use crate::tracer::AttachError;
    let refusal = match e {
        AttachError::Seize { err, .. } if err.raw_os_error() == Some(libc::EPERM) => {
            Some(permission_denied(pid))
        }
        AttachError::Seize { err, .. } if err.raw_os_error() == Some(libc::ESRCH) => {
            Some(Refusal::NoSuchProcess(pid))
        }
        _ => None,
    };
    match refusal {
        Some(r) => (r.to_string(), r.exit_code()),
        None => (format!("{pid}: {e}"), 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tapp server\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\n\
        Pid:\t42\nTracerPid:\t0\nUid:\t1000\t1000\t1000\t1000\nCapEff:\t000001ffffffffff\n";

    #[test]
    fn reads_status() {
        let s = parse_status(STATUS);
        assert_eq!((s.name.as_str(), s.state, s.tgid), ("app server", 'S', 42));
        assert_eq!((s.tracer_pid, s.uid, s.euid), (0, 1000, 1000));
        assert_ne!(s.cap_eff & (1 << CAP_SYS_PTRACE), 0);
    }

    #[test]
    fn reads_stat_flags_past_a_name_with_spaces() {
        let stat = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0";
        assert_eq!(stat_flags(stat), Some(2129984));
        assert_eq!(stat_flags("7 (a) b) R 1 7 7 0 -1 4194560 1"), Some(4194560));
    }

    #[test]
    fn refuses_what_cannot_be_traced() {
        let st = parse_status(STATUS);
        assert_eq!(refusal(42, 1, &st, Some(0x400100)), None);
        assert_eq!(refusal(42, 42, &st, None), Some(Refusal::Ourselves(42)));
        let zombie = Status {
            state: 'Z',
            ..st.clone()
        };
        assert!(matches!(
            refusal(42, 1, &zombie, None),
            Some(Refusal::Zombie(42, _))
        ));
        assert!(matches!(
            refusal(42, 1, &st, Some(2129984)),
            Some(Refusal::KernelThread(42, _))
        ));
        assert_eq!(
            refusal(43, 1, &st, None),
            Some(Refusal::NotAProcess { pid: 43, tgid: 42 })
        );
        assert_eq!(Refusal::NoSuchProcess(1).exit_code(), 127);
        assert_eq!(Refusal::Ourselves(1).exit_code(), 126);
    }

    #[test]
    fn permission_denied_says_why_and_how_to_fix() {
        let nobody = Status {
            euid: 65534,
            uid: 65534,
            ..Status::default()
        };
        let root_owned = Status::default();
        let why = explain_eperm(&nobody, &root_owned, None);
        assert!(why.contains("user 65534") && why.contains("sudo"), "{why}");
        assert!(why.contains("CAP_SYS_PTRACE"), "{why}");
        assert!(!why.contains("yama"), "{why}");
        let why = explain_eperm(&nobody, &nobody, Some(1));
        assert!(why.contains("ptrace_scope is 1"), "{why}");
        assert!(!why.contains("belongs"), "{why}");
        let root = Status {
            cap_eff: 1 << CAP_SYS_PTRACE,
            ..Status::default()
        };
        assert!(explain_eperm(&root, &root_owned, Some(3)).contains("disabled"));
        assert!(explain_eperm(&root, &root_owned, None).contains("kernel refused"));
    }

    #[test]
    fn our_own_binary_has_an_allocator() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Dynamic: the verdict comes from the maps (libc mapped), not from here.
        assert!(no_allocator(&exe).unwrap().contains("no glibc"));
        assert!(no_allocator(b"junk").is_some());
    }
}
