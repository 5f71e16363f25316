//! Suppressions in valgrind's format: known findings (a leak in a system library,
//! the C library's start-up buffers) left out of the report and of `--error-exitcode`,
//! and counted by name. Files written for valgrind work unchanged: a stack is seen as
//! valgrind's are, the allocator's own frame first ([`frames`]).
//!
//! `Memcheck:Leak` matches leaks (of the kinds of `match-leak-kinds:`, all without
//! it; an `unclassified` leak counts as `definite`), `Memcheck:Free` matches heap
//! errors (double, invalid and mismatched frees). Frames match from the innermost:
//! `fun:` the function's mangled name, `obj:` the object's path, `src:` the source
//! file's base name (and line), with `*` and `?` wildcards; `...` stands for any
//! number of frames. A suppression with fewer frames than the stack matches its top.

pub mod apply;
pub mod frames;
pub mod generate;
pub mod glob;
pub mod parse;

pub use parse::{FramePattern, Kind, LeakKind, ParseError, Suppression};

use crate::report::{HeapError, Leak};
use frames::SuppFrame;
use std::path::PathBuf;

/// Every suppression of the files given, in their order.
#[derive(Clone, Debug, Default)]
pub struct Suppressions {
    pub list: Vec<Suppression>,
}

impl Suppressions {
    /// Reads the files in order (`--suppressions`, several allowed).
    pub fn load(paths: &[PathBuf]) -> Result<Self, ParseError> {
        let mut list = Vec::new();
        for p in paths {
            list.extend(parse::read(p)?);
        }
        Ok(Suppressions { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The first suppression that hides `leak`.
    pub fn for_leak(&self, leak: &Leak) -> Option<&Suppression> {
        let kind = LeakKind::of_report(&leak.kind)?;
        let views = frames::views(leak.allocator.as_deref(), &leak.stack);
        self.list.iter().find(|s| match &s.kind {
            Kind::Leak(kinds) => {
                kinds.as_ref().is_none_or(|k| k.contains(&kind))
                    && views.iter().any(|v| stack_matches(&s.frames, v))
            }
            _ => false,
        })
    }

    /// The first suppression that hides heap error `e`.
    pub fn for_error(&self, e: &HeapError) -> Option<&Suppression> {
        let views = frames::views(e.deallocator.as_deref(), &e.stack);
        self.list
            .iter()
            .find(|s| s.kind == Kind::Free && views.iter().any(|v| stack_matches(&s.frames, v)))
    }
}

/// Whether `patterns` match the top of `stack` (`...` stands for any frames).
pub fn stack_matches(patterns: &[FramePattern], stack: &[SuppFrame]) -> bool {
    // done[i][j]: patterns[i..] against stack[j..] is known not to match. Without
    // it, several `...` would make this exponential.
    let mut failed = vec![vec![false; stack.len() + 1]; patterns.len() + 1];
    fn go(
        p: &[FramePattern],
        s: &[SuppFrame],
        i: usize,
        j: usize,
        failed: &mut Vec<Vec<bool>>,
    ) -> bool {
        if i == p.len() {
            return true;
        }
        if failed[i][j] {
            return false;
        }
        let ok = match &p[i] {
            FramePattern::Any => {
                go(p, s, i + 1, j, failed) || (j < s.len() && go(p, s, i, j + 1, failed))
            }
            one => j < s.len() && frame_matches(one, &s[j]) && go(p, s, i + 1, j + 1, failed),
        };
        if !ok {
            failed[i][j] = true;
        }
        ok
    }
    go(patterns, stack, 0, 0, &mut failed)
}

fn frame_matches(p: &FramePattern, f: &SuppFrame) -> bool {
    if f.wildcard {
        return !matches!(p, FramePattern::Src(..));
    }
    match p {
        // valgrind names a frame it cannot name `???`.
        FramePattern::Fun(pat) => name_matches(pat, f.fun.unwrap_or("???")),
        FramePattern::Obj(pat) => glob::matches(pat, f.obj.unwrap_or("???")),
        FramePattern::Src(file, line) => {
            let base = f.file.map(|p| p.rsplit('/').next().unwrap_or(p));
            base.is_some_and(|b| glob::matches(file, b)) && line.is_none_or(|l| f.line == Some(l))
        }
        FramePattern::Any => true,
    }
}

/// A `fun:` pattern against a name. A pattern with a symbol version
/// (`dlopen@@GLIBC_2.2.5`, as valgrind names some libc symbols) also matches the
/// plain name.
fn name_matches(pattern: &str, name: &str) -> bool {
    if glob::matches(pattern, name) {
        return true;
    }
    match pattern.split_once('@') {
        Some((plain, _)) if !name.contains('@') => glob::matches(plain, name),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
