//! The DWARF and symbol table of one object file, read as look-ups need them.
//!
//! addr2line's `Context` parses the abbreviations and first entry of every unit when it
//! is made. The C library's debug file has about 2,000 units, and that parse was most
//! of the 70 ms a report waited for its symbols, on every run: the stacks of nearly
//! every program go through `__libc_start_call_main`.
//!
//! Here, when `.debug_aranges` names every compilation unit, the unit holding an
//! address is found there, and gets a `Context` of its own, made on the first look-up
//! in it from a `.debug_info` cut down to that unit. The whole-file `Context` is made
//! only for what needs every unit (the rows of a source line, for `--break-at`), or
//! when the aranges miss a unit, or a unit refers to entries outside itself
//! (`DW_FORM_ref_addr`), which a cut-down `.debug_info` would misplace. Location lists
//! are never loaded: nothing here evaluates a variable's location.

use addr2line::{Context, Loader, LookupResult};
use gimli::{EndianArcSlice, Reader, RunTimeEndian, Section, SectionId};
use object::{Object, ObjectSection, SymbolMap, SymbolMapEntry};
use std::cell::{OnceCell, RefCell};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

type R = EndianArcSlice<RunTimeEndian>;

/// One frame at an address as the DWARF tells it: the function's name as written
/// there (not demangled), and the source position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DwarfFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// A symbol table entry.
#[derive(Clone, Debug)]
struct Sym {
    address: u64,
    size: u64,
    name: Box<str>,
}

impl SymbolMapEntry for Sym {
    fn address(&self) -> u64 {
        self.address
    }
    fn size(&self) -> u64 {
        self.size
    }
}

pub struct DebugInfo {
    /// The DWARF sections, each shared by every context made of them.
    sections: gimli::DwarfSections<R>,
    /// The address ranges `.debug_aranges` gives each unit; None when they do not
    /// cover every compilation unit.
    index: Option<Index>,
    /// The context of each unit looked up so far (None: the unit cannot have one).
    units: RefCell<HashMap<usize, Option<Box<Context<R>>>>>,
    /// The whole-file context, made on first need.
    whole: OnceCell<Option<Box<Context<R>>>>,
    symbols: SymbolMap<Sym>,
    /// Where the object was read from, and addr2line's loader of it, made for a
    /// unit whose DWARF is in a split DWARF file (which the loader finds and reads).
    path: PathBuf,
    split: OnceCell<Option<Box<Loader>>>,
}

impl DebugInfo {
    /// Reads the object at `path`: its symbol table now, its DWARF sections too
    /// (decompressed), its units on look-up. None when it is not an object.
    pub fn open(path: &Path) -> Option<DebugInfo> {
        Self::from_data(&std::fs::read(path).ok()?, path)
    }

    /// As [`DebugInfo::open`], from the bytes of the object at `path` (it copies what
    /// it keeps of them).
    pub fn from_data(data: &[u8], path: &Path) -> Option<DebugInfo> {
        let obj = object::File::parse(data).ok()?;
        let endian = if obj.is_little_endian() {
            RunTimeEndian::Little
        } else {
            RunTimeEndian::Big
        };
        let symbols = SymbolMap::new(
            obj.symbol_map()
                .symbols()
                .iter()
                .map(|s| Sym {
                    address: s.address(),
                    size: s.size(),
                    name: s.name().into(),
                })
                .collect(),
        );
        let empty: Arc<[u8]> = Arc::from(&[][..]);
        let load = |id: SectionId| -> Result<R, gimli::Error> {
            if matches!(id, SectionId::DebugLoc | SectionId::DebugLocLists) {
                return Ok(R::new(empty.clone(), endian));
            }
            let data = obj
                .section_by_name(id.name())
                .and_then(|s| s.uncompressed_data().ok())
                .map(|d| Arc::from(&*d))
                .unwrap_or_else(|| empty.clone());
            Ok(R::new(data, endian))
        };
        let sections = gimli::DwarfSections::load(load).ok()?;
        let index = aranges_index(&dwarf_of(&sections));
        Some(DebugInfo {
            sections,
            index,
            units: RefCell::default(),
            whole: OnceCell::new(),
            symbols,
            path: path.to_path_buf(),
            split: OnceCell::new(),
        })
    }

