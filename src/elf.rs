//! Reading ELF files: symbol lookup, load bias, whether a program has a loader.

use object::{Object, ObjectSegment, ObjectSymbol};

/// The file bytes segment `s` has from `address` on (None: `address` is not among
/// them).
pub fn segment_room<'d>(s: &impl ObjectSegment<'d>, address: u64) -> Option<u64> {
    let at = address.checked_sub(s.address())?;
    s.file_range().1.checked_sub(at).filter(|&n| n > 0)
}

/// The `size` bytes at `address` in the file bytes of segment `s` (None unless all
/// of them are there), read there alone: `ObjectSegment::data_range` reads the
/// whole segment first, which through a [`object::ReadCache`] is megabytes for a
/// few bytes of code.
pub fn segment_bytes<'d, R: object::ReadRef<'d>>(
    data: R,
    s: &impl ObjectSegment<'d>,
    address: u64,
    size: u64,
) -> Option<&'d [u8]> {
    if segment_room(s, address)? < size {
        return None;
    }
    let offset = s.file_range().0.checked_add(address - s.address())?;
    data.read_bytes_at(offset, size).ok()
}

/// An object file read as needed ([`object::ReadCache`]), with its string tables
/// (`.strtab`, `.dynstr`, the section names) read whole, once: a name is then found
/// in memory.
/// Through the cache alone, each name is a read of its own, which made an object with
/// a hundred thousand symbols slower to parse than reading the whole file.
pub struct WithStrings<'a, R: object::ReadCacheOps> {
    file: &'a object::ReadCache<R>,
    /// Each string table's file offset and bytes, read at the first name looked up.
    tables: std::cell::OnceCell<Vec<(u64, &'a [u8])>>,
}

impl<'a, R: object::ReadCacheOps> WithStrings<'a, R> {
    pub fn new(file: &'a object::ReadCache<R>) -> WithStrings<'a, R> {
        WithStrings {
            file,
            tables: std::cell::OnceCell::new(),
        }
    }

    /// The string table holding file offset `at`: its offset and bytes.
    fn table_at(&self, at: u64) -> Option<(u64, &'a [u8])> {
        let file = self.file;
        self.tables
            .get_or_init(|| string_tables(file).unwrap_or_default())
            .iter()
            .copied()
            .find(|&(o, b)| (o..o + b.len() as u64).contains(&at))
    }
}

/// Every string table of a 64-bit ELF (by their type: no name is read to find
/// them), read whole: file offset and bytes.
fn string_tables<R: object::ReadCacheOps>(
    file: &object::ReadCache<R>,
) -> Option<Vec<(u64, &[u8])>> {
    use object::read::elf::{FileHeader, SectionHeader};
    let header = object::elf::FileHeader64::<object::Endianness>::parse(file).ok()?;
    let endian = header.endian().ok()?;
    let sections = header.section_headers(endian, file).ok()?;
    Some(
        sections
            .iter()
            .filter(|s| s.sh_type(endian) == object::elf::SHT_STRTAB)
            .filter_map(|s| {
                let (offset, size) = s.file_range(endian)?;
                Some((
                    offset,
                    object::ReadRef::read_bytes_at(file, offset, size).ok()?,
                ))
            })
            .collect(),
    )
}

impl<'a, R: object::ReadCacheOps> object::ReadRef<'a> for &'a WithStrings<'a, R> {
    fn len(self) -> Result<u64, ()> {
        self.file.len()
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        self.file.read_bytes_at(offset, size)
    }

    fn read_bytes_at_until(
        self,
        range: std::ops::Range<u64>,
        delimiter: u8,
    ) -> Result<&'a [u8], ()> {
        if range.start > range.end {
            return Err(());
        }
        if let Some((o, table)) = self.table_at(range.start) {
            let end = o + table.len() as u64;
            let b = &table[(range.start - o) as usize..(range.end.min(end) - o) as usize];
            if let Some(n) = b.iter().position(|&c| c == delimiter) {
                return Ok(&b[..n]);
            }
            if range.end <= end {
                // No delimiter in the whole range.
                return Err(());
            }
        }
        // Not in a table read whole, or running past one.
        self.file.read_bytes_at_until(range, delimiter)
    }
}

