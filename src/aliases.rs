//! Several names for one function: which one a frame shows.
//!
//! glibc gives most of its functions several symbols at one address: the public one
//! (`strdup`, often weak), an internal global one (`__strdup`), and, in the symbol
//! table of its debug file, a local alias for calls from inside libc
//! (`__GI___strdup`, made by `hidden_proto`'s asm label). Its DWARF names a function
//! by that asm label, and an ELF symbol lookup returns any one of the names. valgrind
//! shows the name a user knows (`strdup`), and so does memtrace: among the names of
//! one address, global (or weak) before local, then the fewest leading underscores,
//! then the shortest, then the first in alphabetical order. (valgrind itself takes
//! the shortest; both agree on glibc's aliases, and both call `memcmp` `bcmp`.)
//!
//! Mangled C++ and Rust names are left out: their aliases (a constructor's complete
//! and base object versions) demangle to the same text anyway.

use object::{Object, ObjectSymbol, SymbolKind};
use std::collections::HashMap;

/// The names of every function address that has more than one, best first.
#[derive(Debug, Default)]
pub struct Aliases {
    names: HashMap<u64, Vec<(String, bool)>>,
}

impl Aliases {
    /// Adds the function symbols (`.symtab` and `.dynsym`) of an object; an object and
    /// its separate debug file describe the same addresses. [`Aliases::finish`] then.
    pub fn add<'d, R: object::ReadRef<'d>>(&mut self, obj: &object::File<'d, R>) {
        for s in obj.symbols().chain(obj.dynamic_symbols()) {
            if s.kind() != SymbolKind::Text || !s.is_definition() || s.address() == 0 {
                continue;
            }
            let Ok(name) = s.name() else { continue };
            if name.is_empty() || is_mangled(name) {
                continue;
            }
            let names = self.names.entry(s.address()).or_default();
            match names.iter_mut().find(|(n, _)| n == name) {
                // The same name in both tables: global if either says so.
                Some((_, global)) => *global |= s.is_global(),
                None => names.push((name.to_string(), s.is_global())),
            }
        }
    }

    /// Keeps the addresses with several names, each list best first.
    pub fn finish(mut self) -> Aliases {
        self.names.retain(|_, names| names.len() > 1);
        for names in self.names.values_mut() {
            names.sort_by(|a, b| rank(a).cmp(&rank(b)));
        }
        self
    }

    /// The name to show for the function at `start` that is known as `name`: its
    /// best name, when `name` is one of several at that address.
    pub fn best(&self, start: u64, name: &str) -> Option<&str> {
        let names = self.names.get(&start)?;
        names
            .iter()
            .any(|(n, _)| n == name)
            .then(|| names[0].0.as_str())
    }
}

/// The order of preference: public before local, fewer leading underscores, shorter,
/// alphabetical.
fn rank((name, global): &(String, bool)) -> (bool, usize, usize, &str) {
    let underscores = name.bytes().take_while(|&b| b == b'_').count();
    (!global, underscores, name.len(), name.as_str())
}

/// An Itanium C++ (`_Z`) or Rust v0 (`_R`) mangled name.
pub fn is_mangled(name: &str) -> bool {
    name.starts_with("_Z") || name.starts_with("_R")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn best_of(names: &[(&str, bool)]) -> String {
        let mut v: Vec<(String, bool)> = names.iter().map(|(n, g)| (n.to_string(), *g)).collect();
        v.sort_by(|a, b| rank(a).cmp(&rank(b)));
        v[0].0.clone()
    }

    #[test]
    fn public_names_come_first() {
        // glibc 2.36's three names of strdup, and of _dl_catch_exception.
        let strdup = [
            ("__GI___strdup", false),
            ("__strdup", true),
            ("strdup", true),
        ];
        assert_eq!(best_of(&strdup), "strdup");
        let catch = [
            ("__GI__dl_catch_exception", false),
            ("_dl_catch_exception", true),
        ];
        assert_eq!(best_of(&catch), "_dl_catch_exception");
        // A versioned definition beside its implementation's local name.
        let start = [
            ("__libc_start_main_impl", false),
            ("__libc_start_main", true),
        ];
        assert_eq!(best_of(&start), "__libc_start_main");
    }

    #[test]
    fn libc_names_its_functions_publicly() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = crate::maps::modules(&crate::maps::parse_maps(&maps))
            .into_iter()
            .find(|m| m.is_libc())
            .expect("libc mapped");
        let data = std::fs::read(&libc.path).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let mut aliases = Aliases::default();
        aliases.add(&obj);
        let aliases = aliases.finish();
        let strdup = obj
            .dynamic_symbols()
            .find(|s| s.name() == Ok("__strdup"))
            .expect("__strdup in libc's .dynsym");
        assert_eq!(aliases.best(strdup.address(), "__strdup"), Some("strdup"));
        assert_eq!(aliases.best(strdup.address(), "no_such_name"), None);
    }
}
