//! Site breakpoints: which allocations stop the program.
//!
//! A breakpoint is checked at a hooked allocator's entry, where the tracer has just
//! captured the stack, so the check must cost next to nothing: a stack id compare, or
//! a look-up of the allocator's return address in address ranges that were computed
//! once, when the objects were loaded (from the DWARF line table for `FILE:LINE`,
//! from the symbol tables for `FUNCTION`). Nothing is symbolized per call.

use crate::event::StackId;

/// What the user asked to stop at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BreakSpec {
    /// An allocation called from this source line (`leak.c:12`; a path suffix).
    Line { file: String, line: u32 },
    /// An allocation called from this function (its symbol name).
    Function(String),
    /// An allocation with exactly this stack (the TUI's `b` on a site).
    Stack(StackId),
    /// An allocation called from this return address (`B` on a site whose top frame
    /// has no line yet).
    ReturnAddress(u64),
}

impl BreakSpec {
    /// `FILE:LINE` or `FUNCTION`, as `--break-at` takes it.
    pub fn parse(s: &str) -> Result<BreakSpec, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty --break-at".into());
        }
        if let Some((file, line)) = s.rsplit_once(':') {
            let line = line
                .parse()
                .map_err(|_| format!("--break-at {s:?}: {line:?} is not a line number"))?;
            return Ok(BreakSpec::Line {
                file: file.to_string(),
                line,
            });
        }
        Ok(BreakSpec::Function(s.to_string()))
    }

    pub fn label(&self) -> String {
        match self {
            BreakSpec::Line { file, line } => format!("{file}:{line}"),
            BreakSpec::Function(f) => f.clone(),
            BreakSpec::Stack(id) => format!("stack #{}", id.0),
            BreakSpec::ReturnAddress(a) => format!("return address {a:#x}"),
        }
    }
}

/// One armed breakpoint and, for source and function specs, the code ranges its
/// caller's call instruction must be in.
#[derive(Clone, Debug)]
pub struct Armed {
    pub spec: BreakSpec,
    /// `[start, end)` runtime code ranges.
    pub ranges: Vec<(u64, u64)>,
}

impl Armed {
    pub fn new(spec: BreakSpec) -> Armed {
        Armed {
            spec,
            ranges: Vec::new(),
        }
    }

    /// Whether an allocation with stack `stack`, called from `ret` (its return
    /// address), stops here. The call is the instruction just before `ret`.
    pub fn matches(&self, stack: StackId, ret: u64) -> bool {
        match self.spec {
            BreakSpec::Stack(s) => s == stack,
            BreakSpec::ReturnAddress(a) => a == ret,
            BreakSpec::Line { .. } | BreakSpec::Function(_) => {
                let call = ret.wrapping_sub(1);
                self.ranges.iter().any(|&(s, e)| s <= call && call < e)
            }
        }
    }

    /// Needs ranges computed from the loaded objects.
    pub fn needs_ranges(&self) -> bool {
        matches!(self.spec, BreakSpec::Line { .. } | BreakSpec::Function(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_functions() {
        assert_eq!(
            BreakSpec::parse("leak.c:12"),
            Ok(BreakSpec::Line {
                file: "leak.c".into(),
                line: 12
            })
        );
        assert_eq!(
            BreakSpec::parse("make_leak"),
            Ok(BreakSpec::Function("make_leak".into()))
        );
        assert!(BreakSpec::parse("leak.c:x").is_err());
        assert!(BreakSpec::parse(" ").is_err());
    }

    #[test]
    fn matches_by_stack_address_or_range() {
        let mut a = Armed::new(BreakSpec::parse("leak.c:12").unwrap());
        a.ranges = vec![(0x1000, 0x1010)];
        // The call ends at the return address: its last byte is inside.
        assert!(a.matches(StackId(0), 0x1010));
        assert!(!a.matches(StackId(0), 0x1011));
        assert!(!a.matches(StackId(0), 0x1000));
        let s = Armed::new(BreakSpec::Stack(StackId(3)));
        assert!(s.matches(StackId(3), 0) && !s.matches(StackId(4), 0));
        let r = Armed::new(BreakSpec::ReturnAddress(0x55));
        assert!(r.matches(StackId(9), 0x55));
    }
}
