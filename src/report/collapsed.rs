//! Folded stacks (`main;make_leak;fill 1064`): one line per allocation stack, root
//! first, with its live bytes. What `flamegraph.pl`, inferno, speedscope and most
//! profiling tools read; the flamegraph is drawn from the same lines.

use super::{JsonFrame, Report};
use std::collections::BTreeMap;

/// The frame that stands for a stack memtrace did not record.
pub const NOT_RECORDED: &str = "[stack not recorded]";

/// One line per distinct stack of live blocks (kinds summed), in the order of the
/// stacks' text, with its live bytes.
pub fn live_bytes(report: &Report) -> String {
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    for leak in &report.leaks {
        *folded.entry(fold(&leak.stack)).or_default() += leak.bytes;
    }
    let mut out = String::new();
    for (stack, bytes) in folded {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&bytes.to_string());
        out.push('\n');
    }
    out
}

/// `main;make_leak;fill`: the frames root first, each by its label.
pub fn fold(stack: &[JsonFrame]) -> String {
    if stack.is_empty() {
        return NOT_RECORDED.to_string();
    }
    let labels: Vec<String> = stack.iter().rev().map(label).collect();
    labels.join(";")
}

/// A frame's name in a folded stack: the function; else `??? (in libx.so)`; else its
/// address. `;` separates frames, so a name's own becomes `:`.
pub fn label(f: &JsonFrame) -> String {
    let name = match (&f.function, &f.object) {
        (Some(func), _) => func.clone(),
        (None, Some(obj)) => format!("??? (in {})", obj.rsplit('/').next().unwrap_or(obj)),
        (None, None) => f.address.clone(),
    };
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::sample;

    #[test]
    fn one_line_per_stack_root_first() {
        let text = live_bytes(&sample());
        assert_eq!(
            text,
            "0x1234;??? (in libx.so) 130\n\
             __libc_start_call_main;main;make_leak;fill 1000\n\
             main;Widget::make() 48\n"
        );
    }

    #[test]
    fn kinds_of_one_stack_add_up_and_empty_stacks_are_named() {
        let mut r = sample();
        let mut reachable_part = r.leaks[0].clone();
        reachable_part.kind = "reachable".into();
        reachable_part.bytes = 24;
        r.leaks.push(reachable_part);
        let mut unrecorded = r.leaks[1].clone();
        unrecorded.stack.clear();
        r.leaks.push(unrecorded);
        let text = live_bytes(&r);
        assert!(
            text.contains("\n__libc_start_call_main;main;make_leak;fill 1024\n"),
            "{text}"
        );
        assert!(text.contains("[stack not recorded] 130\n"), "{text}");
    }

    #[test]
    fn separators_in_names_do_not_split_frames() {
        let f = JsonFrame {
            function: Some("f<[u8; 8]>".into()),
            ..JsonFrame::default()
        };
        assert_eq!(label(&f), "f<[u8: 8]>");
    }
}
