//! The size of a System V shared memory segment, which `shmat` does not tell: from
//! `/proc/sysvipc/shm` (one line per segment: key, shmid, perms, size, ...).

/// The size of segment `shmid` in the text of `/proc/sysvipc/shm`.
pub fn parse_size(text: &str, shmid: i32) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let mut w = line.split_whitespace();
        let _key = w.next()?;
        let id: i32 = w.next()?.parse().ok()?;
        let _perms = w.next()?;
        let size = w.next()?.parse().ok()?;
        (id == shmid).then_some(size)
    })
}

/// The size of segment `shmid`, while it exists (it does while it is attached).
pub fn segment_size(shmid: i32) -> Option<u64> {
    parse_size(&std::fs::read_to_string("/proc/sysvipc/shm").ok()?, shmid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_segments_size() {
        let text = "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap
     48879          3   600                 65536  1234  1234      1     0     0     0     0 1700000000          0 1700000000                 65536                     0
         0          4   600               1048576  1234     0      0     0     0     0     0          0          0 1700000000                     0                     0
";
        assert_eq!(parse_size(text, 3), Some(65536));
        assert_eq!(parse_size(text, 4), Some(1 << 20));
        assert_eq!(parse_size(text, 5), None);
    }
}
