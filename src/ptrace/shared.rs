//! memtrace's view of the memory it shares with the target (see
//! `memtrace_arch::recorder` for what is in it): the same memfd mapped in both
//! processes, the ring twice back to back so that no record wraps.
//!
//! Only moves words and bytes, with the ordering the protocol needs (a commit word is
//! read with acquire and written with release); what they mean is the recorder's.

use memtrace_arch::recorder::{RING_OFFSET, RING_SIZE, SHARED_SIZE};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub struct SharedMem {
    _file: File,
    /// Control page and thread table.
    ctrl: *mut u8,
    /// The ring, mapped twice.
    ring: *mut u8,
}

// SAFETY: the mappings are plain shared memory owned by this value; every access
// goes through atomics or byte copies, and the value is used by one thread at a time.
unsafe impl Send for SharedMem {}

fn map(addr: *mut u8, len: u64, prot: i32, flags: i32, fd: i32, off: u64) -> io::Result<*mut u8> {
    // SAFETY: mmap with checked arguments; a fixed address is only ever one this
    // value reserved itself.
    let p = unsafe { libc::mmap(addr.cast(), len as usize, prot, flags, fd, off as i64) };
    if p == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(p.cast())
    }
}

impl SharedMem {
    /// Maps `file` (the target's memfd, opened through /proc) after sizing it.
    pub fn map(file: File) -> io::Result<SharedMem> {
        file.set_len(SHARED_SIZE)?;
        let fd = file.as_raw_fd();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let ctrl = map(
            std::ptr::null_mut(),
            RING_OFFSET,
            rw,
            libc::MAP_SHARED,
            fd,
            0,
        )?;
        let ring = match map(
            std::ptr::null_mut(),
            2 * RING_SIZE,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        ) {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: unmapping what was mapped above.
                unsafe { libc::munmap(ctrl.cast(), RING_OFFSET as usize) };
                return Err(e);
            }
        };
        let shared = SharedMem {
            _file: file,
            ctrl,
            ring,
        };
        for half in 0..2 {
            // SAFETY: inside the reservation made above.
            let at = unsafe { ring.add((half * RING_SIZE) as usize) };
            map(
                at,
                RING_SIZE,
                rw,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                RING_OFFSET,
            )?;
        }
        Ok(shared)
    }

    fn ctrl_word(&self, off: u64) -> &AtomicU64 {
        assert!(off % 8 == 0 && off + 8 <= RING_OFFSET, "offset {off:#x}");
        // SAFETY: in bounds and aligned (checked); the memory lives as long as self.
        unsafe { &*self.ctrl.add(off as usize).cast::<AtomicU64>() }
    }

    /// A word of the control page or the thread table.
    pub fn load(&self, off: u64) -> u64 {
        self.ctrl_word(off).load(Ordering::Acquire)
    }

    pub fn store(&self, off: u64, v: u64) {
        self.ctrl_word(off).store(v, Ordering::Release)
    }

    pub fn fetch_add(&self, off: u64, v: u64) -> u64 {
        self.ctrl_word(off).fetch_add(v, Ordering::AcqRel)
    }

    /// Adds one to the 32-bit word at `off` (the futex word).
    pub fn bump_u32(&self, off: u64) {
        assert!(off % 4 == 0 && off + 4 <= RING_OFFSET);
        // SAFETY: in bounds and aligned.
        let w = unsafe { &*self.ctrl.add(off as usize).cast::<AtomicU32>() };
        w.fetch_add(1, Ordering::AcqRel);
    }

    pub fn load_u32(&self, off: u64) -> u32 {
        assert!(off % 4 == 0 && off + 4 <= RING_OFFSET);
        // SAFETY: in bounds and aligned.
        let w = unsafe { &*self.ctrl.add(off as usize).cast::<AtomicU32>() };
        w.load(Ordering::Acquire)
    }

    /// Wakes every writer asleep on the 32-bit word at `off`.
    pub fn futex_wake_all(&self, off: u64) {
        assert!(off % 4 == 0 && off + 4 <= RING_OFFSET);
        // SAFETY: a futex wake on a word of our shared mapping; no pointers kept.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.ctrl.add(off as usize),
                libc::FUTEX_WAKE,
                i32::MAX,
                0usize,
                0usize,
                0u32,
            );
        }
    }

    /// The ring word at `off` from the start of the record at `pos`.
    fn ring_word(&self, pos: u64, off: u64) -> &AtomicU64 {
        let at = (pos & (RING_SIZE - 1)) + off;
        assert!(at % 8 == 0 && at + 8 <= 2 * RING_SIZE);
        // SAFETY: within the double mapping, aligned.
        unsafe { &*self.ring.add(at as usize).cast::<AtomicU64>() }
    }

    /// A record's word, read with acquire: after a commit word, the rest is visible.
    pub fn ring_load(&self, pos: u64, off: u64) -> u64 {
        self.ring_word(pos, off).load(Ordering::Acquire)
    }

    /// Stores a record's word with release (the commit word last).
    pub fn ring_store(&self, pos: u64, off: u64, v: u64) {
        self.ring_word(pos, off).store(v, Ordering::Release)
    }

    /// Asks the CPU to start loading the header of the record at `pos` (written by
    /// another CPU: its lines come from there), while the current one is handled.
    pub fn prefetch(&self, pos: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let at = (pos & (RING_SIZE - 1)) as usize;
            // SAFETY: a prefetch is a hint: it never faults, whatever the address; the
            // address is inside the double mapping anyway.
            unsafe {
                let p = self.ring.add(at).cast::<i8>();
                _mm_prefetch::<_MM_HINT_T0>(p);
                _mm_prefetch::<_MM_HINT_T0>(p.add(64));
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = pos;
    }

    /// Asks the CPU to start loading `len` bytes of the record at `pos` (a stack copy
    /// about to be unwound, long out of the caches).
    pub fn prefetch_bytes(&self, pos: u64, len: usize) {
        let mut off = 0;
        while off < len {
            self.prefetch(pos + off as u64);
            off += 128;
        }
    }

    /// Writes bytes into a record memtrace reserved itself.
    pub fn ring_write(&self, pos: u64, off: u64, bytes: &[u8]) {
        let at = (pos & (RING_SIZE - 1)) + off;
        assert!(at + bytes.len() as u64 <= 2 * RING_SIZE);
        // SAFETY: within the double mapping, in a record reserved by memtrace.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ring.add(at as usize), bytes.len())
        };
    }

    /// The bytes of the record at `pos`, from `off` on, as a slice valid while
    /// the record is not released. Used to unwind from a stack copy in place.
    pub fn ring_bytes(&self, pos: u64, off: u64, len: usize) -> &[u8] {
        let at = (pos & (RING_SIZE - 1)) + off;
        assert!(at + len as u64 <= 2 * RING_SIZE);
        // SAFETY: within the double mapping; a committed record that is not yet
        // released is written by nobody (writers reserve only above the tail).
        unsafe { std::slice::from_raw_parts(self.ring.add(at as usize), len) }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.ctrl.cast(), RING_OFFSET as usize);
            libc::munmap(self.ring.cast(), 2 * RING_SIZE as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd() -> File {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        use std::os::fd::FromRawFd;
        // SAFETY: a new fd we own.
        unsafe { File::from_raw_fd(fd) }
    }

    #[test]
    fn the_ring_is_mirrored() {
        let s = SharedMem::map(memfd()).unwrap();
        // A record at the very end of the ring reads on past it into the start.
        let pos = RING_SIZE - 8;
        s.ring_store(pos, 0, 7);
        s.ring_store(pos, 8, 9);
        assert_eq!(s.ring_load(pos, 8), 9);
        assert_eq!(s.ring_load(0, 0), 9, "the second half is the first");
        let b = s.ring_bytes(pos, 0, 16);
        assert_eq!(u64::from_le_bytes(b[8..].try_into().unwrap()), 9);
        s.store(64, 5);
        assert_eq!(s.fetch_add(64, 3), 5);
        assert_eq!(s.load(64), 8);
        s.bump_u32(72);
        assert_eq!(s.load_u32(72), 1);
        s.futex_wake_all(72);
    }
}
