//! What a function's code and its CFI say about where its frame lies, for the stack
//! compare that steps over a frame's locals (see "Skipped ranges" in
//! `memtrace_arch::recorder`). Two questions, each answered from the object file
//! alone, and each answered "no" whenever anything is not plain:
//!
//! - [`steady_frame`]: does a function keep the same frame at every call it makes?
//!   Its canonical frame address (CFA) is its stack pointer plus a constant at every
//!   instruction (no frame pointer, no `alloca`), so at each call its callee's frame
//!   starts a known distance below the CFA; and it never leaves its frame to other
//!   code on the same return address (a tail call, a jump into a part of it placed
//!   elsewhere).
//! - [`called_once`]: does a function make a call once and then only calls at the
//!   same stack pointer, never returning, never leaving? Then the slot holding that
//!   call's return address is written over by any later call: while it still holds
//!   that return address, the callee is still running (the C library's start code
//!   and `main`).
//!
//! And [`main_address`]: which function is `main` (what the entry point hands the
//! start code). Only `main`'s frame is stepped over: a caller that calls through a
//! pointer could be brought back to the same call by `setjmp`'s second return and
//! call another function there, which no look at the code can rule out; the start
//! code calls `main` once.

use gimli::UnwindSection;
use memtrace_arch::{Arch, Flow, Native};
use object::{Object, ObjectSection};

/// How a function's frame lies at every call it makes, in bytes below its CFA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameShape {
    /// Every callee's frame lies below `CFA - calls_below`.
    pub calls_below: u64,
    /// Every word its CFI reads (return address, saved registers) lies at or above
    /// `CFA - saves_below`.
    pub saves_below: u64,
    /// Its return address is at `CFA - ra_below`.
    pub ra_below: u64,
}

/// One function (an FDE) of an object: its range and code, and per row of its CFI
/// the stack pointer's distance below the CFA (`None`: the CFA is not the stack
/// pointer plus a constant) and the lowest word its rules read.
struct Function<'a> {
    start: u64,
    code: &'a [u8],
    rows: Vec<(std::ops::Range<u64>, Option<u64>, u64)>,
    /// Where its return address is, below the CFA, if every row says the same.
    ra_below: Option<u64>,
}

impl Function<'_> {
    fn end(&self) -> u64 {
        self.start + self.code.len() as u64
    }

    fn contains(&self, at: u64) -> bool {
        (self.start..self.end()).contains(&at)
    }

    /// The stack pointer's distance below the CFA at `at` (`None`: unknown).
    fn depth_at(&self, at: u64) -> Option<u64> {
        self.rows
            .iter()
            .find(|(r, _, _)| r.contains(&at))
            .and_then(|&(_, d, _)| d)
    }

    /// Every instruction, in order: its address, length and flow; `None` if one
    /// cannot be decoded.
    fn instructions(&self) -> Option<Vec<(u64, u64, Flow)>> {
        let mut out = Vec::new();
        let mut off = 0usize;
        while off < self.code.len() {
            let at = self.start + off as u64;
            let (len, flow) = Native::flow(&self.code[off..], at)?;
            out.push((at, len as u64, flow));
            off += len;
        }
        Some(out)
    }
}

/// The function of object `data` (loaded with `bias` added to its addresses) that
/// holds `pc`, an address in the target. `data` is the object's bytes, or its file
/// read as needed ([`object::ReadCache`]): besides the headers and symbol tables
/// that parsing it reads, its unwind section and the function's code.
fn function_at<'d, R: object::ReadRef<'d>>(data: R, bias: u64, pc: u64) -> Option<Function<'d>> {
    let obj = object::File::parse(data).ok()?;
    let section = obj.section_by_name(".eh_frame")?;
    let eh = gimli::EhFrame::new(section.data().ok()?, gimli::LittleEndian);
    let mut bases = gimli::BaseAddresses::default().set_eh_frame(section.address());
    if let Some(text) = obj.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    let svma = pc.wrapping_sub(bias);
    let fde = eh
        .fde_for_address(&bases, svma, gimli::EhFrame::cie_from_offset)
        .ok()?;
    let start = fde.initial_address();
    let end = start.checked_add(fde.len())?;
    let ra_register = fde.cie().return_address_register();
    let mut ra_offsets = std::collections::HashSet::new();
    let mut ctx = gimli::UnwindContext::new();
    let mut table = fde.rows(&eh, &bases, &mut ctx).ok()?;
    let mut rows = Vec::new();
    while let Some(row) = table.next_row().ok()? {
        ra_offsets.insert(match row.register(ra_register) {
            Some(gimli::RegisterRule::Offset(o)) => {
                o.checked_neg().and_then(|b| u64::try_from(b).ok())
            }
            _ => None,
        });
        let depth = match *row.cfa() {
            gimli::CfaRule::RegisterAndOffset { register, offset }
                if register.0 == Native::DWARF_SP && offset >= 0 =>
            {
                Some(offset as u64)
            }
            _ => None,
        };
        let mut lowest = 0u64;
        for (_, rule) in row.registers() {
            match *rule {
                gimli::RegisterRule::Offset(o) | gimli::RegisterRule::ValOffset(o) => {
                    lowest = lowest.max(o.checked_neg()?.try_into().ok()?)
                }
                gimli::RegisterRule::Undefined
                | gimli::RegisterRule::SameValue
                | gimli::RegisterRule::Register(_) => {}
                // An expression may read anywhere.
                _ => return None,
            }
        }
        rows.push((row.start_address()..row.end_address(), depth, lowest));
    }
    // The code, from the segment that maps it.
    let code = obj
        .segments()
        .find_map(|s| crate::elf::segment_bytes(data, &s, start, end - start))?;
    let ra_below = match ra_offsets.into_iter().collect::<Vec<_>>()[..] {
        [one] => one,
        _ => None,
    };
    Some(Function {
        start,
        code,
        rows,
        ra_below,
    })
}

