//! `/proc/PID/maps` (and `/proc/PID/smaps`, the same lines with sizes), parsed, and
//! the loaded objects (modules) it describes.

use std::path::{Path, PathBuf};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// MAP_SHARED (`s`), not private (`p`).
    pub shared: bool,
    pub offset: u64,
    /// The file's device, major and minor.
    pub dev: (u32, u32),
    pub inode: u64,
    /// The mapped file, or a pseudo name such as `[stack]`, or empty.
    pub path: String,
    /// Resident bytes, from `/proc/PID/smaps` (None from `/proc/PID/maps`).
    pub rss: Option<u64>,
}

impl Mapping {
    /// Backed by a regular file (not `[heap]`, `[vdso]`, anonymous or deleted).
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/') && !self.path.ends_with(" (deleted)")
    }

    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The permissions as the kernel writes them: `rw-p`.
    pub fn perms(&self) -> String {
        let f = |on: bool, c: char| if on { c } else { '-' };
        [
            f(self.read, 'r'),
            f(self.write, 'w'),
            f(self.exec, 'x'),
            if self.shared { 's' } else { 'p' },
        ]
        .iter()
        .collect()
    }
}

/// The mappings of process `pid`, from `/proc/PID/maps`.
pub fn read(pid: i32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

/// The mappings of process `pid` with their resident sizes, from `/proc/PID/smaps`.
pub fn read_smaps(pid: i32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_smaps(&std::fs::read_to_string(format!(
        "/proc/{pid}/smaps"
    ))?))
}

/// Parses the text of `/proc/PID/maps`. Lines that do not parse are skipped: the
/// format is the kernel's, but a truncated read must not end the trace.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

/// Parses the text of `/proc/PID/smaps`: each mapping's line, then its fields
/// (`Rss:   188 kB`), of which the resident size is kept.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            if let Some(last) = out.last_mut() {
                let kb: Option<u64> = kb.trim().trim_end_matches("kB").trim().parse().ok();
                last.rss = kb.map(|k| k * 1024);
            }
        } else if let Some(m) = parse_line(line) {
            out.push(m);
        }
    }
    out
}

/// The `Rss:` of `/proc/PID/smaps_rollup`, in bytes.
pub fn rollup_rss(text: &str) -> Option<u64> {
    parse_smaps(text).first().and_then(|m| m.rss)
}

fn parse_line(line: &str) -> Option<Mapping> {
    // 7f1c2a000000-7f1c2a022000 r--p 00000000 fe:01 1234   /usr/lib/x86_64-linux-gnu/libc.so.6
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let (major, minor) = it.next()?.split_once(':')?;
    let dev = (
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    );
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
        shared: perms.get(3) == Some(&b's'),
        offset,
        dev,
        inode,
        path,
        rss: None,
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
    fn smaps_gives_resident_sizes_and_the_rollup_its_total() {
        let smaps = "\
7f1c2a000000-7f1c2a022000 r--p 00000000 fe:01 200 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                136 kB
Rss:                 128 kB
VmFlags: rd mr mw me
7f1c2a300000-7f1c2a301000 rw-s 00000000 00:01 4242 /memfd:doublemapper (deleted)
Size:                  4 kB
Rss:                   4 kB
";
        let maps = parse_smaps(smaps);
        assert_eq!(maps.len(), 2);
        assert_eq!(maps[0].rss, Some(128 << 10));
        assert_eq!((maps[1].dev, maps[1].inode), ((0, 1), 4242));
        assert_eq!(maps[1].perms(), "rw-s");
        assert_eq!(maps[1].len(), 4096);
        let rollup =
            "55ef37bca000-7fff89b59000 ---p 00000000 00:00 0 [rollup]\nRss: 1668 kB\nPss: 615 kB\n";
        assert_eq!(rollup_rss(rollup), Some(1668 << 10));
        assert_eq!(parse_maps(MAPS)[0].rss, None);
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