/// Whether a 64-bit ELF has a PT_INTERP program header (is dynamically linked).
/// `data` is the file's bytes, or the file read as needed ([`object::ReadCache`]).
pub fn has_interpreter<'d, R: object::ReadRef<'d>>(data: R) -> bool {
    use object::elf::{FileHeader64, PT_INTERP};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::Endianness;
    let Ok(hdr) = FileHeader64::<Endianness>::parse(data) else {
        return false;
    };
    let Ok(endian) = hdr.endian() else {
        return false;
    };
    let Ok(phdrs) = hdr.program_headers(endian, data) else {
        return false;
    };
    phdrs.iter().any(|p| p.p_type(endian) == PT_INTERP)
}

/// A function symbol defined in an object, at its file (link-time) address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FnSymbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
}

/// An ELF object's facts that the tracer needs, read once per file.
#[derive(Debug, Default)]
pub struct ObjectInfo {
    /// Lowest PT_LOAD virtual address, page aligned down (0 for shared objects).
    pub first_vaddr: u64,
    /// Defined function symbols from both .dynsym and .symtab.
    pub functions: Vec<FnSymbol>,
    /// Defined data symbols that the tracer asks for (the loader's `_r_debug`).
    pub objects: Vec<FnSymbol>,
}

impl ObjectInfo {
    /// From the object's bytes, or its file read as needed ([`object::ReadCache`]:
    /// the headers and the symbol tables, not the code or the debug info).
    pub fn parse<'d, R: object::ReadRef<'d>>(data: R) -> Option<ObjectInfo> {
        let file = object::File::parse(data).ok()?;
        let first_vaddr = file.segments().map(|s| s.address()).min().unwrap_or(0) & !0xfff;
        let mut functions = Vec::new();
        let mut objects = Vec::new();
        for s in file.dynamic_symbols().chain(file.symbols()) {
            if !s.is_definition() || s.address() == 0 {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            let sym = FnSymbol {
                name: name.to_string(),
                address: s.address(),
                size: s.size(),
            };
            match s.kind() {
                object::SymbolKind::Text => functions.push(sym),
                object::SymbolKind::Data => objects.push(sym),
                _ => {}
            }
        }
        Some(ObjectInfo {
            first_vaddr,
            functions,
            objects,
        })
    }

    pub fn function(&self, name: &str) -> Option<&FnSymbol> {
        self.functions.iter().find(|s| s.name == name)
    }

    pub fn object(&self, name: &str) -> Option<&FnSymbol> {
        self.objects.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_binary() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        assert!(has_interpreter(&data[..]));
        let info = ObjectInfo::parse(&data[..]).unwrap();
        assert!(!info.functions.is_empty());
        // The same facts, read as needed from the file, with its string tables
        // read whole or name by name.
        let (file, reads) = Counting::open(&exe);
        let cache = object::ReadCache::new(file);
        let lazily = WithStrings::new(&cache);
        assert!(has_interpreter(&lazily));
        let info_lazily = ObjectInfo::parse(&lazily).unwrap();
        assert_eq!(info_lazily.first_vaddr, info.first_vaddr);
        assert_eq!(info_lazily.functions, info.functions);
        assert_eq!(info_lazily.objects, info.objects);
        let by_name =
            ObjectInfo::parse(&object::ReadCache::new(std::fs::File::open(&exe).unwrap())).unwrap();
        assert_eq!(by_name.functions, info.functions);
        // A name is not a read of its own (this binary has thousands of them), and
        // what is read is the symbol and string tables, give or take the headers:
        // not the code, not the debug info.
        let symbols = info.functions.len() + info.objects.len();
        let (calls, bytes) = reads.get();
        assert!(symbols > 1000, "{symbols} symbols");
        assert!(calls < 100, "{calls} reads for {symbols} symbols");
        let obj = object::File::parse(&data[..]).unwrap();
        let tables: u64 = [".symtab", ".strtab", ".dynsym", ".dynstr", ".shstrtab"]
            .into_iter()
            .filter_map(|n| obj.section_by_name(n))
            .map(|s| object::ObjectSection::size(&s))
            .sum();
        assert!(
            bytes < tables + (256 << 10),
            "{bytes} bytes read; the tables have {tables}"
        );
    }

    /// A file that counts the reads made of it and the bytes they read.
    struct Counting {
        file: std::fs::File,
        reads: std::rc::Rc<std::cell::Cell<(u64, u64)>>,
    }

    impl Counting {
        fn open(path: &std::path::Path) -> (Counting, std::rc::Rc<std::cell::Cell<(u64, u64)>>) {
            let reads = std::rc::Rc::default();
            let file = std::fs::File::open(path).unwrap();
            let counting = Counting {
                file,
                reads: std::rc::Rc::clone(&reads),
            };
            (counting, reads)
        }
    }

    impl std::io::Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.file.read(buf)?;
            let (calls, bytes) = self.reads.get();
            self.reads.set((calls + 1, bytes + n as u64));
            Ok(n)
        }
    }

    impl std::io::Seek for Counting {
        fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
            self.file.seek(pos)
        }
    }

    #[test]
    fn names_are_read_from_the_string_tables_as_object_reads_them() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let cache = object::ReadCache::new(std::fs::File::open(&exe).unwrap());
        let strings = WithStrings::new(&cache);
        let obj = object::File::parse(&data[..]).unwrap();
        let strtab = obj.section_by_name(".strtab").expect("a .strtab");
        let (o, n) = object::ObjectSection::file_range(&strtab).unwrap();
        use object::ReadRef;
        for start in [o, o + 1, o + n / 2, o + n - 1] {
            for end in [start, start + 1, start + 40, o + n, o + n + 100] {
                assert_eq!(
                    (&strings).read_bytes_at_until(start..end, 0),
                    (&data[..]).read_bytes_at_until(start..end, 0),
                    "{start}..{end}"
                );
            }
        }
        // A range that ends before it starts (a name offset past its table).
        assert_eq!((&strings).read_bytes_at_until(o + 10..o + 5, 0), Err(()));
    }

    #[test]
    fn a_segments_bytes_are_read_where_asked_not_the_whole_segment() {
        let exe = std::env::current_exe().unwrap();
        let data = std::fs::read(&exe).unwrap();
        let obj = object::File::parse(&data[..]).unwrap();
        let text = obj
            .segments()
            .max_by_key(|s| s.file_range().1)
            .expect("a segment");
        let (offset, size) = text.file_range();
        assert!(size > 1 << 20, "the biggest segment has {size} bytes");
        let at = text.address() + size / 2;
        let (file, reads) = Counting::open(&exe);
        let cache = object::ReadCache::new(file);
        let lazily = object::File::parse(&cache).unwrap();
        let seg = lazily
            .segments()
            .find(|s| s.file_range() == (offset, size))
            .unwrap();
        let before = reads.get().1;
        let got = segment_bytes(&cache, &seg, at, 64).expect("bytes there");
        let mid = (offset + size / 2) as usize;
        assert_eq!(got, &data[mid..mid + 64]);
        assert!(
            reads.get().1 - before < 64 << 10,
            "read {}",
            reads.get().1 - before
        );
        // All of them there, or none; nothing at or past the end of the segment's
        // file bytes, nor below it.
        let end = text.address() + size;
        assert_eq!(segment_room(&text, end - 8), Some(8));
        assert_eq!(
            segment_bytes(&data[..], &text, end - 8, 8).map(<[u8]>::len),
            Some(8)
        );
        assert_eq!(segment_bytes(&data[..], &text, end - 8, 64), None);
        assert_eq!(segment_room(&text, end), None);
        if let Some(below) = text.address().checked_sub(1) {
            assert_eq!(segment_room(&text, below), None);
        }
    }

    #[test]
    fn finds_libc_allocator_symbols() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = crate::maps::modules(&crate::maps::parse_maps(&maps))
            .into_iter()
            .find(|m| m.file_name().starts_with("libc.so"))
            .expect("libc mapped");
        let info = ObjectInfo::parse(&std::fs::read(&libc.path).unwrap()[..]).unwrap();
        let malloc = info.function("malloc").expect("malloc in libc");
        // The address we compute must be the one this very process calls.
        let ours = libc::malloc as *const () as u64;
        assert_eq!(libc.base - info.first_vaddr + malloc.address, ours);
    }
}
