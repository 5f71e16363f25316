use super::*;
use crate::report::testing::{check_golden, sample};
use roxmltree::{Document, Node};

fn child<'a>(n: Node<'a, 'a>, name: &str) -> Option<Node<'a, 'a>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text<'a>(n: Node<'a, 'a>, name: &str) -> Option<&'a str> {
    child(n, name).and_then(|c| c.text())
}

/// Each frame of a stack as (fn, file, line).
fn frames<'a>(stack: Node<'a, 'a>) -> Vec<(Option<&'a str>, Option<&'a str>, Option<&'a str>)> {
    stack
        .children()
        .filter(|f| f.has_tag_name("frame"))
        .map(|f| (text(f, "fn"), text(f, "file"), text(f, "line")))
        .collect()
}

#[test]
fn golden_xml() {
    check_golden("report.xml", &render_xml(&sample(), false, &LeakKind::ALL));
}

#[test]
fn leaks_in_valgrinds_fields() {
    let xml = render_xml(&sample(), false, &LeakKind::ALL);
    let doc = Document::parse(&xml).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "valgrindoutput");
    assert_eq!(text(root, "protocolversion"), Some("4"));
    assert_eq!(text(root, "protocoltool"), Some("memcheck"));
    assert_eq!(text(root, "pid"), Some("1234"));
    let errors: Vec<Node> = root
        .children()
        .filter(|n| n.has_tag_name("error"))
        .collect();
    assert_eq!(errors.len(), 4);
    let kinds: Vec<&str> = errors.iter().filter_map(|e| text(*e, "kind")).collect();
    assert_eq!(
        kinds,
        [
            "InvalidFree",
            "Leak_DefinitelyLost",
            "Leak_DefinitelyLost",
            "Leak_StillReachable"
        ]
    );
    let definite = errors[1];
    let xwhat = child(definite, "xwhat").expect("xwhat");
    // Direct and indirect bytes, as valgrind counts a loss record's.
    assert_eq!(text(xwhat, "leakedbytes"), Some("1064"));
    assert_eq!(text(xwhat, "leakedblocks"), Some("1"));
    assert_eq!(
        text(xwhat, "text"),
        Some("1,064 (1,000 direct, 64 indirect) bytes in 1 blocks are definitely lost in loss record 1 of 3")
    );
    let stack = child(definite, "stack").expect("stack");
    assert_eq!(
        frames(stack),
        [
            (Some("malloc"), None, None),
            (Some("fill"), Some("util.h"), Some("4")),
            (Some("make_leak"), Some("leak.c"), Some("12")),
            (Some("main"), Some("leak.c"), Some("20")),
            (Some("__libc_start_call_main"), None, None),
        ]
    );
    let fill = stack
        .children()
        .filter(|f| f.has_tag_name("frame"))
        .nth(1)
        .expect("fill");
    assert_eq!(text(fill, "dir"), Some("/src"));
    assert_eq!(text(fill, "ip"), Some("0x55D0C0A0116E"));
    assert_eq!(text(fill, "obj"), Some("/src/leak"));
    // The C++ allocator by its demangled name, as valgrind's <fn>.
    let widget = child(errors[3], "stack").expect("stack");
    assert_eq!(frames(widget)[0].0, Some("operator new(unsigned long)"));
    // The unclassified one says so.
    let unclassified = text(child(errors[2], "xwhat").expect("xwhat"), "text");
    assert!(unclassified.is_some_and(|t| t.contains("unclassified")));
}

