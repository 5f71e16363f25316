//! A copy of a stack in pieces: contiguous in the target's addresses, not in
//! memtrace's. A recorded call's copy is its own bytes and, above them, parts of
//! earlier records of its thread (its chain); an unwind reads a few dozen words of
//! it, so it reads them where they lie rather than have the pieces copied together
//! first.

/// Pieces a copy has at most: a record's own bytes, one per layer of its chain, and
/// one to spare (the chain's walk allows a layer more than a thread has).
pub const MAX_PIECES: usize = memtrace_arch::recorder::MAX_LAYERS as usize + 2;

/// The bytes of a stack from `base` up, in pieces that follow each other.
#[derive(Clone, Copy, Debug)]
pub struct StackPieces<'a> {
    base: u64,
    n: usize,
    /// Where piece `k` ends, in bytes from `base`.
    ends: [usize; MAX_PIECES],
    pieces: [&'a [u8]; MAX_PIECES],
}

impl<'a> StackPieces<'a> {
    /// A copy of the stack from `base` up whose first piece is `first`.
    pub fn new(base: u64, first: &'a [u8]) -> StackPieces<'a> {
        let mut copy = StackPieces {
            base,
            n: 0,
            ends: [0; MAX_PIECES],
            pieces: [&[]; MAX_PIECES],
        };
        copy.push(first);
        copy
    }

    /// Adds `bytes` above what the copy has; false when it has as many pieces as it
    /// can hold (nothing is added).
    pub fn push(&mut self, bytes: &'a [u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        if self.n == MAX_PIECES {
            return false;
        }
        self.ends[self.n] = self.len() + bytes.len();
        self.pieces[self.n] = bytes;
        self.n += 1;
        true
    }

    /// The stack address of the copy's first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Its bytes, all pieces together.
    pub fn len(&self) -> usize {
        match self.n {
            0 => 0,
            n => self.ends[n - 1],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The word at stack address `addr`, if the copy holds all of its 8 bytes.
    pub fn word(&self, addr: u64) -> Option<u64> {
        let off = usize::try_from(addr.checked_sub(self.base)?).ok()?;
        let end = off.checked_add(8)?;
        if end > self.len() {
            return None;
        }
        let k = self.ends[..self.n].iter().position(|&e| off < e)?;
        let from = if k == 0 { 0 } else { self.ends[k - 1] };
        if let Some(b) = self.pieces[k].get(off - from..end - from) {
            return Some(u64::from_le_bytes(b.try_into().ok()?));
        }
        // Across the end of a piece: byte by byte.
        let mut b = [0u8; 8];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = self.byte(off + i)?;
        }
        Some(u64::from_le_bytes(b))
    }

    fn byte(&self, off: usize) -> Option<u8> {
        let k = self.ends[..self.n].iter().position(|&e| off < e)?;
        let from = if k == 0 { 0 } else { self.ends[k - 1] };
        self.pieces[k].get(off - from).copied()
    }

    /// Every byte, in order, appended to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len());
        for piece in &self.pieces[..self.n] {
            out.extend_from_slice(piece);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_read_where_they_lie_even_across_pieces() {
        let all: Vec<u8> = (0..64u8).collect();
        let mut copy = StackPieces::new(0x1000, &all[..13]);
        assert!(copy.push(&[]));
        assert!(copy.push(&all[13..40]));
        assert!(copy.push(&all[40..]));
        assert_eq!(copy.len(), 64);
        let whole = |addr: u64| {
            let off = (addr - 0x1000) as usize;
            all.get(off..off + 8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        };
        for addr in 0x1000..0x1040 {
            assert_eq!(copy.word(addr), whole(addr), "at {addr:#x}");
        }
        assert_eq!(copy.word(0xfff), None);
        assert_eq!(copy.word(u64::MAX), None);
        let mut out = Vec::new();
        copy.write_to(&mut out);
        assert_eq!(out, all);
    }

    #[test]
    fn a_copy_holds_at_most_its_pieces() {
        let bytes = [7u8; 4];
        let mut copy = StackPieces::new(0, &bytes);
        for _ in 1..MAX_PIECES {
            assert!(copy.push(&bytes));
        }
        assert!(!copy.push(&bytes));
        assert_eq!(copy.len(), 4 * MAX_PIECES);
        assert_eq!(
            copy.word(4 * MAX_PIECES as u64 - 8),
            Some(0x0707_0707_0707_0707)
        );
    }
}