    /// The symbol containing `probe` (a file address): its name and start.
    pub fn symbol(&self, probe: u64) -> Option<(&str, u64)> {
        self.symbols
            .containing(probe)
            .map(|s| (&*s.name, s.address))
    }

    /// Every frame at `probe`, innermost first (inlined calls, then the function).
    pub fn frames(&self, probe: u64) -> Vec<DwarfFrame> {
        let whole = || {
            self.whole()
                .map_or(Some(Vec::new()), |c| frames_in(c, probe))
        };
        let found = match &self.index {
            None => whole(),
            Some(index) => {
                let mut found = Some(Vec::new());
                for unit in units_holding(index, probe) {
                    let mut units = self.units.borrow_mut();
                    let ctx = units
                        .entry(unit)
                        .or_insert_with(|| unit_context(&self.sections, unit));
                    found = match ctx {
                        Some(c) => frames_in(c, probe),
                        // A unit that refers outside itself: the whole file's context.
                        None => {
                            drop(units);
                            whole()
                        }
                    };
                    if found.as_ref().is_none_or(|f| !f.is_empty()) {
                        break;
                    }
                }
                found
            }
        };
        // None: the unit's functions are in a split DWARF file.
        found.unwrap_or_else(|| {
            self.split
                .get_or_init(|| Loader::new(&self.path).ok().map(Box::new))
                .as_ref()
                .and_then(|l| l.find_frames(probe).ok())
                .map(collect)
                .unwrap_or_default()
        })
    }

    /// The line-table rows that overlap `[low, high)`: start, length, file, line.
    /// One address's row is found in its unit; a wider range reads every unit.
    pub fn rows(&self, low: u64, high: u64) -> Vec<(u64, u64, Option<String>, Option<u32>)> {
        let whole = || {
            self.whole()
                .map(|c| rows_in(c, low, high))
                .unwrap_or_default()
        };
        let Some(index) = self.index.as_ref().filter(|_| high.wrapping_sub(low) == 1) else {
            return whole();
        };
        for unit in units_holding(index, low) {
            let mut units = self.units.borrow_mut();
            let ctx = units
                .entry(unit)
                .or_insert_with(|| unit_context(&self.sections, unit));
            let rows = match ctx {
                Some(c) => rows_in(c, low, high),
                None => {
                    drop(units);
                    whole()
                }
            };
            if !rows.is_empty() {
                return rows;
            }
        }
        Vec::new()
    }

    fn whole(&self) -> Option<&Context<R>> {
        self.whole
            .get_or_init(|| {
                let mut dwarf = dwarf_of(&self.sections);
                dwarf.populate_abbreviations_cache(gimli::AbbreviationsCacheStrategy::Duplicates);
                Context::from_dwarf(dwarf).ok().map(Box::new)
            })
            .as_deref()
    }
}

/// A `Dwarf` of `sections` (which it shares).
fn dwarf_of(sections: &gimli::DwarfSections<R>) -> gimli::Dwarf<R> {
    sections.borrow(|s| s.clone())
}

/// The frames addr2line finds at `probe` in `ctx`; None when they are in a split
/// DWARF file, which addr2line's loader reads (and this context cannot).
fn frames_in(ctx: &Context<R>, probe: u64) -> Option<Vec<DwarfFrame>> {
    match ctx.find_frames(probe) {
        LookupResult::Output(Ok(iter)) => Some(collect(iter)),
        LookupResult::Output(Err(_)) => Some(Vec::new()),
        LookupResult::Load { .. } => None,
    }
}

fn collect<T: Reader>(mut iter: addr2line::FrameIter<'_, T>) -> Vec<DwarfFrame> {
    let mut out = Vec::new();
    while let Ok(Some(f)) = iter.next() {
        let function = f
            .function
            .as_ref()
            .and_then(|n| n.raw_name().ok())
            .map(|n| n.into_owned());
        let (file, line) = match f.location {
            Some(l) => (l.file.map(String::from), l.line),
            None => (None, None),
        };
        out.push(DwarfFrame {
            function,
            file,
            line,
        });
    }
    out
}

/// An object's DWARF and symbols: read as look-ups need them, or all at once by
/// addr2line's loader when a supplementary (dwz) file holds part of them.
pub enum Debug {
    Lazy(Box<DebugInfo>),
    Whole(Box<Loader>),
}

