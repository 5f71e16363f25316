//! Whether a program can be launched under trace, decided before it is started, and
//! what to tell the user when it cannot (one line each, with a shell's exit status).
//!
//! A `#!` script is followed the way the kernel follows it (and `/usr/bin/env NAME`
//! the way env does): what is checked is the ELF program at the end of that chain,
//! the one that will run. The script itself is what is executed, so the kernel, not
//! memtrace, runs its interpreter; the tracer follows each exec from there on.

use crate::elf::has_interpreter;
use object::{Object, ObjectSymbol};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: permission denied (not executable)")]
    NotExecutable(String),
    #[error("{0}: is a directory")]
    Directory(String),
    #[error("{0}: neither an ELF executable nor a #! script")]
    NotElf(String),
    #[error("{0}: bad interpreter {1}: no such file")]
    BadInterpreter(String, String),
    #[error("{0}: its #! line names no interpreter")]
    NoInterpreter(String),
    #[error("{0}: more than {MAX_SCRIPTS} levels of #! scripts (the kernel refuses to run it)")]
    TooDeep(String),
    #[error("{0}: 32-bit program; memtrace traces 64-bit programs only")]
    Bits32(String),
    #[error("{0}: built for {1}, but memtrace runs on {2}")]
    WrongMachine(String, String, &'static str),
    #[error("{0}: static binary without a symbol table: its allocator cannot be found (rebuild without -s, or link dynamically)")]
    StaticStripped(String),
    #[error("{0}: static binary without malloc/free symbols: no known allocator to trace")]
    StaticNoAllocator(String),
    #[error("{0}: cannot read: {1}")]
    Unreadable(String, std::io::Error),
}

impl LaunchError {
    /// Exit status, like a shell's: 127 not found, 126 found but not runnable.
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::NotFound(_) => 127,
            _ => 126,
        }
    }
}

/// How many `#!` scripts may run one another: the kernel rewrites an exec at most
/// this many times before it fails with ELOOP (`exec_binprm` in fs/exec.c).
const MAX_SCRIPTS: usize = 4;

/// The kernel reads this much of a file to find its `#!` line (BINPRM_BUF_SIZE).
const SHEBANG_BUF: usize = 256;

/// What the checks found about the program to launch.
#[derive(Debug)]
pub struct Program {
    /// What is executed: the program, or the script the kernel runs an interpreter for.
    pub path: PathBuf,
    /// The programs a `#!` chain leads to, in the order they run (empty for an ELF
    /// program): each script's interpreter, and what `env` runs. The last is the ELF
    /// program that was checked.
    pub interpreters: Vec<PathBuf>,
    /// The last program of the chain is static (has no loader).
    pub is_static: bool,
}

/// Finds `name` the way `execvp` would (a name with a slash is a path; otherwise each
/// directory of PATH), follows `#!` lines to the program that will run, and checks
/// that memtrace can trace it.
pub fn check_program(name: &str) -> Result<Program, LaunchError> {
    let path = resolve(name)?;
    let mut shown = name.to_string();
    let mut next = path.clone();
    let mut interpreters = Vec::new();
    for _ in 0..=MAX_SCRIPTS {
        let head = read_checked(&shown, &next)?;
        let Some(line) = head.strip_prefix(b"#!") else {
            let file = object::ReadCache::new(open(&shown, &next)?);
            let is_static = check_elf(&shown, &crate::elf::WithStrings::new(&file))?;
            return Ok(Program {
                path,
                interpreters,
                is_static,
            });
        };
        let shebang =
            parse_shebang(line).ok_or_else(|| LaunchError::NoInterpreter(shown.clone()))?;
        let interp = PathBuf::from(&shebang.interpreter);
        // The kernel opens the interpreter as given, relative to the cwd, not on PATH.
        if !interp.exists() {
            // Escaped: a DOS line ending leaves a `\r` in the name, which would hide it.
            let name = shebang.interpreter.escape_debug().to_string();
            return Err(LaunchError::BadInterpreter(shown, name));
        }
        shown = format!("{shown} -> {}", shebang.interpreter);
        interpreters.push(interp.clone());
        next = interp;
        if is_env(&shebang.interpreter) {
            // env must itself be traceable: it is the first image that runs.
            let head = read_checked(&shown, &next)?;
            if head.starts_with(b"#!") {
                continue;
            }
            let file = object::ReadCache::new(open(&shown, &next)?);
            let data = crate::elf::WithStrings::new(&file);
            check_elf(&shown, &data)?;
            // What env runs is found on PATH, as env's execvp does. An option this
            // does not know: the check ends at env, and the trace follows its exec.
            let Some(program) = shebang.argument.as_deref().and_then(env_program) else {
                return Ok(Program {
                    path,
                    interpreters,
                    is_static: !has_interpreter(&data),
                });
            };
            shown = format!("{shown} -> {program}");
            next = resolve(&program).map_err(|_| LaunchError::NotFound(shown.clone()))?;
            interpreters.push(next.clone());
        }
    }
    Err(LaunchError::TooDeep(name.to_string()))
}

