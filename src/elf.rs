//! Reading ELF files: the checks before launch, symbol lookup, load bias.

use object::{Object, ObjectSegment, ObjectSymbol};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{0}: permission denied (not executable)")]
    NotExecutable(String),
    #[error("{0}: is a directory")]
    Directory(String),
    #[error("{0}: not an ELF executable (memtrace traces native programs; for a script, run its interpreter: memtrace launch -- python3 script.py)")]
    NotElf(String),
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

/// What the checks found about the program to launch.
#[derive(Debug)]
pub struct Program {
    pub path: PathBuf,
    pub is_static: bool,
}

/// Finds `name` the way `execvp` would (a name with a slash is a path; otherwise each
/// directory of PATH), then checks that memtrace can trace it.
pub fn check_program(name: &str) -> Result<Program, LaunchError> {
    let path = resolve(name)?;
    let shown = name.to_string();
    let meta = std::fs::metadata(&path).map_err(|e| LaunchError::Unreadable(shown.clone(), e))?;
    if meta.is_dir() {
        return Err(LaunchError::Directory(shown));
    }
    use std::os::unix::fs::PermissionsExt;
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(LaunchError::NotExecutable(shown));
    }
    let data = std::fs::read(&path).map_err(|e| LaunchError::Unreadable(shown.clone(), e))?;
    check_elf(&shown, &data).map(|is_static| Program { path, is_static })
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

/// Checks the ELF header; returns whether the program is static (no interpreter).
fn check_elf(shown: &str, data: &[u8]) -> Result<bool, LaunchError> {
    if data.len() < 20 || &data[..4] != b"\x7fELF" {
        return Err(LaunchError::NotElf(shown.into()));
    }
    if data[4] == 1 {
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

/// Whether a 64-bit ELF has a PT_INTERP program header (is dynamically linked).
pub fn has_interpreter(data: &[u8]) -> bool {
    use object::elf::{FileHeader64, PT_INTERP};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::Endianness;
    let Ok(hdr) = FileHeader64::<Endianness>::parse(data) else {
        return false;
    };
    let Ok(endian) = hdr.endian() else {
        return false;
    };
    let Ok(phdrs) = hdr.program_headers(endian, data) else {
        return false;
    };
    phdrs.iter().any(|p| p.p_type(endian) == PT_INTERP)
}

/// A function symbol defined in an object, at its file (link-time) address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FnSymbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
}

/// An ELF object's facts that the tracer needs, read once per file.
#[derive(Debug, Default)]
pub struct ObjectInfo {
    /// Lowest PT_LOAD virtual address, page aligned down (0 for shared objects).
    pub first_vaddr: u64,
    /// Defined function symbols from both .dynsym and .symtab.
    pub functions: Vec<FnSymbol>,
    /// Defined data symbols that the tracer asks for (the loader's `_r_debug`).
    pub objects: Vec<FnSymbol>,
}

impl ObjectInfo {
    pub fn parse(data: &[u8]) -> Option<ObjectInfo> {
        let file = object::File::parse(data).ok()?;
        let first_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
        let mut functions = Vec::new();
        let mut objects = Vec::new();
        for s in file.dynamic_symbols().chain(file.symbols()) {
            if !s.is_definition() || s.address() == 0 {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            let sym = FnSymbol {
                name: name.to_string(),
                address: s.address(),
                size: s.size(),
            };
            match s.kind() {
                object::SymbolKind::Text => functions.push(sym),
                object::SymbolKind::Data => objects.push(sym),
                _ => {}
            }
        }
        Some(ObjectInfo {
            first_vaddr,
            functions,
            objects,
        })
    }

    pub fn function(&self, name: &str) -> Option<&FnSymbol> {
        self.functions.iter().find(|s| s.name == name)
    }

    pub fn object(&self, name: &str) -> Option<&FnSymbol> {
        self.objects.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_cannot_be_traced() {
        assert!(matches!(
            check_elf("x", b"#!/bin/sh\n"),
            Err(LaunchError::NotElf(_))
        ));
        let mut elf32 = b"\x7fELF\x01\x01\x01".to_vec();
        elf32.resize(64, 0);
        assert!(matches!(
            check_elf("x", &elf32),
            Err(LaunchError::Bits32(_))
        ));
        assert!(matches!(
            resolve("surely-no-such-program-memtrace"),
            Err(LaunchError::NotFound(_))
        ));
        assert_eq!(LaunchError::NotFound("x".into()).exit_code(), 127);
    }

    #[test]
    fn reads_our_own_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        assert!(!check_elf("self", &data).unwrap());
        let info = ObjectInfo::parse(&data).unwrap();
        assert!(!info.functions.is_empty());
    }

    #[test]
    fn finds_libc_allocator_symbols() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = crate::maps::modules(&crate::maps::parse_maps(&maps))
            .into_iter()
            .find(|m| m.file_name().starts_with("libc.so"))
            .expect("libc mapped");
        let info = ObjectInfo::parse(&std::fs::read(&libc.path).unwrap()).unwrap();
        let malloc = info.function("malloc").expect("malloc in libc");
        // The address we compute must be the one this very process calls.
        let ours = libc::malloc as *const () as u64;
        assert_eq!(libc.base - info.first_vaddr + malloc.address, ours);
    }
}