impl Debug {
    /// Reads the object at `path` with the supplementary (dwz) file `sup` its DWARF
    /// refers into: parsed whole, by addr2line.
    pub fn open_with_sup(path: &Path, sup: &Path) -> Option<Debug> {
        Loader::new_with_sup(path, Some(sup))
            .ok()
            .map(|l| Debug::Whole(Box::new(l)))
    }

    /// The object at `path`, without a supplementary file, from its bytes.
    pub fn from_data(data: &[u8], path: &Path) -> Option<Debug> {
        DebugInfo::from_data(data, path).map(|d| Debug::Lazy(Box::new(d)))
    }

    /// Every frame at `probe` (a file address), innermost first.
    pub fn frames(&self, probe: u64) -> Vec<DwarfFrame> {
        match self {
            Debug::Lazy(d) => d.frames(probe),
            Debug::Whole(l) => l.find_frames(probe).map(collect).unwrap_or_default(),
        }
    }

    /// The symbol containing `probe`: its name as the symbol table spells it, and its
    /// start.
    pub fn symbol(&self, probe: u64) -> Option<(String, u64)> {
        match self {
            Debug::Lazy(d) => d.symbol(probe).map(|(n, a)| (n.to_string(), a)),
            Debug::Whole(l) => l
                .find_symbol_info(probe)
                .map(|s| (s.name().to_string(), s.address())),
        }
    }

