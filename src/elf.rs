//! Reading ELF files: symbol lookup, load bias, whether a program has a loader.

use object::{Object, ObjectSegment, ObjectSymbol};

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
        // The same facts, read as needed from the file.
        let file = std::fs::File::open(&exe).unwrap();
        let lazily = object::ReadCache::new(file);
        assert!(has_interpreter(&lazily));
        let info_lazily = ObjectInfo::parse(&lazily).unwrap();
        assert_eq!(info_lazily.first_vaddr, info.first_vaddr);
        assert_eq!(info_lazily.functions, info.functions);
        assert_eq!(info_lazily.objects, info.objects);
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