/// The file at `path`, to be read as needed: a program with its debug info can be
/// gigabytes, of which the checks read its headers and symbols.
fn open(shown: &str, path: &Path) -> Result<std::fs::File, LaunchError> {
    std::fs::File::open(path).map_err(|e| LaunchError::Unreadable(shown.into(), e))
}

/// The checks every file of the chain passes (exists, not a directory, executable),
/// then its first bytes (enough for a `#!` line).
fn read_checked(shown: &str, path: &Path) -> Result<Vec<u8>, LaunchError> {
    let meta = std::fs::metadata(path).map_err(|e| LaunchError::Unreadable(shown.into(), e))?;
    if meta.is_dir() {
        return Err(LaunchError::Directory(shown.into()));
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(LaunchError::NotExecutable(shown.into()));
    }
    use std::io::Read;
    let mut head = Vec::with_capacity(SHEBANG_BUF);
    std::fs::File::open(path)
        .and_then(|f| f.take(SHEBANG_BUF as u64).read_to_end(&mut head))
        .map_err(|e| LaunchError::Unreadable(shown.into(), e))?;
    Ok(head)
}

fn resolve(name: &str) -> Result<PathBuf, LaunchError> {
    if name.is_empty() {
        return Err(LaunchError::NotFound(name.into()));
    }
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if p.exists() {
            Ok(p)
        } else {
            Err(LaunchError::NotFound(name.into()))
        };
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    path.split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| LaunchError::NotFound(name.into()))
}

/// A `#!` line: the interpreter, and the one argument the kernel passes it (the rest
/// of the line, which may hold spaces).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shebang {
    interpreter: String,
    argument: Option<String>,
}

/// Parses what follows `#!` in the first [`SHEBANG_BUF`] bytes of a file, as
/// fs/binfmt_script.c does: only spaces and tabs separate (a `\r` is part of a name),
/// the line ends at a newline or at the end of the buffer. None: no interpreter named
/// (or its name does not fit in the buffer), which the kernel refuses.
fn parse_shebang(after: &[u8]) -> Option<Shebang> {
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let line = match after.iter().position(|&b| b == b'\n') {
        Some(end) => &after[..end],
        None => {
            // No newline in the buffer: the interpreter's name must end inside it.
            let name_start = after.iter().position(|b| !blank(b))?;
            after[name_start..]
                .iter()
                .position(|b| blank(b) || *b == 0)?;
            after
        }
    };
    let line = match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let start = line.iter().position(|b| !blank(b))?;
    let end = line.iter().rposition(|b| !blank(b))? + 1;
    let line = &line[start..end];
    let (name, rest) = match line.iter().position(blank) {
        Some(i) => (&line[..i], Some(&line[i..])),
        None => (line, None),
    };
    let argument = rest
        .map(|r| &r[r.iter().position(|b| !blank(b)).unwrap_or(r.len())..])
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned());
    Some(Shebang {
        interpreter: String::from_utf8_lossy(name).into_owned(),
        argument,
    })
}

fn is_env(interpreter: &str) -> bool {
    Path::new(interpreter)
        .file_name()
        .is_some_and(|n| n == "env")
}

/// The program `env ARGUMENT` runs: its first word that is neither an option nor a
/// `NAME=VALUE` (`-S` splits the rest into words). None when there is none, or an
/// option this does not know comes first.
fn env_program(argument: &str) -> Option<String> {
    let mut words: Vec<&str> = argument
        .split([' ', '\t'])
        .filter(|w| !w.is_empty())
        .collect();
    let mut i = 0;
    while i < words.len() {
        let w = words[i];
        match w {
            "-S" | "--split-string" => {}
            "-i" | "--ignore-environment" | "-" | "-0" | "--null" => {}
            "-u" | "--unset" => i += 1,
            _ if w.starts_with("--unset=") => {}
            _ if w.starts_with("-S") => {
                words[i] = &w[2..];
                continue;
            }
            _ if w.starts_with('-') => return None,
            _ if w.contains('=') => {}
            _ => return Some(w.to_string()),
        }
        i += 1;
    }
    None
}

