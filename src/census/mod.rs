//! A census of a process's memory, like `pmap -X`: every mapping classified, then
//! summed per kind and name, largest first. Pure over [`ProcMemory`] (`memtrace
//! maps` reads it without tracing; the live view's mappings view while tracing).
//!
//! | kind | what |
//! | --- | --- |
//! | `heap` | the main arena (`[heap]`), and glibc's mmap'd blocks (a chunk header marked mmapped at the mapping's start, or a live block there when traced) |
//! | `arena` | the heaps of glibc's other arenas (64 MiB aligned, their first word pointing to their arena), with their reserved tails |
//! | `stack` | `[stack]`, and thread stacks: an anonymous mapping holding a thread's stack pointer, or above a guard page |
//! | `anonymous` | any other anonymous memory (private, shared, named) |
//! | `image` | an ELF object's segments (a file with code mapped), with its `.bss` |
//! | `file` | any other file |
//! | `memfd`, `posix_shm`, `sysv_shm` | by name or key |
//! | `deleted_file` | a file deleted since it was mapped |
//! | `special` | the kernel's own: `[vdso]`, `[vvar]`, `[vsyscall]`, `anon_inode:` |

pub mod command;

use crate::mappings::backing;
use crate::maps::Mapping;
use crate::procmem::ProcMemory;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

pub const SCHEMA: &str = "memtrace-maps/1";

/// glibc's HEAP_MAX_SIZE on 64-bit: a non-main arena's heaps are mappings aligned
/// to it, starting with a `heap_info` whose first word (`ar_ptr`) points to the
/// arena, right after it in an arena's first heap.
pub const ARENA_HEAP_ALIGN: u64 = 64 << 20;
/// A chunk header's flag: the chunk was mmap'd (glibc's IS_MMAPPED).
const IS_MMAPPED: u64 = 2;
/// The largest guard page below a thread's stack taken for one.
const MAX_GUARD: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Heap,
    Arena,
    Stack,
    Anonymous,
    Image,
    File,
    Memfd,
    PosixShm,
    SysvShm,
    DeletedFile,
    Special,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Heap => "heap",
            Kind::Arena => "arena",
            Kind::Stack => "stack",
            Kind::Anonymous => "anonymous",
            Kind::Image => "image",
            Kind::File => "file",
            Kind::Memfd => "memfd",
            Kind::PosixShm => "posix_shm",
            Kind::SysvShm => "sysv_shm",
            Kind::DeletedFile => "deleted_file",
            Kind::Special => "special",
        }
    }

    /// Memory the allocator manages: what live malloc blocks are in.
    pub fn is_malloc(self) -> bool {
        matches!(self, Kind::Heap | Kind::Arena)
    }
}

/// Mappings of one kind and name, summed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub kind: String,
    pub name: Option<String>,
    pub count: u64,
    pub bytes: u64,
    pub rss_bytes: u64,
    /// Extension, when the process is traced: the bytes live malloc blocks hold in
    /// these mappings (heap and arena).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_bytes: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Total {
    pub count: u64,
    pub bytes: u64,
    pub rss_bytes: u64,
}

/// The census (`memtrace maps --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    pub schema: String,
    pub pid: i32,
    pub total: Total,
    pub groups: Vec<Group>,
}

/// The starts of the mappings that are heaps of glibc arenas other than the main
/// one, from their first words (`first_word`: None where it cannot be read).
pub fn arena_heaps(maps: &[Mapping], first_word: impl Fn(&Mapping) -> Option<u64>) -> Vec<u64> {
    let candidates: Vec<(u64, u64)> = maps
        .iter()
        .filter(|m| m.read && m.write && m.inode == 0 && m.start % ARENA_HEAP_ALIGN == 0)
        .filter_map(|m| Some((m.start, first_word(m)?)))
        .collect();
    // An arena's first heap: its malloc_state follows the heap_info.
    let firsts: HashSet<u64> = candidates
        .iter()
        .filter(|(start, ar)| (start + 16..start + 256).contains(ar))
        .map(|(start, _)| *start)
        .collect();
    // A later heap of the same arena points back to that one.
    candidates
        .iter()
        .filter(|(start, ar)| {
            firsts.contains(start) || firsts.contains(&(ar & !(ARENA_HEAP_ALIGN - 1)))
        })
        .map(|(start, _)| *start)
        .collect()
}

/// Whether the anonymous mapping `m` starts with a glibc chunk that was mmap'd for
/// one block: `prev_size` 0, then a size of whole pages, marked mmapped, that fits.
fn mmapped_chunk(m: &Mapping, head: Option<[u64; 2]>) -> bool {
    let Some([prev_size, size]) = head else {
        return false;
    };
    let bytes = size & !7;
    prev_size == 0 && size & IS_MMAPPED != 0 && bytes > 0 && bytes % 4096 == 0 && bytes <= m.len()
}

