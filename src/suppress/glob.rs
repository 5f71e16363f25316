//! valgrind's wildcards in `fun:` and `obj:` patterns: `*` is any run of characters
//! (none included), `?` any one character; everything else is itself.

/// Whether `text` matches `pattern` as a whole.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in
    // practice, and no recursion on long C++ names.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn stars_and_question_marks() {
        assert!(matches("malloc", "malloc"));
        assert!(!matches("malloc", "malloc2"));
        assert!(matches("*alloc", "calloc"));
        assert!(matches("*alloc", "alloc"));
        assert!(!matches("*alloc", "allocate"));
        assert!(matches("tls_get_addr_tail*", "tls_get_addr_tail.part.0"));
        assert!(matches("_Zn?m", "_Znwm"));
        assert!(!matches("_Zn?m", "_Znm"));
        assert!(matches("*", ""));
        assert!(matches("*/libc.so*", "/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches(
            "operator new(unsigned long)",
            "operator new(unsigned long)"
        ));
    }
}
