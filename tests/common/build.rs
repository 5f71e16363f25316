//! Builds the fixtures with the system C and C++ compilers.
//!
//! Each (fixture, flags) pair is compiled at most once per test process, into
//! `target/fixtures/<flags>/`. Parallel tests wait for one another on a per-output
//! lock, and the compiler writes to a temporary name that is renamed into place, so a
//! concurrent test process never runs a half-written file.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::{fixtures_dir, work_dir};

/// The default build: debug information, no optimization.
pub const DEBUG: &[&str] = &["-g", "-O0"];

/// The optimized build: no frame pointer, so stacks cannot be walked through %rbp.
pub const OPTIMIZED: &[&str] = &["-g", "-O2", "-fomit-frame-pointer"];

type Cell = Arc<OnceLock<PathBuf>>;

/// Runs `make` once per key for the whole process; later callers get its result.
fn once(key: String, make: impl FnOnce() -> PathBuf) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, Cell>>> = OnceLock::new();
    let cell = {
        let mut built = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        built.entry(key).or_default().clone()
    };
    cell.get_or_init(make).clone()
}

/// `target/fixtures/<flags>/`, one directory per set of flags.
fn out_dir(flags: &[&str]) -> PathBuf {
    let name: String = flags
        .iter()
        .map(|f| f.trim_start_matches('-'))
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let dir = work_dir().join(if name.is_empty() {
        "default".to_string()
    } else {
        name
    });
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// `fixtures/NAME.c` or `fixtures/NAME.cc`.
pub fn fixture_source(name: &str) -> PathBuf {
    for ext in ["c", "cc"] {
        let path = fixtures_dir().join(format!("{name}.{ext}"));
        if path.exists() {
            return path;
        }
    }
    panic!("no fixture source fixtures/{name}.c or fixtures/{name}.cc");
}

fn compiler_for(source: &Path) -> Vec<&'static str> {
    match source.extension().and_then(|e| e.to_str()) {
        Some("cc") => vec!["c++", "-std=c++17"],
        _ => vec!["cc"],
    }
}

