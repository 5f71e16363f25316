//! `--gen-suppressions`: a suppression for a finding, ready to paste into a file,
//! written as valgrind writes them (so valgrind reads them too).

use super::frames::{self, SuppFrame};
use super::parse::{LeakKind, MAX_FRAMES};
use crate::report::{HeapError, JsonFrame, Leak};

/// valgrind's placeholder for the name the user gives.
pub const NAME: &str = "insert_a_suppression_name_here";

/// A generated suppression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generated {
    /// `Memcheck:Leak` or `Memcheck:Free`.
    pub kind: &'static str,
    /// `match-leak-kinds: definite`, for a leak.
    pub aux: Option<String>,
    /// `fun:malloc`, `obj:/lib/libx.so`..., innermost first.
    pub frames: Vec<String>,
}

impl Generated {
    /// The entry as a suppressions file holds it.
    pub fn text(&self) -> String {
        let mut s = format!("{{\n   <{NAME}>\n   {}\n", self.kind);
        for line in self.aux.iter().chain(&self.frames) {
            s.push_str("   ");
            s.push_str(line);
            s.push('\n');
        }
        s.push_str("}\n");
        s
    }
}

/// The suppression that hides exactly this leak's stack and kind.
pub fn for_leak(leak: &Leak) -> Generated {
    let kind = LeakKind::of_report(&leak.kind).unwrap_or(LeakKind::Definite);
    Generated {
        kind: "Memcheck:Leak",
        aux: Some(format!("match-leak-kinds: {}", kind.name())),
        frames: frame_lines(leak.allocator.as_deref(), &leak.stack),
    }
}

/// The suppression that hides this heap error.
pub fn for_error(e: &HeapError) -> Generated {
    Generated {
        kind: "Memcheck:Free",
        aux: None,
        frames: frame_lines(e.deallocator.as_deref(), &e.stack),
    }
}

fn frame_lines(allocator: Option<&str>, stack: &[JsonFrame]) -> Vec<String> {
    let view: Vec<SuppFrame> = frames::views(allocator, stack)
        .into_iter()
        .next()
        .unwrap_or_default();
    // valgrind's stacks stop at main by default (--show-below-main=no): frames below
    // it would make a suppression that valgrind never matches.
    let below_main = view
        .iter()
        .position(|f| !f.wildcard && f.fun == Some("main"))
        .map_or(view.len(), |i| i + 1);
    view[..below_main]
        .iter()
        .take(MAX_FRAMES)
        // valgrind's choice: the function where known, else the object, else any.
        .map(|f| match (f.wildcard, f.fun, f.obj) {
            (false, Some(fun), _) => format!("fun:{fun}"),
            (false, None, Some(obj)) => format!("obj:{obj}"),
            _ => "obj:*".to_string(),
        })
        .collect()
}