/// Checks the ELF header; returns whether the program is static (no interpreter).
/// `data` is the file's bytes, or the file read as needed.
fn check_elf<'d, R: object::ReadRef<'d>>(shown: &str, data: R) -> Result<bool, LaunchError> {
    let ident = data.read_bytes_at(0, 20).unwrap_or(&[]);
    if ident.len() < 20 || &ident[..4] != b"\x7fELF" {
        return Err(LaunchError::NotElf(shown.into()));
    }
    if ident[4] == 1 {
        return Err(LaunchError::Bits32(shown.into()));
    }
    let file = object::File::parse(data).map_err(|_| LaunchError::NotElf(shown.into()))?;
    let native = native_architecture();
    if file.architecture() != native {
        return Err(LaunchError::WrongMachine(
            shown.into(),
            format!("{:?}", file.architecture()),
            memtrace_arch_name(),
        ));
    }
    let is_static = !has_interpreter(data);
    if is_static {
        if file.symbols().next().is_none() {
            return Err(LaunchError::StaticStripped(shown.into()));
        }
        let has_malloc = file
            .symbols()
            .any(|s| s.is_definition() && s.name() == Ok("malloc"));
        if !has_malloc {
            return Err(LaunchError::StaticNoAllocator(shown.into()));
        }
    }
    Ok(is_static)
}

fn native_architecture() -> object::Architecture {
    #[cfg(target_arch = "x86_64")]
    return object::Architecture::X86_64;
    #[cfg(target_arch = "aarch64")]
    return object::Architecture::Aarch64;
}

fn memtrace_arch_name() -> &'static str {
    use memtrace_arch::Arch;
    memtrace_arch::Native::NAME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_cannot_be_traced() {
        assert!(matches!(
            check_elf("x", &b"#!/bin/sh\n"[..]),
            Err(LaunchError::NotElf(_))
        ));
        let mut elf32 = b"\x7fELF\x01\x01\x01".to_vec();
        elf32.resize(64, 0);
        assert!(matches!(
            check_elf("x", &elf32[..]),
            Err(LaunchError::Bits32(_))
        ));
        assert!(matches!(
            resolve("surely-no-such-program-memtrace"),
            Err(LaunchError::NotFound(_))
        ));
        assert_eq!(LaunchError::NotFound("x".into()).exit_code(), 127);
    }

    #[test]
    fn checks_our_own_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        assert!(!check_elf("self", &data[..]).unwrap());
        // The same, read as needed from the file.
        let file = std::fs::File::open(&exe).unwrap();
        assert!(!check_elf("self", &object::ReadCache::new(&file)).unwrap());
    }

    fn sb(interpreter: &str, argument: Option<&str>) -> Option<Shebang> {
        Some(Shebang {
            interpreter: interpreter.into(),
            argument: argument.map(String::from),
        })
    }

    #[test]
    fn parses_shebang_lines_as_the_kernel_does() {
        assert_eq!(parse_shebang(b"/bin/sh\necho"), sb("/bin/sh", None));
        assert_eq!(parse_shebang(b" \t/bin/sh  \n"), sb("/bin/sh", None));
        // One argument: the rest of the line, inner blanks kept, outer ones trimmed.
        assert_eq!(
            parse_shebang(b"/usr/bin/env -S python3 -u \n"),
            sb("/usr/bin/env", Some("-S python3 -u"))
        );
        // A DOS line ending is part of the name (bash: "bad interpreter: /bin/sh^M").
        assert_eq!(parse_shebang(b"/bin/sh\r\n"), sb("/bin/sh\r", None));
        assert_eq!(parse_shebang(b"  \n/bin/sh"), None);
        assert_eq!(parse_shebang(b"\n"), None);
        // No newline within the buffer: fine if the name ends inside it.
        assert_eq!(parse_shebang(b"/bin/sh -x"), sb("/bin/sh", Some("-x")));
        let long = [b'/'; SHEBANG_BUF - 2];
        assert_eq!(parse_shebang(&long), None);
    }

    #[test]
    fn finds_what_env_runs() {
        assert_eq!(env_program("python3"), Some("python3".into()));
        assert_eq!(env_program("-S python3 -u"), Some("python3".into()));
        assert_eq!(env_program("-Spython3 -u"), Some("python3".into()));
        assert_eq!(env_program("-i A=1 -u B perl -w"), Some("perl".into()));
        assert_eq!(env_program("--chdir=/ ruby"), None);
        assert_eq!(env_program("A=1"), None);
    }
}