/// What each mapping is: its kind and the name it is summed under.
pub fn classify(mem: &ProcMemory, blocks: Option<&[(u64, u64)]>) -> Vec<(Kind, Option<String>)> {
    let vmas = &mem.vmas;
    let code: HashSet<&str> = vmas
        .iter()
        .filter(|v| v.exec && v.path.starts_with('/'))
        .map(|v| v.path.as_str())
        .collect();
    let arenas: HashSet<u64> = arena_heaps(vmas, |m| mem.head(m.start).map(|h| h[0]))
        .into_iter()
        .collect();
    // A live block right after a chunk header at a mapping's start: an mmap'd block.
    let block_at = |start: u64| {
        blocks.is_some_and(|b| b.binary_search_by_key(&(start + 16), |&(s, _)| s).is_ok())
    };
    let holds_sp = |v: &Mapping| {
        mem.stack_pointers
            .iter()
            .any(|&sp| v.start <= sp && sp < v.end)
    };
    let guard = |v: &Mapping| {
        v.inode == 0 && v.path.is_empty() && !v.read && !v.write && !v.exec && v.len() <= MAX_GUARD
    };
    let mut out: Vec<(Kind, Option<String>)> = Vec::with_capacity(vmas.len());
    for (i, v) in vmas.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| (&vmas[p], &out[p]));
        let path = v.path.as_str();
        let class = if path == "[heap]" {
            (Kind::Heap, None)
        } else if path == "[stack]" {
            (Kind::Stack, None)
        } else if path.starts_with("anon_inode:")
            || (path.starts_with('[') && !path.starts_with("[anon"))
        {
            (Kind::Special, Some(path.to_string()))
        } else if backing::is_anonymous(path) {
            let adjacent = |p: &Mapping| p.end == v.start;
            match prev {
                _ if arenas.contains(&v.start) => (Kind::Arena, None),
                // An arena heap's reserved, not yet usable, tail.
                Some((p, (Kind::Arena, _)))
                    if adjacent(p) && !v.read && v.end <= p.start + ARENA_HEAP_ALIGN =>
                {
                    (Kind::Arena, None)
                }
                _ if !v.shared && (mmapped_chunk(v, mem.head(v.start)) || block_at(v.start)) => {
                    (Kind::Heap, None)
                }
                _ if holds_sp(v) => (Kind::Stack, None),
                // A thread's stack: glibc maps a guard page below it.
                Some((p, _)) if v.write && guard(p) && adjacent(p) => (Kind::Stack, None),
                // An object's .bss, beyond the end of its file.
                Some((p, (Kind::Image, name))) if adjacent(p) && v.write && !v.shared => {
                    (Kind::Image, name.clone())
                }
                _ => (Kind::Anonymous, None),
            }
        } else if let Some(name) = backing::memfd_name(path) {
            (Kind::Memfd, Some(name.to_string()))
        } else if let Some(name) = backing::posix_shm_name(path) {
            (Kind::PosixShm, Some(name.to_string()))
        } else if let Some(key) = backing::sysv_key(path) {
            (Kind::SysvShm, Some(key))
        } else if let Some(deleted) = path.strip_suffix(" (deleted)") {
            (Kind::DeletedFile, Some(deleted.to_string()))
        } else if code.contains(path) {
            (Kind::Image, Some(path.to_string()))
        } else {
            (Kind::File, Some(path.to_string()))
        };
        out.push(class);
    }
    // A stack's guard page, below it, is the stack's.
    for i in 0..vmas.len().saturating_sub(1) {
        if guard(&vmas[i]) && vmas[i].end == vmas[i + 1].start && out[i + 1].0 == Kind::Stack {
            out[i] = (Kind::Stack, None);
        }
    }
    out
}

/// The census: every mapping classified and summed per kind and name, largest
/// first. `blocks`: the live malloc blocks (start, size), sorted, when traced.
pub fn census(pid: i32, mem: &ProcMemory, blocks: Option<&[(u64, u64)]>) -> Census {
    let classes = classify(mem, blocks);
    let mut groups: HashMap<(Kind, Option<String>), Group> = HashMap::new();
    let mut total = Total::default();
    for (v, (kind, name)) in mem.vmas.iter().zip(classes) {
        let rss = v.rss.unwrap_or(0);
        total.count += 1;
        total.bytes += v.len();
        total.rss_bytes += rss;
        let g = groups.entry((kind, name.clone())).or_insert_with(|| Group {
            kind: kind.name().to_string(),
            name,
            live_bytes: (blocks.is_some() && kind.is_malloc()).then_some(0),
            ..Group::default()
        });
        g.count += 1;
        g.bytes += v.len();
        g.rss_bytes += rss;
        if let (Some(live), Some(b)) = (g.live_bytes.as_mut(), blocks) {
            *live += bytes_within(b, v.start, v.end);
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    groups.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.rss_bytes.cmp(&a.rss_bytes))
            .then(a.kind.cmp(&b.kind))
            .then(a.name.cmp(&b.name))
    });
    Census {
        schema: SCHEMA.to_string(),
        pid,
        total,
        groups,
    }
}

/// The bytes of the blocks (sorted by start) that start in `[start, end)`.
fn bytes_within(blocks: &[(u64, u64)], start: u64, end: u64) -> u64 {
    let from = blocks.partition_point(|&(s, _)| s < start);
    blocks[from..]
        .iter()
        .take_while(|&&(s, _)| s < end)
        .map(|&(_, size)| size)
        .sum()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
