//! What a stopped thread looks like: one [`StopView`] that the TUI draws and batch
//! mode prints, piece by piece, as plain text.

use super::Block;
use crate::symbols::Frame;
use memtrace_arch::Syntax;

/// Instructions shown before and after the current one.
pub const DISAS_BEFORE: usize = 4;
pub const DISAS_AFTER: usize = 10;
/// Source lines shown above and below the current one.
pub const SOURCE_CONTEXT: u32 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StopView {
    pub tid: i32,
    /// Other threads of the program, all stopped while this one is examined.
    pub others_stopped: usize,
    /// Where the selected frame is: `main at step.c:13`, `malloc (libc.so.6)`.
    pub location: String,
    pub frames: Vec<FrameLine>,
    pub selected: usize,
    pub source: Option<SourcePane>,
    pub disas: Vec<DisasLine>,
    pub syntax: Syntax,
    pub regs: Vec<RegLine>,
    pub block: Option<Block>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLine {
    pub address: u64,
    /// `main at step.c:12`, or the function and object without line information.
    pub label: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePane {
    /// The frame whose line this is.
    pub frame: usize,
    pub file: String,
    pub line: u32,
    /// (line number, text) around `line`; empty when the file cannot be read.
    pub lines: Vec<(u32, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisasLine {
    pub address: u64,
    pub bytes: Vec<u8>,
    /// The instruction, with `<function>` after a call or jump target that has a name.
    pub text: String,
    /// The selected frame's instruction (frame 0: the next to run; a caller's frame:
    /// its call).
    pub current: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegLine {
    pub name: &'static str,
    pub value: u64,
    /// Different from before the last step.
    pub changed: bool,
}

/// `main at step.c:12`, `malloc (libc.so.6)`, `0x7f00 (libfoo.so)`: one frame as a label.
pub fn place_label(frames: &[Frame], address: u64) -> String {
    // The outermost entry is the real function; an inlined one shows as `inner in outer`.
    let Some(outer) = frames.last() else {
        return format!("{address:#x}");
    };
    let function = outer
        .function
        .clone()
        .unwrap_or_else(|| format!("{address:#x}"));
    let inner = frames.first().filter(|f| f.inlined);
    let (file, line) = match inner {
        Some(i) => (i.file.as_deref(), i.line),
        None => (outer.file.as_deref(), outer.line),
    };
    let name = match inner.and_then(|i| i.function.as_deref()) {
        Some(i) => format!("{i} in {function}"),
        None => function,
    };
    match (file, line) {
        (Some(f), Some(l)) => format!("{name} at {}:{l}", base_name(f)),
        _ => match &outer.object {
            Some(o) => format!("{name} ({})", base_name(o)),
            None => name,
        },
    }
}

pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl StopView {
    pub fn backtrace_text(&self) -> String {
        let mut out = String::new();
        for (i, f) in self.frames.iter().enumerate() {
            let mark = if i == self.selected { '>' } else { ' ' };
            out.push_str(&format!("{mark}#{i:<2} {:#014x}  {}\n", f.address, f.label));
        }
        out
    }

    pub fn frame_text(&self) -> String {
        match self.frames.get(self.selected) {
            Some(f) => format!("#{} {:#x} {}\n", self.selected, f.address, f.label),
            None => "no frame\n".into(),
        }
    }

    pub fn registers_text(&self) -> String {
        let mut out = String::new();
        for chunk in self.regs.chunks(3) {
            let cells: Vec<String> = chunk
                .iter()
                .map(|r| {
                    let mark = if r.changed { '*' } else { ' ' };
                    format!("{:>6} {:#018x}{mark}", r.name, r.value)
                })
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        out
    }

    pub fn disas_text(&self) -> String {
        self.disas.iter().map(|d| d.text_line() + "\n").collect()
    }

    /// The current instruction alone (after a `stepi`).
    pub fn current_insn_text(&self) -> String {
        self.disas
            .iter()
            .find(|d| d.current)
            .map(|d| d.text_line() + "\n")
            .unwrap_or_default()
    }

    pub fn source_text(&self) -> String {
        let Some(src) = &self.source else {
            return "no source line for this frame\n".into();
        };
        if src.lines.is_empty() {
            return format!("{}:{} (the file cannot be read)\n", src.file, src.line);
        }
        src.lines
            .iter()
            .map(|(n, text)| {
                let mark = if *n == src.line { "=>" } else { "  " };
                format!("{mark}{n:>5}  {text}\n")
            })
            .collect()
    }

    /// The current source line alone, when there is one.
    pub fn current_line_text(&self) -> String {
        let Some(src) = &self.source else {
            return String::new();
        };
        src.lines
            .iter()
            .find(|(n, _)| *n == src.line)
            .map(|(n, t)| format!("{n:>7}  {t}\n"))
            .unwrap_or_default()
    }

    pub fn block_text(&self) -> String {
        match &self.block {
            None => "no allocation: the program was not stopped at one\n".into(),
            Some(b) => match b.ptr {
                Some(p) => format!("block: {}({}) returned {p:#x}\n", b.function, b.size),
                None => format!(
                    "block: {}({}) has not returned yet (finish runs it to its return)\n",
                    b.function, b.size
                ),
            },
        }
    }

    pub fn thread_text(&self) -> String {
        format!(
            "thread {} stopped at {}; {} other thread(s) of the program stopped\n",
            self.tid, self.location, self.others_stopped
        )
    }
}

impl DisasLine {
    pub fn bytes_hex(&self) -> String {
        self.bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// `=> 0x7f..: 41 54                push r12`
    pub fn text_line(&self) -> String {
        let mark = if self.current { "=>" } else { "  " };
        format!(
            "{mark} {:#014x}:  {:<24} {}",
            self.address,
            self.bytes_hex(),
            self.text
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: Option<&str>, line: Option<u32>) -> Frame {
        Frame {
            address: 0x10,
            function: Some(function.into()),
            file: file.map(String::from),
            line,
            object: Some("/lib/libc.so.6".into()),
            ..Frame::default()
        }
    }

    #[test]
    fn labels() {
        assert_eq!(
            place_label(&[frame("main", Some("/src/step.c"), Some(12))], 0x10),
            "main at step.c:12"
        );
        assert_eq!(
            place_label(&[frame("malloc", None, None)], 0x10),
            "malloc (libc.so.6)"
        );
        let mut inner = frame("twice", Some("/src/util.h"), Some(3));
        inner.inlined = true;
        assert_eq!(
            place_label(&[inner, frame("main", Some("/src/step.c"), Some(9))], 0x10),
            "twice in main at util.h:3"
        );
        assert_eq!(place_label(&[], 0x10), "0x10");
    }

    #[test]
    fn text_pieces() {
        let d = DisasLine {
            address: 0x1000,
            bytes: vec![0x41, 0x54],
            text: "push r12".into(),
            current: true,
        };
        assert!(d.text_line().starts_with("=> 0x000000001000:  41 54"));
        assert!(d.text_line().ends_with("push r12"));
    }
}
