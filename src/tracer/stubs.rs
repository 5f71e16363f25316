//! Return stubs: how a hooked call returns without a second ptrace stop.
//!
//! At a hooked function's entry (one stop) the return address is swapped for the
//! address of a free stub, whose data holds the real return address. The function
//! returns into the stub, which stores the return value, sets its done flag and jumps
//! on: no stop. At every later stop of any thread, before handling it, the tracer reads
//! the data of the stubs in use and turns each finished one into its event. That keeps
//! causal order: a block cannot be freed, by any thread, before the stop of that free,
//! and by then its allocation has been harvested.
//!
//! Stubs are handed out lowest index first, so the ones in use stay at the start of
//! the region and one read of a few hundred bytes covers them.

use crate::event::Tid;
use memtrace_arch::{STUB_CODE_SIZE, STUB_DATA_SIZE, STUB_DONE, STUB_VALUE};
use std::collections::BTreeSet;

/// Stubs per region: more calls in flight at once than this use the trampoline.
pub const STUB_COUNT: u32 = 256;

#[derive(Debug, Default)]
pub struct Stubs {
    code: u64,
    data: u64,
    owner: Vec<Option<Tid>>,
    free: BTreeSet<u32>,
    in_use: u32,
}

/// A stub that has finished: its call returned `value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    pub stub: u32,
    pub tid: Tid,
    pub value: u64,
}

impl Stubs {
    pub fn new(code: u64, data: u64) -> Stubs {
        Stubs {
            code,
            data,
            owner: vec![None; STUB_COUNT as usize],
            free: (0..STUB_COUNT).collect(),
            in_use: 0,
        }
    }

    pub fn is_mapped(&self) -> bool {
        self.code != 0
    }

    /// The whole mapping, as (start, length): code, then data of the same size.
    pub fn mapping(&self) -> Option<(u64, u64)> {
        self.is_mapped()
            .then(|| (self.code, 2 * (self.data - self.code)))
    }

    pub fn alloc(&mut self, tid: Tid) -> Option<u32> {
        let k = self.free.pop_first()?;
        self.owner[k as usize] = Some(tid);
        self.in_use += 1;
        Some(k)
    }

    pub fn release(&mut self, k: u32) {
        if let Some(o) = self.owner.get_mut(k as usize) {
            if o.take().is_some() {
                self.free.insert(k);
                self.in_use -= 1;
            }
        }
    }

    pub fn code_addr(&self, k: u32) -> u64 {
        self.code + k as u64 * STUB_CODE_SIZE
    }

    pub fn data_addr(&self, k: u32) -> u64 {
        self.data + k as u64 * STUB_DATA_SIZE
    }

    /// The whole region, code and data, as `[start, end)`: the data half holds
    /// recent return values (pointers to blocks), which are memtrace's, not roots.
    pub fn region(&self) -> Option<(u64, u64)> {
        self.is_mapped()
            .then(|| (self.code, self.data + (self.data - self.code)))
    }

    /// Whether `addr` is the code of a stub (a return address that points into one).
    pub fn is_stub_code(&self, addr: u64) -> bool {
        self.is_mapped()
            && addr >= self.code
            && addr < self.code + STUB_COUNT as u64 * STUB_CODE_SIZE
    }

    /// The data range to read to see every stub in use, if any is.
    pub fn range_in_use(&self) -> Option<(u64, usize)> {
        if self.in_use == 0 {
            return None;
        }
        let high = self.owner.iter().rposition(|o| o.is_some())? as u64 + 1;
        Some((self.data, (high * STUB_DATA_SIZE) as usize))
    }

    /// The return value stored in stub `k`, from data read at `range_in_use`.
    pub fn value(&self, data: &[u8], k: u32) -> u64 {
        let at = k as usize * STUB_DATA_SIZE as usize + STUB_VALUE as usize;
        data.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    }

    /// The finished stubs, from the data read at `range_in_use`. Does not release them.
    pub fn finished(&self, data: &[u8]) -> Vec<Finished> {
        let word = |k: usize, off: u64| {
            let at = k * STUB_DATA_SIZE as usize + off as usize;
            data.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
        };
        // Only the stubs `data` covers: the range read was cut at the highest in use.
        let covered = data.len() / STUB_DATA_SIZE as usize;
        self.owner
            .iter()
            .take(covered)
            .enumerate()
            .filter_map(|(k, o)| {
                let tid = (*o)?;
                (word(k, STUB_DONE)? != 0).then(|| Finished {
                    stub: k as u32,
                    tid,
                    value: word(k, STUB_VALUE).unwrap_or(0),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_first_and_reused() {
        let mut s = Stubs::new(0x1000, 0x9000);
        assert_eq!(s.range_in_use(), None);
        assert_eq!(s.alloc(1), Some(0));
        assert_eq!(s.alloc(2), Some(1));
        s.release(0);
        assert_eq!(
            s.range_in_use(),
            Some((0x9000, 2 * STUB_DATA_SIZE as usize))
        );
        assert_eq!(s.alloc(3), Some(0));
        assert_eq!(s.code_addr(1), 0x1000 + STUB_CODE_SIZE);
        assert!(s.is_stub_code(s.code_addr(1)));
        assert!(!s.is_stub_code(0x9000));
        s.release(1);
        s.release(1); // twice: no effect
        assert_eq!(s.range_in_use(), Some((0x9000, STUB_DATA_SIZE as usize)));
    }

    #[test]
    fn finished_reads_done_and_value() {
        let mut s = Stubs::new(0x1000, 0x9000);
        s.alloc(7);
        s.alloc(8);
        let mut data = vec![0u8; 2 * STUB_DATA_SIZE as usize];
        let k1 = STUB_DATA_SIZE as usize;
        data[k1..k1 + 8].copy_from_slice(&1u64.to_le_bytes());
        data[k1 + 16..k1 + 24].copy_from_slice(&0xabcdu64.to_le_bytes());
        assert_eq!(
            s.finished(&data),
            vec![Finished {
                stub: 1,
                tid: 8,
                value: 0xabcd
            }]
        );
        assert_eq!(s.value(&data, 1), 0xabcd);
        assert_eq!(s.value(&data, 99), 0);
    }

    #[test]
    fn runs_out() {
        let mut s = Stubs::new(0x1000, 0x9000);
        for _ in 0..STUB_COUNT {
            assert!(s.alloc(1).is_some());
        }
        assert_eq!(s.alloc(1), None);
    }
}
