//! Heap errors compared with valgrind's: the same bad frees, in the same order, of
//! the same kinds, at the same lines, with the same first-free and allocation lines,
//! and (where valgrind says a block) the same place in the block.

use super::basename;
use super::report::{Frame, HeapError};
use super::valgrind::{VgError, VgFrame};

fn line_of(frame: Option<&Frame>) -> Option<(String, u64)> {
    let f = frame?;
    Some((basename(f.file.as_deref()?).to_string(), f.line?))
}

fn vg_line_of(frames: &[VgFrame]) -> Option<(String, u64)> {
    let f = VgError::caller(frames)?;
    Some((basename(f.file.as_deref()?).to_string(), u64::from(f.line?)))
}

/// memtrace's errors against valgrind's printed errors (one per context).
pub fn compare_errors(ours: &[HeapError], theirs: &[VgError]) -> Result<(), String> {
    let mut problems = Vec::new();
    if ours.len() != theirs.len() {
        problems.push(format!(
            "memtrace has {} errors, valgrind {}: {:?} against {:?}",
            ours.len(),
            theirs.len(),
            ours.iter()
                .map(|e| (&e.kind, line_of(e.stack.first())))
                .collect::<Vec<_>>(),
            theirs
                .iter()
                .map(|e| (&e.kind, vg_line_of(&e.stack)))
                .collect::<Vec<_>>()
        ));
    }
    for (i, (o, v)) in ours.iter().zip(theirs).enumerate() {
        let (vg_first_free, vg_alloc) = if v.kind == "double_free" {
            (vg_line_of(&v.told), vg_line_of(&v.alloc))
        } else {
            (None, vg_line_of(&v.told))
        };
        let pairs = [
            ("kind", Some((o.kind.clone(), 0)), Some((v.kind.clone(), 0))),
            ("stack", line_of(o.stack.first()), vg_line_of(&v.stack)),
            (
                "first free",
                line_of(o.first_free_stack.first()),
                vg_first_free,
            ),
            ("allocation", line_of(o.alloc_stack.first()), vg_alloc),
        ];
        for (what, mine, valgrind) in pairs {
            if mine != valgrind {
                problems.push(format!(
                    "error {i}: {what}: memtrace {mine:?}, valgrind {valgrind:?}"
                ));
            }
        }
        // `Address 0x... is 8 bytes inside a block of size 48 alloc'd`
        let where_ = v.address_line.splitn(3, ' ').nth(2).unwrap_or("");
        if where_.contains("inside a block") && !o.description.starts_with(where_) {
            problems.push(format!(
                "error {i}: memtrace says the address {}, valgrind {where_}",
                o.description
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}