/// How much of the entry point's code is looked at for the call into the start code.
const ENTRY_CODE: u64 = 256;

/// The addresses (in the object) of the `main` that the entry point of executable
/// `data` hands the C library's start code, and the return address of that call.
pub fn main_address<'d, R: object::ReadRef<'d>>(data: R) -> Option<(u64, u64)> {
    let obj = object::File::parse(data).ok()?;
    let entry = obj.entry();
    let code = obj.segments().find_map(|s| {
        let room = crate::elf::segment_room(&s, entry)?;
        crate::elf::segment_bytes(data, &s, entry, room.min(ENTRY_CODE))
    })?;
    Native::entry_first_argument(code, entry)
}

/// Whether the function holding `pc` keeps a steady frame (see the module's notes):
/// the addresses it covers, and how its frame lies.
pub fn steady_frame<'d, R: object::ReadRef<'d>>(
    data: R,
    bias: u64,
    pc: u64,
) -> Option<(std::ops::Range<u64>, FrameShape)> {
    let f = function_at(data, bias, pc)?;
    // Covered by rules from end to end, all of them the stack pointer plus a constant.
    let mut at = f.start;
    for (r, depth, _) in &f.rows {
        if r.start != at || depth.is_none() {
            return None;
        }
        at = r.end;
    }
    if at != f.end() {
        return None;
    }
    let entry = f.rows.first()?.1?;
    let ra_below = f.ra_below?;
    let saves_below = f.rows.iter().map(|&(_, _, l)| l).max()?;
    let mut calls_below = u64::MAX;
    for (at, _, flow) in f.instructions()? {
        let depth = f.depth_at(at)?;
        match flow {
            Flow::Call(_) => calls_below = calls_below.min(depth),
            Flow::Jump(to) | Flow::Branch(to) if !f.contains(to) => return None,
            // A jump through a table within it, unless nothing of its frame is left:
            // then it is a tail call.
            Flow::IndirectJump if depth <= entry => return None,
            _ => {}
        }
    }
    let range = f.start.wrapping_add(bias)..f.end().wrapping_add(bias);
    (calls_below != u64::MAX && calls_below > saves_below).then_some((
        range,
        FrameShape {
            calls_below,
            saves_below,
            ra_below,
        },
    ))
}

