//! The live mappings at the end of the trace, joined with the kernel's view of the
//! process read then ([`ProcMemory`]): what each maps (from its line in
//! `/proc/PID/maps`: a memfd's name, a shared memory key, a file's path), how much
//! of it is resident (its areas' `Rss`, pro rata where an area holds more than
//! this mapping), and whether a descriptor of the same file is still open (a memfd
//! mapped and its descriptor closed: the "doublemapper" signature). Then grouped
//! by stack and backing, like heap leaks.

use super::backing::{self, MapKind};
use super::model::{Live, Mappings};
use crate::event::{DescKind, MapSource, StackId};
use crate::hooks::HookFn;
use crate::maps::Mapping;
use crate::procmem::ProcMemory;
use std::collections::HashMap;

/// Live mappings sharing a stack and a backing (and whether its descriptor is open).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub kind: MapKind,
    pub name: Option<String>,
    /// None: not a file (anonymous, System V), or the kernel's view is missing.
    pub descriptor_open: Option<bool>,
    pub count: u64,
    pub bytes: u64,
    /// None: no kernel view was read (the process died before memtrace could).
    pub rss_bytes: Option<u64>,
    /// Distinct protections, as `/proc/PID/maps` spells them, by address.
    pub prots: Vec<String>,
    pub stack: StackId,
    /// The function that made the oldest of them.
    pub func: HookFn,
    /// Each mapping's range, by address.
    pub ranges: Vec<(u64, u64)>,
    /// When the oldest and the youngest were made (ns since the trace began).
    pub first_ns: u64,
    pub last_ns: u64,
    first_seq: u64,
}

/// What one live range maps, as the kernel says, else as its call said.
struct Resolved {
    kind: MapKind,
    name: Option<String>,
    descriptor_open: Option<bool>,
    rss: Option<u64>,
    /// The protection the kernel has for it.
    perms: Option<String>,
}

/// The kind a call's arguments suggest, when the kernel's view is missing.
fn hinted(l: &Live) -> MapKind {
    match (l.source, l.desc) {
        (Some(MapSource::Sysv(_)), _) => MapKind::SysvShm,
        (Some(MapSource::Fd(_)), Some(DescKind::Memfd)) => MapKind::Memfd,
        (Some(MapSource::Fd(_)), Some(DescKind::PosixShm)) => MapKind::PosixShm,
        (Some(MapSource::Fd(_)), _) => MapKind::File,
        _ => MapKind::Anonymous,
    }
}

/// The areas overlapping `[start, end)`, from areas sorted by address.
fn areas(vmas: &[Mapping], start: u64, end: u64) -> &[Mapping] {
    let from = vmas.partition_point(|v| v.end <= start);
    let to = from + vmas[from..].partition_point(|v| v.start < end);
    &vmas[from..to]
}

fn resolve(start: u64, l: &Live, mem: Option<&ProcMemory>) -> Resolved {
    let end = start + l.len;
    let found = mem.map(|m| (m, areas(&m.vmas, start, end)));
    let Some((m, Some(first))) = found.map(|(m, a)| (m, a.first())) else {
        return Resolved {
            kind: hinted(l),
            name: None,
            descriptor_open: None,
            rss: mem.map(|_| 0),
            perms: None,
        };
    };
    let (kind, name) = backing::of_path(&first.path).unwrap_or((hinted(l), None));
    let rss = areas(&m.vmas, start, end)
        .iter()
        .map(|v| {
            let overlap = end.min(v.end) - start.max(v.start);
            let rss = v.rss.unwrap_or(0) as u128;
            (rss * overlap as u128 / v.len().max(1) as u128) as u64
        })
        .sum();
    let descriptor_open = kind.has_descriptor().then(|| m.has_open(first));
    Resolved {
        kind,
        name,
        descriptor_open,
        rss: Some(rss),
        perms: Some(first.perms()),
    }
}