/// Compiles into a temporary name next to `output`, then renames it into place.
fn compile(output: &Path, args: &[String]) {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let temporary = output.with_file_name(format!(
        ".{}.{}.{}.tmp",
        output.file_name().and_then(|n| n.to_str()).unwrap_or("out"),
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    let (program, rest) = args.split_first().expect("a compiler command line");
    let result = Command::new(program)
        .args(rest)
        .arg("-o")
        .arg(&temporary)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e} (is gcc installed?)"));
    if !result.status.success() {
        let _ = fs::remove_file(&temporary);
        panic!(
            "building {} failed: {} {}\n{}",
            output.display(),
            program,
            rest.join(" "),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    fs::rename(&temporary, output).unwrap_or_else(|e| {
        panic!(
            "cannot rename {} to {}: {e}",
            temporary.display(),
            output.display()
        )
    });
}

/// The library a fixture links against, from a `LINK: name` line in its source.
fn linked_library(source: &Path) -> Option<String> {
    let text = fs::read_to_string(source).ok()?;
    text.lines().find_map(|line| {
        let rest = &line[line.find("LINK:")? + "LINK:".len()..];
        rest.split_whitespace().next().map(str::to_string)
    })
}

/// The compiler for `source`, then `flags`, then `extra`.
fn compiler_args(source: &Path, flags: &[&str], extra: &[&str]) -> Vec<String> {
    compiler_for(source)
        .iter()
        .chain(flags)
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
}

/// Builds the executable `fixtures/NAME.c` (or `.cc`) with `flags` and returns its
/// absolute path. A fixture whose source says `LINK: lib` is linked against
/// `lib.so`, built alongside and found at run time through an `$ORIGIN` rpath.
pub fn build_fixture(name: &str, flags: &[&str]) -> PathBuf {
    let dir = out_dir(flags);
    let output = dir.join(name);
    let key = format!("exe {}", output.display());
    once(key, || {
        let source = fixture_source(name);
        let mut args = compiler_args(&source, flags, &["-Wall", "-Wextra", "-pthread"]);
        args.push(source.display().to_string());
        if let Some(library) = linked_library(&source) {
            let shared = build_shared(&library, flags);
            args.push(shared.display().to_string());
            args.push("-Wl,-rpath,$ORIGIN".to_string());
        }
        compile(&output, &args);
        output
    })
}

/// Builds `fixtures/NAME.c` (or `.cc`) as the shared library `NAME.so` (soname
/// `NAME.so`) with `flags` plus `-shared -fPIC`, and returns its absolute path.
pub fn build_shared(name: &str, flags: &[&str]) -> PathBuf {
    // A static flag makes no sense for a library; build it as the dynamic one.
    let flags: Vec<&str> = flags.iter().copied().filter(|f| *f != "-static").collect();
    let dir = out_dir(&flags);
    let output = dir.join(format!("{name}.so"));
    let key = format!("so {}", output.display());
    once(key, || {
        let source = fixture_source(name);
        let mut args = compiler_args(&source, &flags, &["-Wall", "-Wextra", "-shared", "-fPIC"]);
        args.push(format!("-Wl,-soname,{name}.so"));
        args.push(source.display().to_string());
        compile(&output, &args);
        output
    })
}

/// Builds the fixture with `flags`, then strips every symbol from a copy
/// (`NAME.stripped`). Used with `-static` for "static and stripped".
pub fn build_stripped(name: &str, flags: &[&str]) -> PathBuf {
    let built = build_fixture(name, flags);
    let output = built.with_file_name(format!("{name}.stripped"));
    let key = format!("stripped {}", output.display());
    once(key, || {
        let args = vec![
            "strip".to_string(),
            "--strip-all".to_string(),
            built.display().to_string(),
        ];
        compile(&output, &args);
        output
    })
}

/// Files that are not programs memtrace can trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crafted {
    /// A text file without the execute bit.
    NotExecutable,
    /// Executable bits on content that is neither ELF nor a `#!` script.
    NotElf,
    /// A real 32-bit x86 ELF executable that exits 0 (the kernel runs it natively when
    /// it has IA-32 emulation, so only memtrace itself can refuse it).
    Elf32,
}

/// Writes the crafted file (once per process) and returns its absolute path.
pub fn crafted(kind: Crafted) -> PathBuf {
    let dir = work_dir().join("crafted");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let (name, bytes, mode): (&str, Vec<u8>, u32) = match kind {
        Crafted::NotExecutable => ("not-executable.txt", b"just some text\n".to_vec(), 0o644),
        Crafted::NotElf => (
            "not-elf.bin",
            b"\x01\x02garbage: neither ELF nor a script\n\xff\xfe".to_vec(),
            0o755,
        ),
        Crafted::Elf32 => ("elf32-exit0", elf32_exit0(), 0o755),
    };
    let output = dir.join(name);
    once(format!("crafted {}", output.display()), || {
        let temporary = output.with_extension(format!("{}.tmp", std::process::id()));
        fs::write(&temporary, &bytes)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", temporary.display()));
        fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", temporary.display()));
        fs::rename(&temporary, &output)
            .unwrap_or_else(|e| panic!("cannot rename to {}: {e}", output.display()));
        output.clone()
    })
}

/// A minimal i386 ELF executable: one PT_LOAD segment whose code is `exit(0)` through
/// `int 0x80`.
fn elf32_exit0() -> Vec<u8> {
    const BASE: u32 = 0x0804_8000;
    const EHSIZE: u16 = 52;
    const PHSIZE: u16 = 32;
    // mov eax, 1 (exit); mov ebx, 0; int 0x80
    let code: [u8; 12] = [0xb8, 1, 0, 0, 0, 0xbb, 0, 0, 0, 0, 0xcd, 0x80];
    let total = u32::from(EHSIZE) + u32::from(PHSIZE) + code.len() as u32;

    let mut elf = vec![
        0x7f, b'E', b'L', b'F', 1, /* 32-bit */
        1, /* LE */
        1, 0,
    ];
    elf.extend([0u8; 8]);
    let half = |v: u16| v.to_le_bytes();
    let word = |v: u32| v.to_le_bytes();
    elf.extend(half(2)); // ET_EXEC
    elf.extend(half(3)); // EM_386
    elf.extend(word(1)); // EV_CURRENT
    elf.extend(word(BASE + u32::from(EHSIZE) + u32::from(PHSIZE))); // entry
    elf.extend(word(u32::from(EHSIZE))); // e_phoff
    elf.extend(word(0)); // e_shoff
    elf.extend(word(0)); // e_flags
    elf.extend(half(EHSIZE));
    elf.extend(half(PHSIZE));
    elf.extend(half(1)); // e_phnum
    elf.extend(half(0)); // e_shentsize
    elf.extend(half(0)); // e_shnum
    elf.extend(half(0)); // e_shstrndx
    elf.extend(word(1)); // PT_LOAD
    elf.extend(word(0)); // p_offset
    elf.extend(word(BASE)); // p_vaddr
    elf.extend(word(BASE)); // p_paddr
    elf.extend(word(total)); // p_filesz
    elf.extend(word(total)); // p_memsz
    elf.extend(word(5)); // PF_R | PF_X
    elf.extend(word(0x1000)); // p_align
    elf.extend(code);
    elf
}
