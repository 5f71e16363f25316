//! `--gen-suppressions`: a suppression for a finding, ready to paste into a file,
//! written as valgrind writes them (so valgrind reads them too).

use super::frames::{self, SuppFrame};
use super::parse::{LeakKind, MAX_FRAMES};
use crate::report::{HeapError, Leak};

const NAME: &str = "<insert_a_suppression_name_here>";

/// The suppression that hides exactly this leak's stack and kind.
pub fn for_leak(leak: &Leak) -> String {
    let kind = LeakKind::of_report(&leak.kind).unwrap_or(LeakKind::Definite);
    let view = first_view(leak.allocator.as_deref(), &leak.stack);
    entry(
        "Memcheck:Leak",
        Some(&format!("match-leak-kinds: {}", kind.name())),
        &view,
    )
}

/// The suppression that hides this heap error.
pub fn for_error(e: &HeapError) -> String {
    let view = first_view(e.deallocator.as_deref(), &e.stack);
    entry("Memcheck:Free", None, &view)
}

fn first_view<'a>(
    name: Option<&'a str>,
    stack: &'a [crate::report::JsonFrame],
) -> Vec<SuppFrame<'a>> {
    frames::views(name, stack)
        .into_iter()
        .next()
        .unwrap_or_default()
}

fn entry(kind: &str, extra: Option<&str>, view: &[SuppFrame]) -> String {
    let mut s = format!("{{\n   {NAME}\n   {kind}\n");
    if let Some(x) = extra {
        s.push_str(&format!("   {x}\n"));
    }
    for f in view.iter().take(MAX_FRAMES) {
        // valgrind's choice: the function where known, else the object, else any.
        let line = match (f.wildcard, f.fun, f.obj) {
            (true, _, _) => "obj:*".to_string(),
            (false, Some(fun), _) => format!("fun:{fun}"),
            (false, None, Some(obj)) => format!("obj:{obj}"),
            (false, None, None) => "obj:*".to_string(),
        };
        s.push_str(&format!("   {line}\n"));
    }
    s.push_str("}\n");
    s
}
