//! `/proc/PID/maps`, parsed, and the loaded objects (modules) it describes.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub offset: u64,
    pub inode: u64,
    /// The mapped file, or a pseudo name such as `[stack]`, or empty.
    pub path: String,
}

impl Mapping {
    /// Backed by a regular file (not `[heap]`, `[vdso]`, anonymous or deleted).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/') && !self.path.ends_with(" (deleted)")
    }
}

/// The mappings of process `pid`, from `/proc/PID/maps`.
pub fn read(pid: i32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

/// Parses the text of `/proc/PID/maps`. Lines that do not parse are skipped: the
/// format is the kernel's, but a truncated read must not end the trace.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    // 7f1c2a000000-7f1c2a022000 r--p 00000000 fe:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    if perms.len() < 3 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        offset,
        inode,
        path,
    })
}

/// One ELF object mapped into the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// Path as the target sees it.
    pub path: String,
    /// Lowest and highest address of its mappings.
    pub start: u64,
    pub end: u64,
    /// Address of the mapping of file offset 0: for a shared object or PIE this is where
    /// the ELF header is, and (with the usual first PT_LOAD at vaddr 0) the load bias.
    pub base: u64,
    pub inode: u64,
}

impl Module {
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// glibc's C library (whose allocator memtrace hooks).
    pub fn is_libc(&self) -> bool {
        let name = self.file_name();
        name.starts_with("libc.so") || name.starts_with("libc-2.")
    }

    pub fn file_name(&self) -> &str {
        Path::new(&self.path)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or(&self.path)
    }
}

/// Groups file mappings into modules: consecutive mappings of one file (by path and
/// inode) form one module, starting at its offset-0 mapping. Only files with code
/// mapped are modules: `/etc/ld.so.cache` or a locale archive mapped for reading is
/// data, and its coming and going means nothing to stacks.
pub fn modules(maps: &[Mapping]) -> Vec<Module> {
    let mut out: Vec<(Module, bool)> = Vec::new();
    for m in maps.iter().filter(|m| m.is_file()) {
        match out.last_mut() {
            Some((last, code)) if last.path == m.path && last.inode == m.inode && m.offset != 0 => {
                last.end = last.end.max(m.end);
                *code |= m.exec;
            }
            _ => {
                if m.offset != 0 {
                    // A mapping of a file whose header is not mapped (a data file mmap'd
                    // at an offset): not a loaded object.
                    continue;
                }
                let module = Module {
                    path: m.path.clone(),
                    start: m.start,
                    end: m.end,
                    base: m.start,
                    inode: m.inode,
                };
                out.push((module, m.exec));
            }
        }
    }
    out.into_iter()
        .filter(|(_, code)| *code)
        .map(|(m, _)| m)
        .collect()
}

/// The path through which memtrace opens a file the target has mapped: through
/// `/proc/PID/root`, so a target in another mount namespace (a container) is read from
/// its own filesystem.
pub fn target_path(pid: i32, path: &str) -> PathBuf {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    if root.join(path.trim_start_matches('/')).exists() {
        root.join(path.trim_start_matches('/'))
    } else {
        PathBuf::from(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
5581a2b4a000-5581a2b4b000 r--p 00000000 fe:01 100 /src/leak
5581a2b4b000-5581a2b4c000 r-xp 00001000 fe:01 100 /src/leak
5581a2b4d000-5581a2b4e000 rw-p 00002000 fe:01 100 /src/leak
5581a3000000-5581a3021000 rw-p 00000000 00:00 0 [heap]
7f1c2a000000-7f1c2a022000 r--p 00000000 fe:01 200 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a022000-7f1c2a197000 r-xp 00022000 fe:01 200 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1c2a300000-7f1c2a301000 rw-p 00000000 00:00 0
7ffd1000000-7ffd1021000 rw-p 00000000 00:00 0                          [stack]
garbage line
";

    #[test]
    fn parses_lines_and_groups_modules() {
        let maps = parse_maps(MAPS);
        assert_eq!(maps.len(), 8);
        assert!(maps[1].exec && !maps[1].write);
        assert_eq!(maps[7].path, "[stack]");
        let mods = modules(&maps);
        assert_eq!(mods.len(), 2);
        assert_eq!(mods[0].path, "/src/leak");
        assert_eq!(
            (mods[0].start, mods[0].end),
            (0x5581a2b4a000, 0x5581a2b4e000)
        );
        assert_eq!(mods[1].file_name(), "libc.so.6");
        assert!(mods[1].contains(0x7f1c2a100000));
        assert!(!mods[1].contains(0x7f1c2a300000));
    }

    #[test]
    fn data_files_are_not_modules() {
        let maps = parse_maps(
            "1000-9000 r--p 00000000 fe:01 5 /etc/ld.so.cache\n\
             a000-b000 r--p 00000000 fe:01 6 /lib/x.so\n\
             b000-c000 r-xp 00001000 fe:01 6 /lib/x.so\n",
        );
        let mods = modules(&maps);
        assert_eq!(mods.len(), 1);
        assert_eq!(mods[0].path, "/lib/x.so");
    }

    #[test]
    fn deleted_and_anonymous_are_not_modules() {
        let maps = parse_maps(
            "1000-2000 r-xp 00000000 fe:01 5 /tmp/x (deleted)\n3000-4000 rw-p 00000000 00:00 0\n",
        );
        assert!(modules(&maps).is_empty());
    }
}
