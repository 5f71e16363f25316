//! [`Lines`] over a [`Symbolizer`]: names, lines and sources for the debugger.

use super::Lines;
use crate::symbols::{Frame, Row, Symbolizer};
use std::collections::HashMap;

/// Objects whose code line stepping never stops in: the allocator's own (the C
/// library, libstdc++, libgcc's unwinder) and the loader. A user watching a leak
/// steps through the program; `stepi` still goes anywhere.
pub fn is_system_object(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    [
        "libc.so",
        "libc-2.",
        "ld-linux",
        "libstdc++.so",
        "libgcc_s.so",
        "libm.so",
    ]
    .iter()
    .any(|p| name.starts_with(p))
}

pub struct SymbolLines {
    pub sym: Symbolizer,
    sources: HashMap<String, Option<Vec<String>>>,
}

impl SymbolLines {
    pub fn new(sym: Symbolizer) -> SymbolLines {
        SymbolLines {
            sym,
            sources: HashMap::new(),
        }
    }
}

impl Lines for SymbolLines {
    fn frames_at(&mut self, pc: u64) -> Vec<Frame> {
        self.sym.at_pc(pc)
    }

    fn frames_at_return(&mut self, ret: u64) -> Vec<Frame> {
        self.sym.symbolize(ret)
    }

    fn row(&mut self, pc: u64) -> Option<Row> {
        let frames = self.sym.at_pc(pc);
        let object = frames.last().and_then(|f| f.object.as_deref());
        if object.is_none_or(is_system_object) {
            return None;
        }
        self.sym.row_at(pc)
    }

    fn source(&mut self, file: &str) -> Option<&[String]> {
        self.sources
            .entry(file.to_string())
            .or_insert_with(|| {
                std::fs::read_to_string(file)
                    .ok()
                    .map(|t| t.lines().map(|l| l.replace('\t', "    ")).collect())
            })
            .as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_objects() {
        assert!(is_system_object("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_system_object("/lib64/ld-linux-x86-64.so.2"));
        assert!(!is_system_object("/src/step"));
        assert!(!is_system_object("/src/libcache.so"));
    }
}