/// Whether the call that returns to `ra` is made once by its function (see the
/// module's notes): after it, the function never comes back to it, never returns,
/// never leaves for other code, and makes its other calls at the same stack pointer.
pub fn called_once<'d, R: object::ReadRef<'d>>(data: R, bias: u64, ra: u64) -> bool {
    let Some(f) = function_at(data, bias, ra.wrapping_sub(1)) else {
        return false;
    };
    let Some(insns) = f.instructions() else {
        return false;
    };
    let ra = ra.wrapping_sub(bias);
    let Some(&(call, _, _)) = insns
        .iter()
        .find(|&&(at, len, flow)| at + len == ra && matches!(flow, Flow::Call(_)))
    else {
        return false;
    };
    let Some(depth) = f.depth_at(call) else {
        return false;
    };
    // Every call at that depth, no way out but calls that never return.
    for &(at, _, flow) in &insns {
        let ok = match flow {
            Flow::Call(_) => f.depth_at(at) == Some(depth),
            Flow::Jump(to) | Flow::Branch(to) => f.contains(to),
            Flow::IndirectJump | Flow::Return => false,
            Flow::Next | Flow::Stop => true,
        };
        if !ok {
            return false;
        }
    }
    // Nothing after it leads back to it.
    let index: std::collections::HashMap<u64, usize> = insns
        .iter()
        .enumerate()
        .map(|(i, &(at, _, _))| (at, i))
        .collect();
    let mut seen = vec![false; insns.len()];
    let mut todo: Vec<u64> = vec![ra];
    while let Some(at) = todo.pop() {
        if at == call {
            return false;
        }
        let Some(&i) = index.get(&at) else {
            // Past its end (after a call that does not return), or into the middle
            // of an instruction: nothing known.
            if f.contains(at) {
                return false;
            }
            continue;
        };
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let (_, len, flow) = insns[i];
        match flow {
            Flow::Next | Flow::Call(_) => todo.push(at + len),
            Flow::Jump(to) => todo.push(to),
            Flow::Branch(to) => todo.extend([to, at + len]),
            Flow::IndirectJump | Flow::Return | Flow::Stop => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::ObjectSymbol;

    /// Functions of every kind the analysis tells apart, built with `cc -O2`.
    const SOURCE: &str = r#"
#include <stdlib.h>
#include <string.h>
#define ESCAPE(p) __asm__ volatile("" : : "r"(p) : "memory")
__attribute__((noinline)) void use(char *p) { ESCAPE(p); }
void (*volatile through)(char *) = use;
/* A 4000-byte frame, calls at one depth, three registers saved (the clobber). */
__attribute__((noinline)) int steady(int n) {
    char buf[4000]; __asm__ volatile("" : : : "rbx", "rbp", "r12");
    memset(buf, n, sizeof buf); use(buf); use(buf + 1); return buf[n & 63];
}
int (*volatile through_int)(int) = steady;
/* A big frame too, ending in a tail call: its callee runs on its return address.
 * (No local's address escapes: cc makes no tail call from a frame that lent one.) */
__attribute__((noinline)) int tail(int n) {
    volatile char buf[4000]; buf[n & 4095] = n; use(0); return steady(buf[(n * 7) & 4095]);
}
/* The same, through a pointer. */
__attribute__((noinline)) int tail_through(int n) {
    volatile char buf[4000]; buf[n & 4095] = n; use(0); return through_int(buf[(n * 7) & 4095]);
}
/* A frame sized at run time: the stack pointer moves. */
__attribute__((noinline)) int sized(int n) {
    char buf[n]; memset(buf, n, n); use(buf); return buf[0];
}
/* Calls `through` once and never returns. */
__attribute__((noinline, noreturn)) void once(char *p) {
    through(p); use(p); exit(steady(1));
}
/* Calls `through` in a loop. */
__attribute__((noinline, noreturn)) void loop(char *p) {
    for (;;) { through(p); if (*p) exit(0); }
}
/* Calls `through` once and returns. */
__attribute__((noinline)) int returns(char *p) { through(p); return 1; }
/* Calls `through` once, then a function with arguments on the stack (pushed:
 * another depth). */
__attribute__((noinline)) long eight(long a, long b, long c, long d, long e, long f, long g,
                                     long h) { ESCAPE(&a); return a + b + c + d + e + f + g + h; }
__attribute__((noinline, noreturn)) void pushes(char *p) {
    through(p); exit((int)eight(1, 2, 3, 4, 5, 6, (long)p, (long)p * 3));
}
/* Calls `through` once, then leaves for `use` (a tail call). */
__attribute__((noinline)) void leaves(char *p) { through(p); use(p); }
int main(int argc, char **argv) {
    steady(argc); tail(argc); tail_through(argc); sized(argc); returns(argv[0]);
    leaves(argv[0]);
    if (argc > 5) loop(argv[0]);
    if (argc > 6) pushes(argv[0]);
    once(argv[0]);
}
"#;

    struct Built {
        data: Vec<u8>,
        path: std::path::PathBuf,
        _dir: tempfile::TempDir,
    }

    fn build() -> Built {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("shapes.c"), SOURCE).unwrap();
        let bin = dir.path().join("shapes");
        let built = std::process::Command::new("cc")
            .current_dir(dir.path())
            .args(["-O2", "-fno-stack-protector", "-fcf-protection=none", "-o"])
            .arg(&bin)
            .arg("shapes.c")
            .status()
            .expect("the tests need a C compiler (cc)");
        assert!(built.success());
        Built {
            data: std::fs::read(&bin).unwrap(),
            path: bin,
            _dir: dir,
        }
    }

    fn symbol(data: &[u8], name: &str) -> u64 {
        let obj = object::File::parse(data).unwrap();
        obj.symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no {name}"))
            .address()
    }

    /// The return address of the first call in function `name`.
    fn first_call_return(data: &[u8], name: &str) -> u64 {
        let f = function_at(data, 0, symbol(data, name)).unwrap();
        f.instructions()
            .unwrap()
            .into_iter()
            .find(|&(_, _, flow)| matches!(flow, Flow::Call(_)))
            .map(|(at, len, _)| at + len)
            .unwrap()
    }

    #[test]
    fn an_object_read_as_needed_has_the_same_shapes_as_its_bytes() {
        let b = build();
        let data = &b.data[..];
        let file = object::ReadCache::new(std::fs::File::open(&b.path).unwrap());
        for name in ["steady", "tail", "sized"] {
            let pc = symbol(data, name) + 4;
            assert_eq!(
                steady_frame(&file, 0, pc),
                steady_frame(data, 0, pc),
                "{name}"
            );
        }
        assert!(steady_frame(&file, 0, symbol(data, "steady") + 4).is_some());
        assert_eq!(main_address(&file), main_address(data));
        assert!(main_address(&file).is_some());
        for name in ["once", "loop"] {
            let ra = first_call_return(data, name);
            assert_eq!(
                called_once(&file, 0, ra),
                called_once(data, 0, ra),
                "{name}"
            );
        }
        assert!(called_once(&file, 0, first_call_return(data, "once")));
    }

    #[test]
    fn a_frame_is_steady_only_when_its_stack_pointer_is_and_it_never_leaves() {
        let b = build();
        let data = &b.data[..];
        let (range, shape) = steady_frame(data, 0, symbol(data, "steady") + 4).expect("steady");
        assert!(range.contains(&symbol(data, "steady")), "{range:x?}");
        // Its return address, and below it three saved registers.
        assert!(
            shape.calls_below >= 4000 && shape.ra_below == 8 && shape.saves_below == 32,
            "{shape:?}"
        );
        // The same under another bias: the address is the loaded one.
        let bias = 0x5555_0000_0000;
        assert_eq!(
            steady_frame(data, bias, bias + symbol(data, "steady") + 4),
            Some((range.start + bias..range.end + bias, shape))
        );
        // That `tail` ends in a tail call is what the case is for.
        let tail = function_at(data, 0, symbol(data, "tail")).unwrap();
        let steady = symbol(data, "steady");
        assert!(
            tail.instructions()
                .unwrap()
                .iter()
                .any(|&(_, _, flow)| flow == Flow::Jump(steady)),
            "cc made no tail call"
        );
        assert_eq!(steady_frame(data, 0, symbol(data, "tail") + 4), None);
        let through = function_at(data, 0, symbol(data, "tail_through")).unwrap();
        assert!(
            through
                .instructions()
                .unwrap()
                .iter()
                .any(|&(_, _, flow)| flow == Flow::IndirectJump),
            "cc made no tail call through the pointer"
        );
        assert_eq!(
            steady_frame(data, 0, symbol(data, "tail_through") + 4),
            None
        );
        assert_eq!(steady_frame(data, 0, symbol(data, "sized") + 4), None);
        // No call: nothing below it to keep apart.
        assert_eq!(steady_frame(data, 0, symbol(data, "use")), None);
    }

    #[test]
    fn main_is_what_the_entry_point_hands_the_start_code() {
        let b = build();
        let obj = object::File::parse(&b.data[..]).unwrap();
        let (main, back) = main_address(&b.data[..]).expect("main");
        assert_eq!(main, symbol(&b.data, "main"));
        // The start code's call returns within the entry code.
        assert!(
            (obj.entry() + 1..obj.entry() + 64).contains(&back),
            "{back:x}"
        );
    }

    #[test]
    fn a_call_is_made_once_only_by_code_that_never_returns_or_comes_back() {
        let b = build();
        let data = &b.data[..];
        assert!(called_once(data, 0, first_call_return(data, "once")));
        let bias = 0x5555_0000_0000;
        assert!(called_once(
            data,
            bias,
            bias + first_call_return(data, "once")
        ));
        assert!(!called_once(data, 0, first_call_return(data, "loop")));
        assert!(!called_once(data, 0, first_call_return(data, "returns")));
        assert!(!called_once(data, 0, first_call_return(data, "leaves")));
        // That `pushes` pushes is what the case is for.
        let pushes = function_at(data, 0, symbol(data, "pushes")).unwrap();
        let depths: std::collections::HashSet<_> = pushes
            .instructions()
            .unwrap()
            .iter()
            .filter(|&&(_, _, flow)| matches!(flow, Flow::Call(_)))
            .map(|&(at, _, _)| pushes.depth_at(at))
            .collect();
        assert!(depths.len() > 1, "cc made all calls at one depth");
        assert!(!called_once(data, 0, first_call_return(data, "pushes")));
        // Not the end of a call.
        assert!(!called_once(data, 0, first_call_return(data, "once") - 1));
    }
}