/// The live mappings grouped by stack, kind, name and open descriptor, largest
/// bytes first (ties: more mappings, then the older group).
pub fn groups(model: &Mappings, mem: Option<&ProcMemory>) -> Vec<Group> {
    type Key = (StackId, MapKind, Option<String>, Option<bool>);
    let mut by: HashMap<Key, Group> = HashMap::new();
    for (start, l) in model.live() {
        let r = resolve(start, l, mem);
        let key = (l.stack, r.kind, r.name.clone(), r.descriptor_open);
        let g = by.entry(key).or_insert_with(|| Group {
            kind: r.kind,
            name: r.name,
            descriptor_open: r.descriptor_open,
            count: 0,
            bytes: 0,
            rss_bytes: r.rss.map(|_| 0),
            prots: Vec::new(),
            stack: l.stack,
            func: l.func,
            ranges: Vec::new(),
            first_ns: l.at_ns,
            last_ns: l.at_ns,
            first_seq: l.seq,
        });
        g.count += 1;
        g.bytes += l.len;
        g.rss_bytes = g.rss_bytes.zip(r.rss).map(|(a, b)| a + b);
        // A range mremap'd from memory never seen mapped: what it is, the kernel says.
        let perms = match (l.source, r.perms) {
            (None, Some(kernel)) => kernel,
            _ => l.perms(),
        };
        if !g.prots.contains(&perms) {
            g.prots.push(perms);
        }
        g.ranges.push((start, start + l.len));
        g.first_ns = g.first_ns.min(l.at_ns);
        g.last_ns = g.last_ns.max(l.at_ns);
        if l.seq < g.first_seq {
            g.first_seq = l.seq;
            g.func = l.func;
        }
    }
    let mut v: Vec<Group> = by.into_values().collect();
    v.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.count.cmp(&a.count))
            .then(a.first_seq.cmp(&b.first_seq))
            .then(a.kind.cmp(&b.kind))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::MapCall;

    const K: u64 = 4096;

    fn map(m: &mut Mappings, addr: u64, len: u64, prot: i32, source: MapSource, stack: u32) {
        let flags = match source {
            MapSource::Anonymous => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            _ => libc::MAP_SHARED,
        };
        m.apply(&MapCall::Map {
            tid: 1,
            addr,
            len,
            prot: prot as u32,
            flags: flags as u32,
            source,
            offset: 0,
            stack: StackId(stack),
            func: HookFn::Mmap,
            internal: false,
        });
    }

    fn vma(line: &str, rss: u64) -> Mapping {
        let mut m = crate::maps::parse_maps(line).remove(0);
        m.rss = Some(rss);
        m
    }

    #[test]
    fn the_doublemapper_signature_and_resident_bytes() {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let rx = libc::PROT_READ | libc::PROT_EXEC;
        let mut m = Mappings::new();
        // Two views of one memfd (closed), one of another (still open), and an
        // anonymous mapping the kernel merged with its neighbour.
        map(&mut m, 0x10000, 2 * K, rw, MapSource::Fd(3), 1);
        map(&mut m, 0x20000, 2 * K, rx, MapSource::Fd(3), 1);
        map(&mut m, 0x30000, 2 * K, rw, MapSource::Fd(4), 1);
        map(&mut m, 0x40000, 2 * K, rw, MapSource::Anonymous, 2);
        let mem = ProcMemory {
            vmas: vec![
                vma(
                    "10000-12000 rw-s 00000000 00:01 11 /memfd:doublemapper (deleted)",
                    K,
                ),
                vma(
                    "20000-22000 r-xs 00000000 00:01 11 /memfd:doublemapper (deleted)",
                    K,
                ),
                vma(
                    "30000-32000 rw-s 00000000 00:01 12 /memfd:doublemapper (deleted)",
                    0,
                ),
                vma("3e000-42000 rw-p 00000000 00:00 0", 4 * K),
            ],
            files: vec![crate::procmem::OpenFile {
                inode: 12,
                dev: (0, 1),
                path: "/memfd:doublemapper (deleted)".into(),
            }],
            ..ProcMemory::default()
        };
        let g = groups(&m, Some(&mem));
        assert_eq!(g.len(), 3);
        let closed = &g[0];
        assert_eq!(
            (closed.kind, closed.name.as_deref(), closed.descriptor_open),
            (MapKind::Memfd, Some("doublemapper"), Some(false))
        );
        assert_eq!(
            (closed.count, closed.bytes, closed.rss_bytes),
            (2, 4 * K, Some(2 * K))
        );
        assert_eq!(closed.prots, vec!["rw-s".to_string(), "r-xs".to_string()]);
        let anon = g.iter().find(|g| g.kind == MapKind::Anonymous).unwrap();
        // Half the merged area is this mapping: half its resident bytes.
        assert_eq!((anon.descriptor_open, anon.rss_bytes), (None, Some(2 * K)));
        assert!(g.iter().any(|g| g.descriptor_open == Some(true)));
    }

    #[test]
    fn without_the_kernels_view_the_call_says_what_it_can() {
        let mut m = Mappings::new();
        m.apply(&MapCall::Descriptor {
            tid: 1,
            fd: 3,
            kind: DescKind::Memfd,
        });
        map(&mut m, 0x10000, K, libc::PROT_READ, MapSource::Fd(3), 1);
        let g = groups(&m, None);
        assert_eq!(
            (g[0].kind, g[0].rss_bytes, g[0].descriptor_open),
            (MapKind::Memfd, None, None)
        );
        assert_eq!(g[0].ranges, vec![(0x10000, 0x11000)]);
    }
}