#[test]
fn errors_in_valgrinds_fields() {
    let mut r = sample();
    r.errors[0].count = 3;
    let xml = render_xml(&r, false, &LeakKind::ALL);
    let doc = Document::parse(&xml).expect("well-formed XML");
    let root = doc.root_element();
    let e = root
        .children()
        .find(|n| n.has_tag_name("error"))
        .expect("error");
    assert_eq!(
        text(e, "what"),
        Some("Invalid free() / delete / delete[] / realloc()")
    );
    let aux: Vec<&str> = e
        .children()
        .filter(|n| n.has_tag_name("auxwhat"))
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(
        aux,
        [
            "Address 0x5581a2b4c2c0 is 0 bytes inside a block of size 16 free'd",
            "Block was alloc'd at"
        ]
    );
    let stacks: Vec<Node> = e.children().filter(|n| n.has_tag_name("stack")).collect();
    assert_eq!(stacks.len(), 3);
    assert_eq!(frames(stacks[0])[0].0, Some("free"));
    assert_eq!(frames(stacks[1])[0].0, Some("free"));
    assert_eq!(frames(stacks[2])[0].0, Some("malloc"));
    let pair = child(child(root, "errorcounts").expect("counts"), "pair").expect("pair");
    assert_eq!(text(pair, "count"), Some("3"));
    assert_eq!(text(pair, "unique"), text(e, "unique"));
    // A mismatch: valgrind's words, without memtrace's "by ..., released by ...".
    r.errors[0].kind = "mismatched_free".into();
    r.errors[0].first_free_stack.clear();
    r.errors[0].description =
        "is 0 bytes inside a block of size 4 alloc'd by operator new, released by free".into();
    let xml = render_xml(&r, false, &LeakKind::ALL);
    assert!(xml.contains("<kind>MismatchedFree</kind>"));
    assert!(xml.contains(
        "<auxwhat>Address 0x5581a2b4c2c0 is 0 bytes inside a block of size 4 alloc'd</auxwhat>"
    ));
}

#[test]
fn suppressions_and_their_counts() {
    let mut r = sample();
    r.suppressed.push(crate::report::Suppressed {
        name: "libc <start-up>".into(),
        origin: "x.supp:3".into(),
        count: 2,
        blocks: 2,
        bytes: 10,
    });
    let xml = render_xml(&r, true, &LeakKind::ALL);
    let doc = Document::parse(&xml).expect("well-formed XML");
    let root = doc.root_element();
    let pair = child(child(root, "suppcounts").expect("suppcounts"), "pair").expect("pair");
    assert_eq!(text(pair, "name"), Some("libc <start-up>"));
    assert_eq!(text(pair, "count"), Some("2"));
    let leak = root
        .children()
        .filter(|n| n.has_tag_name("error"))
        .nth(1)
        .expect("leak");
    let s = child(leak, "suppression").expect("suppression");
    assert_eq!(text(s, "skind"), Some("Memcheck:Leak"));
    assert_eq!(text(s, "skaux"), Some("match-leak-kinds: definite"));
    let raw = child(s, "rawtext").and_then(|n| n.text());
    let raw = raw.expect("raw text");
    // The raw text parses as the suppression that hides this very leak.
    let parsed = crate::suppress::parse::parse(raw, "raw").expect("a suppression");
    assert_eq!(parsed.len(), 1);
    let supps = crate::suppress::Suppressions { list: parsed };
    assert!(supps.for_leak(&r.leaks[0]).is_some());
    assert!(!render_xml(&r, false, &LeakKind::ALL).contains("<suppression>"));
}

#[test]
fn markup_in_names_is_escaped() {
    let mut r = sample();
    r.leaks[2].stack[0].function = Some("std::map<int, A&>::f".into());
    r.target.argv = vec!["./a".into(), "<x>".into()];
    let xml = render_xml(&r, false, &LeakKind::ALL);
    let doc = Document::parse(&xml).expect("well-formed XML");
    assert!(doc
        .descendants()
        .any(|n| n.has_tag_name("fn") && n.text() == Some("std::map<int, A&>::f")));
    assert!(doc
        .descendants()
        .any(|n| n.has_tag_name("arg") && n.text() == Some("<x>")));
}

#[test]
fn a_stack_that_was_not_recorded_keeps_its_allocator_frame() {
    let mut r = sample();
    r.leaks[2].stack.clear();
    let xml = render_xml(&r, true, &LeakKind::ALL);
    let doc = Document::parse(&xml).expect("well-formed XML");
    let leak = doc
        .root_element()
        .children()
        .filter(|n| n.has_tag_name("error"))
        .nth(3)
        .expect("the leak");
    let stack = child(leak, "stack").expect("stack");
    assert_eq!(
        frames(stack),
        [(Some("operator new(unsigned long)"), None, None)]
    );
    let s = child(leak, "suppression").expect("suppression");
    let sframes: Vec<&str> = s
        .children()
        .filter(|n| n.has_tag_name("sframe"))
        .filter_map(|n| child(n, "fun").and_then(|f| f.text()))
        .collect();
    assert_eq!(sframes, ["_Znwm"]);
}
