//! Reading suppression files in valgrind's format:
//!
//! ```text
//! {
//!    libc's start-up buffers          <- a name
//!    Memcheck:Leak                    <- tool(s):kind
//!    match-leak-kinds: reachable      <- Leak only, optional
//!    fun:malloc                       <- frames, innermost first: fun:, obj:, src:, ...
//!    ...
//!    obj:*/libc.so.6
//! }
//! ```
//!
//! Blank lines and `#` comments are skipped. Entries for other tools (Helgrind, drd)
//! and memcheck kinds memtrace never reports (`Cond`, `Addr8`, `Param`...) are read
//! and kept, never matching, so that files written for valgrind load unchanged.

use std::path::{Path, PathBuf};

/// valgrind's limit on a suppression's frames.
pub const MAX_FRAMES: usize = 24;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    pub name: String,
    pub kind: Kind,
    pub frames: Vec<FramePattern>,
    /// `FILE:LINE` of its `{`, for messages.
    pub origin: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Memcheck:Leak`, with the leak kinds of `match-leak-kinds:` (None: all).
    Leak(Option<Vec<LeakKind>>),
    /// `Memcheck:Free`: an invalid, double or mismatched free.
    Free,
    /// Anything else (another tool, another memcheck error): never matches.
    Other,
}

/// valgrind's leak kinds, as `match-leak-kinds:` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakKind {
    Definite,
    Indirect,
    Possible,
    Reachable,
}

impl LeakKind {
    pub const ALL: [LeakKind; 4] = [
        LeakKind::Definite,
        LeakKind::Indirect,
        LeakKind::Possible,
        LeakKind::Reachable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LeakKind::Definite => "definite",
            LeakKind::Indirect => "indirect",
            LeakKind::Possible => "possible",
            LeakKind::Reachable => "reachable",
        }
    }

    /// A report's kind as a suppression sees it: `unclassified` (no scan was made)
    /// counts as `definite`, as it does for `--error-exitcode`.
    pub fn of_report(kind: &str) -> Option<LeakKind> {
        match kind {
            "definite" | "unclassified" => Some(LeakKind::Definite),
            "indirect" => Some(LeakKind::Indirect),
            "possible" => Some(LeakKind::Possible),
            "reachable" => Some(LeakKind::Reachable),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramePattern {
    /// `fun:PATTERN`: the function's (mangled) name.
    Fun(String),
    /// `obj:PATTERN`: the object's path.
    Obj(String),
    /// `src:FILE` or `src:FILE:LINE`: the source file's base name, and line.
    Src(String, Option<u32>),
    /// `...`: any number of frames, none included.
    Any,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("cannot read suppressions file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
}

/// Reads every suppression of the file at `path`.
pub fn read(path: &Path) -> Result<Vec<Suppression>, ParseError> {
    let text = std::fs::read_to_string(path).map_err(|source| ParseError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string())
}

/// Parses the text of a suppressions file; `file` names it in messages.
pub fn parse(text: &str, file: &str) -> Result<Vec<Suppression>, ParseError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    let error = |line: usize, message: String| ParseError::Syntax {
        origin: format!("{file}:{line}"),
        message,
    };
    let mut out = Vec::new();
    while let Some((open_at, open)) = lines.next() {
        if open != "{" {
            return Err(error(open_at, format!("expected '{{', found {open:?}")));
        }
        let eof = || error(open_at, "this suppression has no closing '}'".into());
        let (_, name) = lines.next().ok_or_else(eof)?;
        if name == "}" || name == "{" {
            return Err(error(open_at, "a suppression needs a name".into()));
        }
        let (kind_at, tool_kind) = lines.next().ok_or_else(eof)?;
        let (tools, kind_name) = tool_kind.split_once(':').ok_or_else(|| {
            error(
                kind_at,
                format!("expected TOOL:KIND (Memcheck:Leak), found {tool_kind:?}"),
            )
        })?;
        let memcheck = tools.split(',').any(|t| t.trim() == "Memcheck");
        let mut kind = match (memcheck, kind_name.trim()) {
            (true, "Leak") => Kind::Leak(None),
            (true, "Free") => Kind::Free,
            _ => Kind::Other,
        };
        // Memcheck's extra line: the parameter of a Param error, the kinds of a Leak.
        if memcheck && kind_name.trim() == "Param" {
            lines.next().ok_or_else(eof)?;
        }
        if let Some(&(at, l)) = lines.peek() {
            if let Some(list) = l.strip_prefix("match-leak-kinds:") {
                lines.next();
                let kinds = leak_kinds(list).map_err(|m| error(at, m))?;
                if let Kind::Leak(k) = &mut kind {
                    *k = Some(kinds);
                }
            }
        }
        let mut frames = Vec::new();
        loop {
            let (at, l) = lines.next().ok_or_else(eof)?;
            if l == "}" {
                break;
            }
            if frames.len() == MAX_FRAMES {
                return Err(error(at, format!("more than {MAX_FRAMES} frames")));
            }
            frames.push(frame(l).map_err(|m| error(at, m))?);
        }
        out.push(Suppression {
            name: name.to_string(),
            kind,
            frames,
            origin: format!("{file}:{open_at}"),
        });
    }
    Ok(out)
}

/// `definite,possible`, `all`, `none`: the list of `match-leak-kinds:` and of
/// `--errors-for-leak-kinds`.
pub fn leak_kinds(list: &str) -> Result<Vec<LeakKind>, String> {
    match list.trim() {
        "all" => return Ok(LeakKind::ALL.to_vec()),
        "none" => return Ok(Vec::new()),
        _ => {}
    }
    list.split(',')
        .map(|k| {
            LeakKind::ALL
                .into_iter()
                .find(|l| l.name() == k.trim())
                .ok_or_else(|| {
                    format!(
                        "unknown leak kind {:?} (definite, indirect, possible, reachable, all, none)",
                        k.trim()
                    )
                })
        })
        .collect()
}

fn frame(line: &str) -> Result<FramePattern, String> {
    if line == "..." {
        return Ok(FramePattern::Any);
    }
    if let Some(p) = line.strip_prefix("fun:") {
        return Ok(FramePattern::Fun(p.to_string()));
    }
    if let Some(p) = line.strip_prefix("obj:") {
        return Ok(FramePattern::Obj(p.to_string()));
    }
    if let Some(p) = line.strip_prefix("src:") {
        return Ok(match p.rsplit_once(':') {
            Some((file, n)) if n.parse::<u32>().is_ok() => {
                FramePattern::Src(file.to_string(), n.parse().ok())
            }
            _ => FramePattern::Src(p.to_string(), None),
        });
    }
    Err(format!(
        "expected a frame (fun:, obj:, src: or ...), found {line:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_with_kinds_frames_and_comments() {
        let text = "# libc\n\n{\n   startup\n   Memcheck:Leak\n   match-leak-kinds: possible,reachable\n   fun:malloc\n   ...\n   obj:*/libc.so*\n}\n{\n  bad free\n  Memcheck,Addrcheck:Free\n  fun:free\n  src:leak.c:12\n}\n";
        let s = parse(text, "t.supp").expect("parse");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "startup");
        assert_eq!(
            s[0].kind,
            Kind::Leak(Some(vec![LeakKind::Possible, LeakKind::Reachable]))
        );
        assert_eq!(
            s[0].frames,
            [
                FramePattern::Fun("malloc".into()),
                FramePattern::Any,
                FramePattern::Obj("*/libc.so*".into())
            ]
        );
        assert_eq!(s[0].origin, "t.supp:3");
        assert_eq!(s[1].kind, Kind::Free);
        assert_eq!(s[1].frames[1], FramePattern::Src("leak.c".into(), Some(12)));
    }

    #[test]
    fn other_tools_and_kinds_are_kept_but_inert() {
        let text = "{\n a\n Helgrind:Race\n fun:mempcpy\n}\n{\n b\n Memcheck:Param\n write(buf)\n fun:write\n}\n{\n c\n Memcheck:Leak\n match-leak-kinds: all\n}\n";
        let s = parse(text, "t").expect("parse");
        assert_eq!(s[0].kind, Kind::Other);
        assert_eq!(s[1].kind, Kind::Other);
        assert_eq!(s[1].frames, [FramePattern::Fun("write".into())]);
        assert_eq!(s[2].kind, Kind::Leak(Some(LeakKind::ALL.to_vec())));
    }

    #[test]
    fn mistakes_are_reported_with_their_line() {
        let err = |t: &str| parse(t, "x.supp").expect_err(t).to_string();
        assert_eq!(
            err("{\n n\n Memcheck:Leak\n fun:a\n"),
            "x.supp:1: this suppression has no closing '}'"
        );
        assert_eq!(err("fun:a\n"), "x.supp:1: expected '{', found \"fun:a\"");
        assert!(err("{\n n\n Memcheck:Leak\n fn:a\n}\n").starts_with("x.supp:4: expected a frame"));
        assert!(err("{\n n\n Memcheck:Leak\n match-leak-kinds: lost\n}\n")
            .starts_with("x.supp:4: unknown leak kind \"lost\""));
        assert!(err("{\n n\n Leak\n}\n").starts_with("x.supp:3: expected TOOL:KIND"));
        let many: String = (0..25).map(|i| format!(" fun:f{i}\n")).collect();
        assert!(err(&format!("{{\n n\n Memcheck:Leak\n{many}}}\n")).contains("more than 24"));
    }
}
