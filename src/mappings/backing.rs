//! What a mapping maps, as a line of `/proc/PID/maps` names it:
//!
//! | path | what |
//! | --- | --- |
//! | `/memfd:NAME (deleted)` | a memfd (`memfd_create("NAME")`) |
//! | `/dev/shm/NAME` (`(deleted)` once unlinked) | a POSIX shared memory object |
//! | `/SYSV0000beef (deleted)` | a System V segment of key 0xbeef |
//! | `/dev/zero (deleted)`, `[anon:NAME]`, empty | anonymous memory (shared, named, private) |
//! | any other path | a file |

use serde::{Deserialize, Serialize};

/// The contract's `kind` of a mapping the program made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapKind {
    Anonymous,
    File,
    Memfd,
    PosixShm,
    SysvShm,
}

impl MapKind {
    pub fn name(self) -> &'static str {
        match self {
            MapKind::Anonymous => "anonymous",
            MapKind::File => "file",
            MapKind::Memfd => "memfd",
            MapKind::PosixShm => "posix_shm",
            MapKind::SysvShm => "sysv_shm",
        }
    }

    /// Whether a descriptor can keep what it maps alive (a file, a memfd, a POSIX
    /// shared memory object), so that "is one still open?" means something.
    pub fn has_descriptor(self) -> bool {
        matches!(self, MapKind::File | MapKind::Memfd | MapKind::PosixShm)
    }
}

const DELETED: &str = " (deleted)";

fn undeleted(path: &str) -> &str {
    path.strip_suffix(DELETED).unwrap_or(path)
}

/// `doublemapper` for `/memfd:doublemapper (deleted)`.
pub fn memfd_name(path: &str) -> Option<&str> {
    path.strip_prefix("/memfd:").map(undeleted)
}

/// `NAME` for `/dev/shm/NAME`, unlinked or not.
pub fn posix_shm_name(path: &str) -> Option<&str> {
    undeleted(path).strip_prefix("/dev/shm/")
}

/// `0x0000beef` for `/SYSV0000beef (deleted)`.
pub fn sysv_key(path: &str) -> Option<String> {
    let key = undeleted(path).strip_prefix("/SYSV")?;
    (key.len() == 8 && key.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("0x{key}"))
}

/// Anonymous memory: private, shared (`/dev/zero (deleted)`), or named by
/// `prctl(PR_SET_VMA_ANON_NAME)`.
pub fn is_anonymous(path: &str) -> bool {
    path.is_empty()
        || path == "/dev/zero (deleted)"
        || path.starts_with("[anon:")
        || path.starts_with("[anon_shmem:")
}

/// The kind and name of what a mapping with this path maps; None for the kernel's
/// own (`[heap]`, `[stack]`, `[vdso]`...), which no mapping call makes.
pub fn of_path(path: &str) -> Option<(MapKind, Option<String>)> {
    if is_anonymous(path) {
        return Some((MapKind::Anonymous, None));
    }
    if let Some(name) = memfd_name(path) {
        return Some((MapKind::Memfd, Some(name.to_string())));
    }
    if let Some(name) = posix_shm_name(path) {
        return Some((MapKind::PosixShm, Some(name.to_string())));
    }
    if let Some(key) = sysv_key(path) {
        return Some((MapKind::SysvShm, Some(key)));
    }
    path.starts_with('/')
        .then(|| (MapKind::File, Some(path.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_backing() {
        let of = |p: &str| of_path(p).map(|(k, n)| (k.name(), n));
        let some = |k: &'static str, n: &str| Some((k, Some(n.to_string())));
        assert_eq!(
            of("/memfd:doublemapper (deleted)"),
            some("memfd", "doublemapper")
        );
        assert_eq!(of("/memfd:a b"), some("memfd", "a b"));
        assert_eq!(of("/dev/shm/ring"), some("posix_shm", "ring"));
        assert_eq!(of("/dev/shm/ring (deleted)"), some("posix_shm", "ring"));
        assert_eq!(
            of("/SYSV0000beef (deleted)"),
            some("sysv_shm", "0x0000beef")
        );
        assert_eq!(of("/dev/zero (deleted)"), Some(("anonymous", None)));
        assert_eq!(of(""), Some(("anonymous", None)));
        assert_eq!(of("[anon:jit]"), Some(("anonymous", None)));
        assert_eq!(
            of("/tmp/data.bin (deleted)"),
            some("file", "/tmp/data.bin (deleted)")
        );
        assert_eq!(of("[heap]"), None);
        assert_eq!(sysv_key("/SYSVxyz"), None);
        assert!(MapKind::Memfd.has_descriptor() && !MapKind::SysvShm.has_descriptor());
    }
}
