//! A process's memory as the kernel shows it at one moment: its mappings with their
//! resident sizes (`/proc/PID/smaps`), the files its descriptors hold open
//! (`/proc/PID/fd`), where its threads' stacks are, and which anonymous mappings
//! glibc's allocator made (arena heaps, large blocks), as far as their first words
//! tell. Read at the end of a trace (every thread stopped), for the live view's
//! census, and by `memtrace maps`; everything built on it is pure.

use crate::maps::{self, Mapping};
use std::os::unix::fs::{FileExt, MetadataExt};

/// A file a descriptor holds open: its device and inode, as `stat` through
/// `/proc/PID/fd/N` sees them, and its path, as that link reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpenFile {
    pub inode: u64,
    pub dev: (u32, u32),
    pub path: String,
}

impl OpenFile {
    /// Whether mapping `m` maps this file. The inode, and the device or the path:
    /// on overlayfs whose layers are on other filesystems, `/proc/PID/maps` gives
    /// the overlay's device while `stat` gives the layer's (same inode, same path).
    pub fn is_mapped_by(&self, m: &Mapping) -> bool {
        m.inode != 0 && self.inode == m.inode && (self.dev == m.dev || self.path == m.path)
    }
}

/// glibc's major and minor of a `dev_t` (`gnu_dev_major`, `gnu_dev_minor`).
pub fn dev_parts(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcMemory {
    /// Every mapping, by address, with its resident size; memtrace's own pages in
    /// the target left out.
    pub vmas: Vec<Mapping>,
    /// The files the process's descriptors hold open, by inode.
    pub files: Vec<OpenFile>,
    /// The threads' stack pointers, where known (a thread stopped or blocked).
    pub stack_pointers: Vec<u64>,
    /// The first two words of each anonymous mapping, where they could be read: an
    /// arena's heap and an mmap'd chunk say what they are there.
    pub heads: Vec<(u64, [u64; 2])>,
    /// Bytes and resident bytes of the mappings left out (memtrace's own).
    pub own: (u64, u64),
}

impl ProcMemory {
    /// Reads process `pid`'s memory, leaving out the ranges in `own`.
    pub fn read(pid: i32, own: &[(u64, u64)]) -> std::io::Result<ProcMemory> {
        let all = maps::read_smaps(pid)?;
        let mut m = ProcMemory {
            files: open_files(pid),
            stack_pointers: blocked_stack_pointers(pid),
            ..ProcMemory::default()
        };
        for v in all {
            if own.iter().any(|&(s, e)| s < v.end && v.start < e) {
                m.own.0 += v.len();
                m.own.1 += v.rss.unwrap_or(0);
            } else {
                m.vmas.push(v);
            }
        }
        m.heads = read_heads(pid, &m.vmas);
        Ok(m)
    }

    /// The two words at `addr`, if read.
    pub fn head(&self, addr: u64) -> Option<[u64; 2]> {
        self.heads
            .binary_search_by_key(&addr, |&(a, _)| a)
            .ok()
            .map(|i| self.heads[i].1)
    }

    /// Whether a descriptor holds open the file mapping `m` maps.
    pub fn has_open(&self, m: &Mapping) -> bool {
        let from = self.files.partition_point(|f| f.inode < m.inode);
        self.files[from..]
            .iter()
            .take_while(|f| f.inode == m.inode)
            .any(|f| f.is_mapped_by(m))
    }
}

/// A page's entry in `/proc/PID/pagemap`: present in memory, or swapped out.
const PAGE_PRESENT: u64 = 1 << 63;
const PAGE_SWAPPED: u64 = 1 << 62;

/// The runs of pages of `[start, end)` that hold data of the process's own (present
/// in its page tables, or swapped out), from the words of `/proc/PID/pagemap` for
/// those pages (`entries[i]` for the page at `start + 4096 * i`).
pub fn resident_runs(start: u64, entries: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, &e) in entries.iter().enumerate() {
        if e & (PAGE_PRESENT | PAGE_SWAPPED) == 0 {
            continue;
        }
        let at = start + 4096 * i as u64;
        match runs.last_mut() {
            Some(last) if last.1 == at => last.1 = at + 4096,
            _ => runs.push((at, at + 4096)),
        }
    }
    runs
}

/// [`resident_runs`] of process `pid`'s `[start, end)` (page aligned).
pub fn read_resident_runs(pid: i32, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let pages = ((end - start) / 4096) as usize;
    let mut bytes = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut bytes, start / 4096 * 8)?;
    let entries: Vec<u64> = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    Ok(resident_runs(start, &entries))
}

