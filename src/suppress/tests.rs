use super::apply::apply;
use super::*;
use crate::report::testing::sample;

fn supps(text: &str) -> Suppressions {
    Suppressions {
        list: parse::parse(text, "t.supp").expect("parse"),
    }
}

/// The sample's leaks after applying `text`, by their first frame's function.
fn left_after(text: &str) -> Vec<String> {
    let mut r = sample();
    apply(&mut r, &supps(text));
    r.leaks
        .iter()
        .map(|l| {
            l.stack[0]
                .function
                .clone()
                .unwrap_or_else(|| l.stack[0].address.clone())
        })
        .collect()
}

#[test]
fn the_allocator_frame_comes_first_as_in_valgrind() {
    // The sample's definite leak: malloc <- fill (inlined) <- make_leak <- main.
    let left = left_after("{\n s\n Memcheck:Leak\n fun:malloc\n fun:fill\n fun:make_leak\n}\n");
    assert_eq!(left, ["0x7f1c2a500000", "Widget::make()"]);
    // Without the allocator's frame the same lines match nothing.
    let left = left_after("{\n s\n Memcheck:Leak\n fun:fill\n fun:make_leak\n}\n");
    assert_eq!(left.len(), 3);
    // C++: operator new by its mangled name, then the caller's mangled name.
    let left = left_after("{\n s\n Memcheck:Leak\n fun:_Znwm\n fun:_ZN6Widget4makeEv\n}\n");
    assert_eq!(left, ["fill", "0x7f1c2a500000"]);
}

#[test]
fn leak_kinds_must_match() {
    let hide_reachable = "{\n s\n Memcheck:Leak\n match-leak-kinds: reachable\n fun:*\n}\n";
    assert_eq!(left_after(hide_reachable), ["fill", "0x7f1c2a500000"]);
    // An unclassified leak counts as definite.
    let hide_definite = "{\n s\n Memcheck:Leak\n match-leak-kinds: definite\n ...\n}\n";
    assert_eq!(left_after(hide_definite), ["Widget::make()"]);
    assert_eq!(
        left_after("{\n s\n Memcheck:Leak\n match-leak-kinds: none\n ...\n}\n").len(),
        3
    );
}

#[test]
fn wildcards_hide_exactly_what_they_match() {
    // Any allocator whose name ends in "alloc", called from somewhere above main.
    let text = "{\n s\n Memcheck:Leak\n fun:*alloc\n ...\n fun:main\n}\n";
    // malloc's leak passes through main; calloc's does not; _Znwm's is no *alloc.
    assert_eq!(left_after(text), ["0x7f1c2a500000", "Widget::make()"]);
    // obj: with wildcards, and ? for one character.
    let text = "{\n s\n Memcheck:Leak\n fun:?alloc\n obj:*/libx.so\n}\n";
    assert_eq!(left_after(text), ["fill", "Widget::make()"]);
    // A frame without a name is ???.
    let text = "{\n s\n Memcheck:Leak\n fun:calloc\n fun:???\n fun:???\n}\n";
    assert_eq!(left_after(text), ["fill", "Widget::make()"]);
    // src: by base name and line.
    let text = "{\n s\n Memcheck:Leak\n ...\n src:widget.cc:7\n}\n";
    assert_eq!(left_after(text), ["fill", "0x7f1c2a500000"]);
    let text = "{\n s\n Memcheck:Leak\n ...\n src:widget.cc:8\n}\n";
    assert_eq!(left_after(text).len(), 3);
}

#[test]
fn suppressed_findings_are_counted_by_name() {
    let mut r = sample();
    let text = "{\n one\n Memcheck:Leak\n ...\n fun:main\n}\n{\n two\n Memcheck:Free\n fun:free\n fun:main\n}\n";
    apply(&mut r, &supps(text));
    assert_eq!(r.leaks.len(), 1);
    assert!(r.errors.is_empty());
    let one = &r.suppressed[0];
    assert_eq!(
        (one.name.as_str(), one.count, one.blocks, one.bytes),
        ("one", 2, 2, 1048)
    );
    assert_eq!(one.origin, "t.supp:1");
    assert_eq!(
        (r.suppressed[1].name.as_str(), r.suppressed[1].count),
        ("two", 1)
    );
    // What is left no longer fails --error-exitcode.
    assert_eq!(crate::report::exit_code(&r, 0, Some(9)), 9);
    r.leaks.clear();
    assert_eq!(crate::report::exit_code(&r, 0, Some(9)), 0);
}

#[test]
fn free_suppressions_see_the_deallocator_first() {
    let mut r = sample();
    apply(
        &mut r,
        &supps("{\n s\n Memcheck:Free\n fun:_ZdlPv\n fun:main\n}\n"),
    );
    assert_eq!(r.errors.len(), 1, "the error was a free(), not a delete");
    apply(&mut r, &supps("{\n s\n Memcheck:Leak\n fun:free\n}\n"));
    assert_eq!(r.errors.len(), 1, "a Leak suppression hides no error");
    apply(
        &mut r,
        &supps("{\n s\n Memcheck:Free\n fun:free\n fun:main\n}\n"),
    );
    assert!(r.errors.is_empty());
}

#[test]
fn generated_suppressions_hide_their_own_finding_only() {
    let r = sample();
    for (i, leak) in r.leaks.iter().enumerate() {
        let text = generate::for_leak(leak).text();
        let mut copy = r.clone();
        apply(&mut copy, &supps(&text));
        assert_eq!(copy.leaks.len(), r.leaks.len() - 1, "{text}");
        assert!(!copy.leaks.contains(&r.leaks[i]), "{text}");
    }
    let text = generate::for_error(&r.errors[0]).text();
    assert_eq!(
        text,
        "{\n   <insert_a_suppression_name_here>\n   Memcheck:Free\n   fun:free\n   fun:main\n}\n"
    );
    let text = generate::for_leak(&r.leaks[0]).text();
    assert_eq!(
        text,
        "{\n   <insert_a_suppression_name_here>\n   Memcheck:Leak\n   match-leak-kinds: definite\n   fun:malloc\n   fun:fill\n   fun:make_leak\n   fun:main\n}\n"
    );
    let text = generate::for_leak(&r.leaks[1]).text();
    assert!(
        text.contains("   fun:calloc\n   obj:/opt/lib/libx.so\n   obj:*\n}"),
        "{text}"
    );
}

#[test]
fn a_report_that_does_not_name_its_allocators_still_matches() {
    let mut r = sample();
    for l in &mut r.leaks {
        l.allocator = None;
    }
    apply(
        &mut r,
        &supps("{\n s\n Memcheck:Leak\n fun:malloc\n fun:fill\n}\n"),
    );
    assert_eq!(r.leaks.len(), 2);
}

#[test]
fn versioned_names_match_the_plain_symbol() {
    let mut r = sample();
    apply(
        &mut r,
        &supps("{\n s\n Memcheck:Leak\n fun:_Znwm\n fun:_ZN6Widget4makeEv@@V1\n}\n"),
    );
    assert_eq!(r.leaks.len(), 2);
}

#[test]
fn many_ellipses_stay_fast() {
    let frames: Vec<FramePattern> = (0..12)
        .flat_map(|_| [FramePattern::Any, FramePattern::Fun("x".into())])
        .chain([FramePattern::Fun("never".into())])
        .collect();
    let stack: Vec<frames::SuppFrame> = (0..200)
        .map(|_| frames::SuppFrame {
            fun: Some("x"),
            obj: None,
            file: None,
            line: None,
            wildcard: false,
        })
        .collect();
    assert!(!stack_matches(&frames, &stack));
}