    /// The line-table rows that overlap `[low, high)`: start, length, file, line.
    pub fn rows(&self, low: u64, high: u64) -> Vec<(u64, u64, Option<String>, Option<u32>)> {
        match self {
            Debug::Lazy(d) => d.rows(low, high),
            Debug::Whole(l) => l
                .find_location_range(low, high)
                .map(|rows| {
                    rows.map(|(start, len, loc)| (start, len, loc.file.map(String::from), loc.line))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

fn rows_in(ctx: &Context<R>, low: u64, high: u64) -> Vec<(u64, u64, Option<String>, Option<u32>)> {
    match ctx.find_location_range(low, high) {
        Ok(rows) => rows
            .map(|(start, len, loc)| (start, len, loc.file.map(String::from), loc.line))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The units whose aranges hold `probe`, in addr2line's order (the range that ends
/// first, then the unit that comes first): when units overlap (copies of a C++
/// inline function that the linker discarded), the same unit answers.
fn units_holding(index: &Index, probe: u64) -> impl Iterator<Item = usize> + '_ {
    let from = index.ranges.partition_point(|&(_, end, _)| end <= probe);
    (from..index.ranges.len())
        // No range from one on whose remaining begins all lie above the probe.
        .take_while(move |&i| index.min_begin[i] <= probe)
        .filter(move |&i| index.ranges[i].0 <= probe)
        .map(move |i| index.ranges[i].2)
}

/// Address ranges of units.
struct Index {
    /// `(begin, end, unit offset)`, by end, then unit.
    ranges: Vec<(u64, u64, usize)>,
    /// The least begin of `ranges[i..]`, for each `i`.
    min_begin: Vec<u64>,
}

/// The aranges of every unit, in look-up order; None when a compilation unit has none (so
/// only a parse of every unit finds its addresses), or when the sections are
/// unreadable, or when there is a supplementary file (its units are parsed whole).
fn aranges_index(dwarf: &gimli::Dwarf<R>) -> Option<Index> {
    if dwarf.sup.is_some() {
        return None;
    }
    let mut index = Vec::new();
    let mut covered = std::collections::HashSet::new();
    let mut headers = dwarf.debug_aranges.headers();
    while let Some(header) = headers.next().ok()? {
        let unit = header.debug_info_offset().0;
        let mut entries = header.entries();
        while let Some(entry) = entries.next().transpose() {
            // Entries that overflow are skipped, as addr2line does.
            let Ok(entry) = entry else { continue };
            if entry.length() != 0 {
                let r = entry.range();
                index.push((r.begin, r.end, unit));
            }
        }
        covered.insert(unit);
    }
    let mut units = dwarf.units();
    while let Some(header) = units.next().ok()? {
        let compile = matches!(
            header.type_(),
            gimli::UnitType::Compilation | gimli::UnitType::Skeleton(_)
        );
        let offset = header.debug_info_offset()?.0;
        if compile && !covered.contains(&offset) {
            return None;
        }
    }
    index.sort_unstable_by_key(|&(begin, end, unit)| (end, unit, begin));
    let mut min_begin: Vec<u64> = index
        .iter()
        .rev()
        .scan(u64::MAX, |m, &(begin, _, _)| {
            *m = begin.min(*m);
            Some(*m)
        })
        .collect();
    min_begin.reverse();
    Some(Index {
        ranges: index,
        min_begin,
    })
}

/// A context for the unit at `offset` alone: `.debug_info` cut to the unit, no
/// aranges (they name units by their offset in the whole section). None when the unit
/// may refer to entries outside itself, or cannot be read.
fn unit_context(sections: &gimli::DwarfSections<R>, offset: usize) -> Option<Box<Context<R>>> {
    let dwarf = dwarf_of(sections);
    let header = dwarf
        .debug_info
        .header_from_offset(gimli::DebugInfoOffset(offset))
        .ok()?;
    let mut abbrevs = dwarf.debug_abbrev.reader().clone();
    abbrevs.skip(header.debug_abbrev_offset().0).ok()?;
    if refers_outside(abbrevs)? {
        return None;
    }
    let section = dwarf.debug_info.reader().clone();
    let mut unit = section.clone();
    unit.skip(offset).ok()?;
    unit.truncate(header.length_including_self()).ok()?;
    let mut one = dwarf_of(sections);
    one.debug_info = gimli::DebugInfo::from(unit);
    one.debug_aranges = gimli::DebugAranges::from(R::new(Arc::from(&[][..]), section.endian()));
    Context::from_dwarf(one).ok().map(Box::new)
}

/// Whether an abbreviation table (read from its start) has an attribute whose form
/// refers to an entry by its place in the whole section, or in another file, or
/// whose form is only known entry by entry. None when it cannot be read.
fn refers_outside(mut table: R) -> Option<bool> {
    loop {
        // Code (0 ends the table), tag, children flag, then (name, form) pairs up to
        // (0, 0); an implicit constant carries its value.
        if table.read_uleb128().ok()? == 0 {
            return Some(false);
        }
        table.read_uleb128().ok()?;
        table.read_u8().ok()?;
        loop {
            let name = table.read_uleb128().ok()?;
            let form = gimli::DwForm(table.read_uleb128_u16().ok()?);
            if name == 0 && form.0 == 0 {
                break;
            }
            if matches!(
                form,
                gimli::DW_FORM_ref_addr
                    | gimli::DW_FORM_GNU_ref_alt
                    | gimli::DW_FORM_ref_sup4
                    | gimli::DW_FORM_ref_sup8
                    | gimli::DW_FORM_indirect
            ) {
                return Some(true);
            }
            if form == gimli::DW_FORM_implicit_const {
                table.read_sleb128().ok()?;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use object::ObjectSymbol;
    use std::path::PathBuf;

    /// The C library this test runs with, and its separate debug file (found by
    /// build id, as the symbolizer finds it).
    fn libc_and_debug_file() -> (Vec<u8>, PathBuf) {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let path = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with("/libc.so.6"))
            .expect("the test links the C library")
            .to_string();
        let data = std::fs::read(&path).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let id: String = obj
            .build_id()
            .unwrap()
            .expect("the C library has a build id")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let debug = PathBuf::from(format!(
            "/usr/lib/debug/.build-id/{}/{}.debug",
            &id[..2],
            &id[2..]
        ));
        assert!(
            debug.exists(),
            "the C library's debug file is needed (Debian: libc6-dbg): {debug:?}"
        );
        (data, debug)
    }

    #[test]
    fn a_unit_found_by_its_aranges_tells_what_the_whole_file_does() {
        let (libc, debug) = libc_and_debug_file();
        let lazy = DebugInfo::open(&debug).unwrap();
        assert!(
            lazy.index.is_some(),
            "the C library's aranges name every unit"
        );
        let whole = Loader::new(&debug).unwrap();
        let obj = object::File::parse(&*libc).unwrap();
        let text = obj.section_by_name(".text").unwrap();
        let (mut found, mut inlined, mut rows) = (0, 0, 0);
        for probe in (text.address()..text.address() + text.size()).step_by(173) {
            let frames = lazy.frames(probe);
            let expected = whole.find_frames(probe).map(collect).unwrap_or_default();
            assert_eq!(frames, expected, "frames at {probe:#x}");
            found += usize::from(frames.iter().any(|f| f.line.is_some()));
            inlined += usize::from(frames.len() > 1);
            let row = lazy.rows(probe, probe + 1);
            let expected: Vec<_> = whole
                .find_location_range(probe, probe + 1)
                .unwrap()
                .map(|(start, len, loc)| (start, len, loc.file.map(String::from), loc.line))
                .collect();
            assert_eq!(row, expected, "row at {probe:#x}");
            rows += usize::from(!row.is_empty());
        }
        // The comparison covered real answers, inlined calls among them.
        assert!(
            found > 5000 && rows > 5000 && inlined > 500,
            "{found} {rows} {inlined}"
        );
        // Only `rows` of one address: the whole file's context was never made.
        assert!(lazy.whole.get().is_none());
    }

    #[test]
    fn one_look_up_reads_one_unit() {
        let (libc, debug) = libc_and_debug_file();
        let obj = object::File::parse(&*libc).unwrap();
        let malloc = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("malloc"))
            .expect("the C library's symbol table has malloc");
        let d = DebugInfo::open(&debug).unwrap();
        let frames = d.frames(malloc.address() + 1);
        assert!(
            frames
                .iter()
                .any(|f| f.file.as_deref().is_some_and(|f| f.ends_with("malloc.c"))),
            "{frames:?}"
        );
        assert_eq!(d.units.borrow().len(), 1);
        assert!(d.whole.get().is_none());
        let units = dwarf_of(&d.sections).units().count();
        assert!(units > 100, "{units}");
    }

    /// A program whose functions' DWARF the compiler put in a `.dwo` file, built
    /// in `dir` with `flags` added: `make` calls malloc through an inlined `twice`.
    pub(crate) fn build_split_dwarf(dir: &Path, flags: &[&str]) -> PathBuf {
        std::fs::write(
            dir.join("split.c"),
            "#include <stdlib.h>\n\
             static inline __attribute__((always_inline)) int twice(int x) { return x * 2; }\n\
             __attribute__((noinline)) void *make(int n) { return malloc(twice(n)); }\n\
             int main(int argc, char **argv) { return make(argc) != 0; }\n",
        )
        .unwrap();
        let bin = dir.join("split");
        let built = std::process::Command::new("cc")
            .current_dir(dir)
            .args(["-g", "-O2", "-gsplit-dwarf"])
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg("split.c")
            .status()
            .expect("the tests need a C compiler (cc)");
        assert!(built.success());
        let dwo = std::fs::read_dir(dir)
            .unwrap()
            .any(|e| e.unwrap().path().extension().is_some_and(|x| x == "dwo"));
        assert!(
            dwo,
            "the compiler wrote the functions' DWARF to a .dwo file"
        );
        bin
    }

    #[test]
    fn functions_in_a_split_dwarf_file_are_found_as_addr2line_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let bin = build_split_dwarf(dir.path(), &[]);
        let lazy = DebugInfo::open(&bin).unwrap();
        let whole = Loader::new(&bin).unwrap();
        let data = std::fs::read(&bin).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let text = obj.section_by_name(".text").unwrap();
        let mut functions = 0;
        for probe in text.address()..text.address() + text.size() {
            let frames = lazy.frames(probe);
            let expected = whole.find_frames(probe).map(collect).unwrap_or_default();
            assert_eq!(frames, expected, "frames at {probe:#x}");
            functions += usize::from(frames.iter().any(|f| f.function.as_deref() == Some("make")));
        }
        // The function names come from the .dwo: the comparison covered them.
        assert!(functions > 0);
    }

    /// Frames and first rows at every byte of `bin`'s text, against addr2line's.
    fn same_as_addr2line(bin: &Path) -> usize {
        let lazy = DebugInfo::open(bin).unwrap();
        let whole = Loader::new(bin).unwrap();
        let data = std::fs::read(bin).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let text = obj.section_by_name(".text").unwrap();
        let mut lines = 0;
        for probe in text.address()..text.address() + text.size() {
            let frames = lazy.frames(probe);
            let expected = whole.find_frames(probe).map(collect).unwrap_or_default();
            assert_eq!(frames, expected, "frames at {probe:#x}");
            let row = lazy.rows(probe, probe + 1).into_iter().next();
            let expected = whole
                .find_location_range(probe, probe + 1)
                .unwrap()
                .next()
                .map(|(start, len, loc)| (start, len, loc.file.map(String::from), loc.line));
            assert_eq!(row, expected, "row at {probe:#x}");
            lines += usize::from(row.is_some());
        }
        lines
    }

    #[test]
    fn where_units_overlap_the_unit_addr2line_would_take_answers() {
        // An inline C++ function compiled in two units with other flags: the linker
        // keeps one copy, and the other unit's ranges still cover its address.
        let dir = tempfile::tempdir().unwrap();
        // Its body is long, and much longer at -O0 than at -O2: the discarded
        // copy's range runs past the kept one's end, into the functions after it.
        let mut header = String::from(
            "#include <cstdlib>\ninline __attribute__((noinline)) long big(long x) {\n  long s = 0;\n",
        );
        for i in 0..200 {
            header += &format!(
                "  s += (x * {i}) ^ (s >> 3);\n  if (s & {}) s -= rand();\n",
                1 << (i % 13)
            );
        }
        header += "  return s;\n}\n";
        std::fs::write(dir.path().join("big.h"), header).unwrap();
        let units = [
            (
                "a.cpp",
                "#include \"big.h\"\nlong f1(long x) { return big(x) + 1; }\n",
            ),
            (
                "b.cpp",
                "#include \"big.h\"\nlong f1(long);\n\
                 int main(int c, char **) { return (int)(big(c) + f1(c)); }\n",
            ),
        ];
        for (name, text) in units {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        for (first, second, out) in [("-O2", "-O0", "x"), ("-O0", "-O2", "y")] {
            for (flags, src) in [(first, "a.cpp"), (second, "b.cpp")] {
                let ok = std::process::Command::new("c++")
                    .current_dir(dir.path())
                    .args(["-g", flags, "-c", src])
                    .status()
                    .expect("the tests need a C++ compiler (c++)");
                assert!(ok.success());
            }
            let bin = dir.path().join(out);
            let ok = std::process::Command::new("c++")
                .current_dir(dir.path())
                .args(["a.o", "b.o", "-o"])
                .arg(&bin)
                .status()
                .unwrap();
            assert!(ok.success());
            assert!(same_as_addr2line(&bin) > 0);
        }
    }

    #[test]
    fn every_unit_whose_ranges_hold_an_address_is_found_in_addr2lines_order() {
        // By end, then unit: addr2line tries the range that ends first.
        let ranges = vec![
            (10, 20, 2),
            (30, 40, 3),
            (0, 100, 1),
            (120, 130, 4),
            (120, 130, 6),
            (125, 200, 5),
        ];
        let min_begin = vec![0, 0, 0, 120, 120, 125];
        let index = Index { ranges, min_begin };
        let at = |p| units_holding(&index, p).collect::<Vec<_>>();
        assert_eq!(at(15), [2, 1]);
        assert_eq!(at(50), [1]);
        assert_eq!(at(100), Vec::<usize>::new());
        assert_eq!(at(127), [4, 6, 5]);
        assert_eq!(at(199), [5]);
        assert_eq!(at(200), Vec::<usize>::new());
    }

    #[test]
    fn a_unit_that_may_refer_outside_itself_is_read_whole() {
        // Abbreviation 1: a compile unit with children, (name, strp); abbreviation
        // 2: a variable, (const_value, implicit_const -3), (type, FORM).
        let table = |form: u8| {
            let mut t = vec![1, 0x11, 1, 0x03, 0x0e, 0, 0];
            t.extend([2, 0x34, 0, 0x1c, 0x21, 0x7d, 0x49, form, 0, 0, 0]);
            R::new(Arc::from(t), RunTimeEndian::Little)
        };
        assert_eq!(refers_outside(table(0x13)), Some(false)); // ref4
        assert_eq!(refers_outside(table(0x10)), Some(true)); // ref_addr
        assert_eq!(refers_outside(table(0x1c)), Some(true)); // ref_sup4
        assert_eq!(refers_outside(table(0x16)), Some(true)); // indirect
                                                             // A table cut short is not read as one without such references.
        let cut = R::new(Arc::from(&[1u8, 0x11, 1, 0x03][..]), RunTimeEndian::Little);
        assert_eq!(refers_outside(cut), None);
    }
}