/// The files behind `/proc/PID/fd/*` (what `stat` through the link sees, and the
/// link's text), sorted.
fn open_files(pid: i32) -> Vec<OpenFile> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v: Vec<OpenFile> = dir
        .flatten()
        .filter_map(|e| {
            let md = std::fs::metadata(e.path()).ok()?;
            let path = std::fs::read_link(e.path()).ok()?;
            Some(OpenFile {
                inode: md.ino(),
                dev: dev_parts(md.dev()),
                path: path.to_string_lossy().into_owned(),
            })
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The stack pointer in `/proc/PID/task/TID/syscall`: `NR ARGS... SP PC` for a
/// thread blocked in a system call, `-1 SP PC` for one blocked elsewhere, `running`
/// for one that runs (unknown then).
pub fn syscall_sp(text: &str) -> Option<u64> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 3 {
        return None;
    }
    let sp = words[words.len() - 2].strip_prefix("0x")?;
    u64::from_str_radix(sp, 16).ok()
}

fn blocked_stack_pointers(pid: i32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("syscall")).ok())
        .filter_map(|s| syscall_sp(&s))
        .collect()
}

/// The first two words of every private anonymous read-write mapping, through
/// `/proc/PID/mem` (nothing where it cannot be read: another user's process).
fn read_heads(pid: i32, vmas: &[Mapping]) -> Vec<(u64, [u64; 2])> {
    let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
        return Vec::new();
    };
    vmas.iter()
        .filter(|v| v.inode == 0 && v.path.is_empty() && v.read && v.write && !v.shared)
        .filter_map(|v| {
            let mut b = [0u8; 16];
            mem.read_exact_at(&mut b, v.start).ok()?;
            let w = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
            Some((v.start, [w(0), w(8)]))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_as_glibc_does() {
        // makedev(254, 1) and makedev(0, 1)
        assert_eq!(dev_parts(0xfe01), (254, 1));
        assert_eq!(dev_parts(1), (0, 1));
        // makedev(300, 70000): the minor's high bits above the major's low ones.
        assert_eq!(dev_parts(0x1111_2c70), (300, 70000));
    }

    #[test]
    fn resident_runs_join_neighbouring_pages() {
        let (p, s, none) = (PAGE_PRESENT, PAGE_SWAPPED, 0);
        assert_eq!(
            resident_runs(0x10000, &[p, s, none, none, p | 5, none]),
            vec![(0x10000, 0x12000), (0x14000, 0x15000)]
        );
        assert!(resident_runs(0x10000, &[none; 4]).is_empty());
        // This process: a page written is resident, one never touched is not.
        let len = 4 * 4096;
        let mut v = vec![0u8; len + 4096];
        let at = (v.as_ptr() as u64).next_multiple_of(4096);
        let off = (at - v.as_ptr() as u64) as usize;
        v[off] = 1;
        let runs = read_resident_runs(std::process::id() as i32, at, at + 4096).unwrap();
        assert_eq!(runs, vec![(at, at + 4096)]);
    }

    #[test]
    fn stack_pointers_of_blocked_threads() {
        assert_eq!(
            syscall_sp("202 0x7f 0x80 0x2 0x0 0x0 0x0 0x7ffd1000 0x7f1c2a000"),
            Some(0x7ffd1000)
        );
        assert_eq!(syscall_sp("-1 0x7ffd2000 0x55aa"), Some(0x7ffd2000));
        assert_eq!(syscall_sp("running"), None);
    }

    #[test]
    fn a_descriptor_matches_a_mapping_by_inode_and_device_or_path() {
        // A file on overlayfs whose lower layer is another filesystem, mapped and
        // still open: /proc/PID/maps says 00:29, stat through the descriptor 00:2b.
        let mapped =
            &crate::maps::parse_maps("7f48a000-7f48b000 r--s 00000000 00:29 2 /mnt/ov/f")[0];
        let open = |dev, path: &str| ProcMemory {
            files: vec![OpenFile {
                inode: 2,
                dev,
                path: path.into(),
            }],
            ..ProcMemory::default()
        };
        assert!(open((0, 0x2b), "/mnt/ov/f").has_open(mapped));
        assert!(open((0, 0x29), "/mnt/elsewhere/f").has_open(mapped));
        // Another file with the same inode number on another filesystem.
        assert!(!open((0, 0x2b), "/other/f").has_open(mapped));
        let mut anonymous = mapped.clone();
        (anonymous.inode, anonymous.path) = (0, String::new());
        assert!(!open((0, 0), "").has_open(&anonymous));
    }

    #[test]
    fn reads_this_process_and_finds_its_own_open_file() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let md = file.as_file().metadata().unwrap();
        let mut mapped = crate::maps::parse_maps(&format!(
            "1000-2000 r--s 00000000 00:00 {} {}",
            md.ino(),
            file.path().canonicalize().unwrap().display()
        ))
        .remove(0);
        mapped.dev = dev_parts(md.dev());
        let m = ProcMemory::read(std::process::id() as i32, &[]).unwrap();
        assert!(m.has_open(&mapped));
        let rss: u64 = m.vmas.iter().filter_map(|v| v.rss).sum();
        assert!(rss > 0);
        assert!(!m.heads.is_empty() || m.vmas.iter().all(|v| !v.path.is_empty()));
    }
}
