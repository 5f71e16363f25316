//! A stack as valgrind's suppressions see it: the allocator's own frames first (its
//! replacement functions, named as valgrind 3.19 shows them: `malloc`, `calloc`,
//! `_Znwm`, `free`...), then the program's frames, inlined ones included, each by its
//! mangled name where it has one.

use crate::report::JsonFrame;

/// One frame: what `fun:`, `obj:` and `src:` lines are matched against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SuppFrame<'a> {
    /// The function's name; None where unknown (an allocator frame of a report that
    /// does not name its allocator: any `fun:` or `obj:` line matches it).
    pub fun: Option<&'a str>,
    pub obj: Option<&'a str>,
    pub file: Option<&'a str>,
    pub line: Option<u32>,
    /// Stands for an allocator frame memtrace cannot name.
    pub wildcard: bool,
}

/// The frames valgrind shows for a call of the allocator function `name` (its
/// symbol), innermost first (one way for now; a list, as a name could stand for
/// several). Seen with valgrind 3.19: `valloc` and `aligned_alloc` are its
/// `memalign`, `posix_memalign` is its `memalign` called from its `posix_memalign`,
/// and `reallocarray` its `realloc` (the heap names `realloc(NULL, n)` `malloc`).
pub fn allocator_frames(name: Option<&str>) -> Vec<Vec<&str>> {
    match name {
        None => vec![vec![]],
        Some("realloc" | "reallocarray") => vec![vec!["realloc"]],
        Some("memalign" | "aligned_alloc" | "valloc") => vec![vec!["memalign"]],
        Some("posix_memalign") => vec![vec!["memalign", "posix_memalign"]],
        Some(other) => vec![vec![other]],
    }
}

/// The ways a suppression may see `stack` called through allocator function `name`
/// (None: not known): the allocator's frames, then the stack's.
pub fn views<'a>(name: Option<&'a str>, stack: &'a [JsonFrame]) -> Vec<Vec<SuppFrame<'a>>> {
    allocator_frames(name)
        .into_iter()
        .map(|alloc| {
            let mut v: Vec<SuppFrame> = alloc
                .into_iter()
                .map(|fun| SuppFrame {
                    fun: Some(fun),
                    obj: None,
                    file: None,
                    line: None,
                    wildcard: false,
                })
                .collect();
            if name.is_none() {
                v.push(SuppFrame {
                    fun: None,
                    obj: None,
                    file: None,
                    line: None,
                    wildcard: true,
                });
            }
            v.extend(stack.iter().map(program_frame));
            v
        })
        .collect()
}

/// A frame of the program: valgrind matches a function by its mangled name, an
/// inlined one by its demangled name (the only one DWARF gives).
pub fn program_frame(f: &JsonFrame) -> SuppFrame<'_> {
    let fun = match (&f.mangled, f.inlined) {
        (Some(m), false) => Some(m.as_str()),
        _ => f.function.as_deref(),
    };
    SuppFrame {
        fun,
        obj: f.object.as_deref(),
        file: f.file.as_deref(),
        line: f.line,
        wildcard: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valgrinds_allocator_frames() {
        assert_eq!(allocator_frames(Some("malloc")), [vec!["malloc"]]);
        assert_eq!(allocator_frames(Some("_Znwm")), [vec!["_Znwm"]]);
        assert_eq!(allocator_frames(Some("aligned_alloc")), [vec!["memalign"]]);
        assert_eq!(
            allocator_frames(Some("posix_memalign")),
            [vec!["memalign", "posix_memalign"]]
        );
        assert_eq!(allocator_frames(Some("reallocarray")), [vec!["realloc"]]);
    }

    #[test]
    fn mangled_names_except_inlined_frames() {
        let mut f = JsonFrame {
            function: Some("Widget::make()".into()),
            mangled: Some("_ZN6Widget4makeEv".into()),
            object: Some("/a".into()),
            ..JsonFrame::default()
        };
        assert_eq!(program_frame(&f).fun, Some("_ZN6Widget4makeEv"));
        f.inlined = true;
        assert_eq!(program_frame(&f).fun, Some("Widget::make()"));
        let stack = [f];
        let v = views(Some("_Znam"), &stack);
        assert_eq!(v[0][0].fun, Some("_Znam"));
        assert_eq!(v[0].len(), 2);
        let unknown = views(None, &stack);
        assert!(unknown[0][0].wildcard);
    }
}
