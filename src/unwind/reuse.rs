//! Unwinding from a copy of a stack, reusing the last unwind of the same thread.
//!
//! Most allocator calls of a thread share their outer frames with its previous
//! call (`main`, an interpreter's loop, a request handler): unwinding them again gives
//! the same frames. An unwind is a deterministic function of the registers it starts
//! a frame with (pc, stack pointer, frame pointer) and of the stack words it reads.
//! So each thread's last unwind is kept: for every frame, its registers and the words
//! unwinding it read. A new unwind that reaches a frame with the same registers as a
//! frame of the last one, with every word read from there on still the same in its
//! own copy, takes the rest from the last unwind instead of unwinding it again: a few
//! dozen word compares instead of a dozen CFI lookups.

use super::{at_top, frame_registers, unwind_regs, Ending, StackPieces, Start};
use crate::event::Tid;
use framehop::{FrameAddress, MayAllocateDuringUnwind, Unwinder, UnwinderNative};
use rustc_hash::FxHashMap;

/// Threads whose last unwind is kept, at most.
const THREADS_KEPT: usize = 4096;

/// One thread's last unwind.
#[derive(Debug, Default)]
struct Walk {
    /// Per frame: the frame's address and the registers it was unwound from.
    states: Vec<(u64, u64, u64)>,
    /// Where each frame's reads start in `reads`.
    marks: Vec<usize>,
    /// Every stack word read, in order: (address, value).
    reads: Vec<(u64, u64)>,
    frames: Vec<u64>,
    ending: Option<Ending>,
}

/// What a walk from a copy did, besides the frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Walked {
    pub ending: Option<Ending>,
    /// How far into the copy the unwind read (bytes from its start).
    pub most: usize,
    /// It needed a word past the copy's end.
    pub ran_off: bool,
    /// Frames taken from the thread's last unwind.
    pub reused: usize,
    /// It needed a word of the copy's unread range (see [`Reuse::walk`]): it ended
    /// there, as a failed unwind.
    pub misread: bool,
}

/// A walk that reached the stack's end.
pub struct Complete<'a> {
    /// Per frame: its address (a return address, as the walk's output).
    pub frames: &'a [u64],
    /// Per frame: its stack pointer (the CFA of the frame before).
    pub sps: Vec<u64>,
    /// Every stack word read, as (address, value).
    pub reads: &'a [(u64, u64)],
}

#[derive(Default)]
pub struct Reuse {
    walks: FxHashMap<Tid, Walk>,
    /// A buffer for the walk being made.
    spare: Walk,
}

/// The word at `addr` has a byte in `[lo, hi)`.
pub(super) fn overlaps(addr: u64, (lo, hi): (u64, u64)) -> bool {
    addr < hi && addr.saturating_add(8) > lo
}

impl Walk {
    /// The frame with these registers whose reads, from it on, all hold in `stack`
    /// (none of them in its `unread` range).
    fn suffix(
        &self,
        state: (u64, u64, u64),
        stack: &StackPieces<'_>,
        unread: (u64, u64),
    ) -> Option<usize> {
        let j = self.states.iter().position(|&s| s == state)?;
        if j >= self.frames.len() {
            return None;
        }
        let from = *self.marks.get(j)?;
        self.reads[from..]
            .iter()
            .all(|&(a, v)| !overlaps(a, unread) && stack.word(a) == Some(v))
            .then_some(j)
    }
}

