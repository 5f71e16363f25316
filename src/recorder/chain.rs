//! A record's whole stack copy, found in pieces along its chain: its own bytes,
//! then, above them, the bytes of the records that held the rest of the stack when
//! it was written (see "Stack copies" in `memtrace_arch::recorder`). Pure: the
//! records come from the caller.

use super::record::Entry;
use crate::unwind::StackPieces;
use memtrace_arch::recorder::{MAX_LAYERS, NO_RECORD};

/// Why a chain could not be followed: a record of it is gone from the ring (written
/// over), or is not what the chain says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokenChain {
    #[error("record {0} of a stack's chain is gone")]
    Gone(u64),
    #[error("record {0} of a stack's chain does not hold the stack above the one before")]
    Mismatch(u64),
    #[error("a stack's chain is longer than the layers a thread has")]
    TooLong,
}

/// The stack `e` stands for (`e.full_len` bytes from `e.sp + 8` up), in pieces:
/// `own` (its own bytes), then the part of each record of the chain that lies above.
/// `fetch` gives the entry at a position and its own bytes, or None when it is gone.
pub fn pieces<'a>(
    e: &Entry,
    own: &'a [u8],
    mut fetch: impl FnMut(u64) -> Option<(Entry, &'a [u8])>,
) -> Result<StackPieces<'a>, BrokenChain> {
    let from = e.copy_base();
    let top = from + e.full_len;
    let mut copy = StackPieces::new(from, own);
    let mut cur = from + own.len() as u64;
    let mut prev = e.prev;
    let mut steps = 0;
    while cur < top {
        if prev == NO_RECORD {
            return Err(BrokenChain::Mismatch(e.pos));
        }
        // Below its base a record is not held for it: the ring may be reusing it
        // (only a corrupt chain points there).
        if prev < e.base {
            return Err(BrokenChain::Mismatch(prev));
        }
        steps += 1;
        if steps > MAX_LAYERS + 1 {
            return Err(BrokenChain::TooLong);
        }
        let (p, bytes) = fetch(prev).ok_or(BrokenChain::Gone(prev))?;
        let p_from = p.copy_base();
        let p_upper = p_from + bytes.len() as u64;
        // The layer holds the stack from at most `cur` to above it, on this thread.
        if p.tid != e.tid || p.pos != prev || p_from > cur || p_upper <= cur {
            return Err(BrokenChain::Mismatch(prev));
        }
        let upto = p_upper.min(top);
        if !copy.push(&bytes[(cur - p_from) as usize..(upto - p_from) as usize]) {
            return Err(BrokenChain::TooLong);
        }
        cur = upto;
        prev = p.prev;
    }
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::HookFn;
    use std::collections::HashMap;

    /// The stack `e` stands for into `out`, its pieces one after another.
    fn rebuild<'a>(
        e: &Entry,
        own: &'a [u8],
        fetch: impl FnMut(u64) -> Option<(Entry, &'a [u8])>,
        out: &mut Vec<u8>,
    ) -> Result<(), BrokenChain> {
        out.clear();
        pieces(e, own, fetch)?.write_to(out);
        Ok(())
    }

    fn entry(pos: u64, sp: u64, own: u64, full: u64, prev: u64) -> Entry {
        Entry {
            pos,
            tid: 7,
            func: HookFn::Malloc,
            hooked_return: true,
            args: [0; 6],
            ret: 0,
            sp,
            fp: 0,
            stack_len: own,
            full_len: full,
            prev,
            base: 0,
            skipped: (0, 0),
        }
    }

    /// A thread's stack over three calls, as the thunk copies it: [0x1000, 0x1100)
    /// is the stack's top part (the copy stands for up to 0x1100).
    #[test]
    fn three_layers_give_the_stack_back() {
        let stack_at = |a: u64, era: u8| -> u8 { (a as u8) ^ era };
        // Record 0: whole, from 0x1040 (sp 0x1038), era 1.
        let r0: Vec<u8> = (0x1040..0x1100).map(|a| stack_at(a, 1)).collect();
        // Record 1: from 0x1000; the stack differs below 0x1080 (era 2 there).
        let r1: Vec<u8> = (0x1000..0x1080).map(|a| stack_at(a, 2)).collect();
        // Record 2: from 0x1020; differs below 0x1040 (era 3).
        let r2: Vec<u8> = (0x1020..0x1040).map(|a| stack_at(a, 3)).collect();
        let mut records: HashMap<u64, (Entry, Vec<u8>)> = HashMap::new();
        records.insert(0, (entry(0, 0x1038, 0xc0, 0xc0, NO_RECORD), r0));
        records.insert(200, (entry(200, 0xff8, 0x80, 0x100, 0), r1));
        let e2 = entry(400, 0x1018, 0x20, 0xe0, 200);
        let mut out = Vec::new();
        let fetch = |p: u64| records.get(&p).map(|(e, b)| (*e, b.as_slice()));
        rebuild(&e2, &r2, fetch, &mut out).unwrap();
        let want: Vec<u8> = (0x1020..0x1100u64)
            .map(|a| {
                let era = if a < 0x1040 {
                    3
                } else if a < 0x1080 {
                    2
                } else {
                    1
                };
                stack_at(a, era)
            })
            .collect();
        assert_eq!(out, want);
        // In pieces, each word is the stack's, one across two layers too.
        let copy = pieces(&e2, &r2, fetch).unwrap();
        assert_eq!((copy.base(), copy.len()), (0x1020, want.len()));
        for addr in 0x1020..0x10f9u64 {
            let off = (addr - 0x1020) as usize;
            let w = u64::from_le_bytes(want[off..off + 8].try_into().unwrap());
            assert_eq!(copy.word(addr), Some(w), "at {addr:#x}");
        }

        // A record of the chain written over: the stack cannot be had.
        let fetch = |p: u64| (p != 0).then(|| records.get(&p)).flatten();
        let fetch = |p: u64| fetch(p).map(|(e, b)| (*e, b.as_slice()));
        assert_eq!(
            rebuild(&e2, &r2, fetch, &mut out),
            Err(BrokenChain::Gone(0))
        );
    }

    #[test]
    fn a_chain_that_does_not_join_up_is_refused() {
        let r0 = vec![1u8; 0x40];
        // Its own bytes end at 0x1040, but the record it names starts at 0x1060.
        let e = entry(100, 0x1018, 0x20, 0x80, 0);
        let fetch = |_| Some((entry(0, 0x1058, 0x40, 0x40, NO_RECORD), r0.as_slice()));
        let mut out = Vec::new();
        assert_eq!(
            rebuild(&e, &[0u8; 0x20], fetch, &mut out),
            Err(BrokenChain::Mismatch(0))
        );
        // A whole record is its own bytes.
        let whole = entry(5, 0x1018, 0x20, 0x20, NO_RECORD);
        let fetch = |_| None::<(Entry, &[u8])>;
        rebuild(&whole, &[9u8; 0x20], fetch, &mut out).unwrap();
        assert_eq!(out, vec![9u8; 0x20]);
    }

    /// A chain of as many layers as a thread can have, and one to spare, is taken
    /// (all in pieces); one layer more is refused.
    #[test]
    fn a_chain_as_long_as_a_thread_can_have_is_followed_and_no_longer() {
        let layers_ok = MAX_LAYERS as usize + 1;
        for layers in [layers_ok, layers_ok + 1] {
            // Record k (k = 1..=layers) holds the 8 bytes at 0x1000 + 8 * k, and
            // names record k + 1 above it; record `layers` is whole.
            let bytes: Vec<Vec<u8>> = (0..=layers).map(|k| vec![k as u8; 8]).collect();
            let pos = |k: usize| (layers - k) as u64 * 100;
            let rec = |k: usize| {
                let prev = if k == layers { NO_RECORD } else { pos(k + 1) };
                let own = 8;
                let full = 8 * (layers + 1 - k) as u64;
                entry(pos(k), 0xff8 + 8 * k as u64, own, full, prev)
            };
            let e = rec(0);
            let fetch = |p: u64| {
                (0..=layers)
                    .find(|&k| pos(k) == p)
                    .map(|k| (rec(k), bytes[k].as_slice()))
            };
            let got = pieces(&e, &bytes[0], fetch);
            if layers == layers_ok {
                let copy = got.unwrap();
                assert_eq!(copy.len(), 8 * (layers + 1));
                assert_eq!(
                    copy.word(0x1000 + 8 * layers as u64),
                    Some(u64::from_le_bytes([layers as u8; 8]))
                );
                assert_eq!(copy.word(0x1001 + 8 * layers as u64), None);
            } else {
                assert_eq!(got.err(), Some(BrokenChain::TooLong));
            }
        }
    }

    #[test]
    fn a_chain_that_leads_below_its_base_is_refused() {
        let r0 = vec![1u8; 0x40];
        // Its base says the chain starts at 100; the record named is at 50.
        let e = Entry {
            base: 100,
            ..entry(200, 0x1018, 0x20, 0x60, 50)
        };
        let fetch = |_| Some((entry(50, 0x1038, 0x40, 0x40, NO_RECORD), r0.as_slice()));
        assert_eq!(
            pieces(&e, &[0u8; 0x20], fetch).err(),
            Some(BrokenChain::Mismatch(50))
        );
    }
}