impl Reuse {
    /// Thread `tid`'s last walk from a copy, if it reached the stack's end.
    pub fn last_complete(&self, tid: Tid) -> Option<Complete<'_>> {
        let walk = self.walks.get(&tid)?;
        (walk.ending == Some(Ending::Complete)).then(|| Complete {
            frames: &walk.frames,
            sps: walk.states.iter().map(|&(_, sp, _)| sp).collect(),
            reads: &walk.reads,
        })
    }

    /// Forgets every kept unwind (the loaded objects changed).
    pub fn clear(&mut self) {
        self.walks.clear();
    }

    /// Unwinds thread `tid`'s stack from `start`, whose copy is `stack` (from
    /// `start.sp` up): at most `depth` return addresses into `out`. The copy's bytes
    /// in `unread` (`[lo, hi)`, empty for none) may not be the stack's: an unwind that
    /// needs a word there stops, failed, rather than read it. (The unwinder and its
    /// cache are the walker's, lent for the walk.)
    #[allow(clippy::too_many_arguments)]
    pub fn walk(
        &mut self,
        unwinder: &mut UnwinderNative<Vec<u8>, MayAllocateDuringUnwind>,
        cache: &mut super::Rules,
        tid: Tid,
        start: Start,
        stack: &StackPieces<'_>,
        unread: (u64, u64),
        depth: usize,
        out: &mut Vec<u64>,
    ) -> Walked {
        out.clear();
        let mut done = Walked::default();
        let Some(mut frame) = FrameAddress::from_return_address(start.return_address) else {
            done.ending = Some(Ending::Failed);
            return done;
        };
        if depth <= 1 {
            out.push(frame.address());
            done.ending = Some(Ending::DepthLimit);
            return done;
        }
        let last = self.walks.remove(&tid);
        let mut now = std::mem::take(&mut self.spare);
        now.states.clear();
        now.marks.clear();
        now.reads.clear();
        let base = stack.base();
        let mut regs = unwind_regs(start);
        let ending = loop {
            if out.len() == depth {
                break Ending::DepthLimit;
            }
            let (sp, fp) = frame_registers(&regs);
            let state = (frame.address(), sp, fp);
            if let Some((last, j)) = last
                .as_ref()
                .filter(|l| matches!(l.ending, Some(Ending::Complete | Ending::DepthLimit)))
                .and_then(|l| Some((l, l.suffix(state, stack, unread)?)))
            {
                let rest = &last.frames[j..];
                // A suffix cut by the last unwind's depth is only enough if this one
                // is cut there too.
                if last.ending == Some(Ending::Complete) || out.len() + rest.len() >= depth {
                    let take = rest.len().min(depth - out.len());
                    out.extend_from_slice(&rest[..take]);
                    done.reused = take;
                    // This walk's own record of those frames, for the next one.
                    let from = last.marks[j];
                    let to = last
                        .marks
                        .get(j + take)
                        .copied()
                        .unwrap_or(last.reads.len());
                    let shift = now.reads.len();
                    now.states.extend_from_slice(&last.states[j..j + take]);
                    now.marks
                        .extend(last.marks[j..j + take].iter().map(|m| m - from + shift));
                    now.reads.extend_from_slice(&last.reads[from..to]);
                    for &(a, _) in &last.reads[from..to] {
                        done.most = done.most.max(a.saturating_sub(base) as usize + 8);
                    }
                    break if take < rest.len() || last.ending == Some(Ending::DepthLimit) {
                        Ending::DepthLimit
                    } else {
                        Ending::Complete
                    };
                }
            }
            now.states.push(state);
            now.marks.push(now.reads.len());
            out.push(frame.address());
            let reads = &mut now.reads;
            let misread = &mut done.misread;
            let mut read_stack = |addr: u64| match stack.word(addr) {
                _ if overlaps(addr, unread) => {
                    *misread = true;
                    Err(())
                }
                Some(v) => {
                    reads.push((addr, v));
                    done.most = done.most.max(addr.saturating_sub(base) as usize + 8);
                    Ok(v)
                }
                None => {
                    if addr >= base {
                        done.ran_off = true;
                    }
                    Err(())
                }
            };
            let unwound = unwinder.unwind_frame(frame, &mut regs, cache.at(frame), &mut read_stack);
            // Whatever the unwinder made of a word it could not have: the walk ends.
            if done.misread {
                break Ending::Failed;
            }
            match unwound {
                Ok(Some(ra)) => match FrameAddress::from_return_address(ra) {
                    Some(next) => frame = next,
                    None => break Ending::Complete,
                },
                Ok(None) => break Ending::Complete,
                Err(_) if at_top(regs.sp(), start.stack_top) => break Ending::Complete,
                Err(_) => break Ending::Failed,
            }
        };
        done.ending = Some(ending);
        now.frames.clear();
        now.frames.extend_from_slice(out);
        now.ending = Some(ending);
        if self.walks.len() >= THREADS_KEPT {
            self.walks.clear();
        }
        self.walks.insert(tid, now);
        self.spare = last.unwrap_or_default();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::super::StackWalker;
    use super::*;

    /// A frame-pointer chain (no module is known: framehop follows it): frame records
    /// at 0x1010 and 0x1030 of a stack at 0x1000; the outermost saved rbp is 0.
    fn chain(outer_ret: u64) -> Vec<u8> {
        let mut words = [0u64; 8];
        words[2] = 0x1030;
        words[3] = 0x6000;
        words[6] = 0;
        words[7] = outer_ret;
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn start(ret: u64) -> Start {
        Start {
            return_address: ret,
            sp: 0x1000,
            frame_pointer: 0x1010,
            stack_top: 0,
        }
    }

    #[test]
    fn a_walk_never_reads_the_range_its_copy_did_not_compare() {
        let mut w = StackWalker::new();
        let mut out = Vec::new();
        w.walk_copy(1, start(0x5000), &chain(0x7000), 32, &mut out);
        // The outer record unread: not reused from the last walk (whose words there
        // match the copy's), not read; the walk ends there, failed.
        let stack = chain(0x7000);
        let copy = StackPieces::new(0x1000, &stack);
        let cut = w.walk_copy_unread(1, start(0x5100), &copy, (0x1030, 0x1040), 32, &mut out);
        assert_eq!(out, vec![0x5100, 0x6000]);
        assert!(cut.misread);
        assert_eq!((cut.ending, cut.reused), (Some(Ending::Failed), 0));
        // A range no frame reads changes nothing.
        let fine = w.walk_copy_unread(1, start(0x5100), &copy, (0x1020, 0x1030), 32, &mut out);
        assert_eq!(out, vec![0x5100, 0x6000, 0x7000]);
        assert!(!fine.misread);
        assert_eq!(fine.ending, Some(Ending::Complete));
    }

    #[test]
    fn the_same_outer_frames_are_reused_and_changed_ones_are_not() {
        let mut w = StackWalker::new();
        let mut out = Vec::new();
        let first = w.walk_copy(1, start(0x5000), &chain(0x7000), 32, &mut out);
        assert_eq!(out, vec![0x5000, 0x6000, 0x7000]);
        assert_eq!((first.ending, first.reused), (Some(Ending::Complete), 0));
        // Another call site, same stack above: all but the first frame are reused.
        let second = w.walk_copy(1, start(0x5100), &chain(0x7000), 32, &mut out);
        assert_eq!(out, vec![0x5100, 0x6000, 0x7000]);
        assert_eq!((second.ending, second.reused), (Some(Ending::Complete), 2));
        // A word the last unwind read has changed: unwound again, rightly.
        let third = w.walk_copy(1, start(0x5100), &chain(0x7700), 32, &mut out);
        assert_eq!(out, vec![0x5100, 0x6000, 0x7700]);
        assert_eq!(third.reused, 0);
        // Another thread has no last unwind of its own.
        let other = w.walk_copy(2, start(0x5100), &chain(0x7700), 32, &mut out);
        assert_eq!(other.reused, 0);
    }

    #[test]
    fn a_walk_cut_by_depth_inside_a_reused_suffix_keeps_a_consistent_record() {
        let mut w = StackWalker::new();
        let mut out = Vec::new();
        w.walk_copy(1, start(0x5000), &chain(0x7000), 32, &mut out);
        // Reused, then cut at 2 frames: what is kept of it must match its frames.
        w.walk_copy(1, start(0x5100), &chain(0x7000), 2, &mut out);
        assert_eq!(out, vec![0x5100, 0x6000]);
        // The next walk, from a state only the cut part could have had, is sound.
        let next = w.walk_copy(1, start(0x5200), &chain(0x7000), 32, &mut out);
        assert_eq!(out, vec![0x5200, 0x6000, 0x7000]);
        assert_eq!(next.ending, Some(Ending::Complete));
    }

    #[test]
    fn a_suffix_cut_by_depth_is_reused_only_when_this_walk_is_cut_there_too() {
        let mut w = StackWalker::new();
        let mut out = Vec::new();
        w.walk_copy(1, start(0x5000), &chain(0x7000), 2, &mut out);
        assert_eq!(out, vec![0x5000, 0x6000]);
        // Deeper now: the last unwind stopped at 2 frames; the rest is unwound.
        let deeper = w.walk_copy(1, start(0x5100), &chain(0x7000), 32, &mut out);
        assert_eq!(out, vec![0x5100, 0x6000, 0x7000]);
        assert_eq!(deeper.ending, Some(Ending::Complete));
    }

    #[test]
    fn a_copy_in_pieces_unwinds_as_the_same_copy_whole() {
        let stack = chain(0x7000);
        // Cut inside the first frame record's saved rbp and inside the last return
        // address: every word the walk reads is there, two of them across pieces.
        let mut copy = StackPieces::new(0x1000, &stack[..0x13]);
        assert!(copy.push(&stack[0x13..0x3c]));
        assert!(copy.push(&stack[0x3c..]));
        let (mut w, mut out) = (StackWalker::new(), Vec::new());
        let walked = w.walk_copy_unread(1, start(0x5000), &copy, (0, 0), 32, &mut out);
        assert_eq!(out, vec![0x5000, 0x6000, 0x7000]);
        assert_eq!(walked.ending, Some(Ending::Complete));
        // Cut short of the last return address: the walk runs off the copy.
        let short = StackPieces::new(0x1000, &stack[..0x3c]);
        let (mut w, mut out) = (StackWalker::new(), Vec::new());
        let walked = w.walk_copy_unread(1, start(0x5000), &short, (0, 0), 32, &mut out);
        assert_eq!(out, vec![0x5000, 0x6000]);
        assert!(walked.ran_off);
    }
}
