use super::*;
use crate::report::testing::sample;

/// The sample an hour later: the definite leak grew, the reachable one is gone, a
/// new site appeared, and the named frames moved (another run, other addresses).
fn later() -> Report {
    let mut r = sample();
    let moved = |f: &mut JsonFrame| {
        if f.function.is_some() {
            f.address = format!("{}0", f.address)
        }
    };
    for l in &mut r.leaks {
        l.stack.iter_mut().for_each(moved);
    }
    r.leaks[0].blocks = 5;
    r.leaks[0].bytes = 5000;
    r.leaks.remove(2);
    let mut new_site = r.leaks[0].clone();
    new_site.stack.truncate(1);
    new_site.stack[0].function = Some("grow".into());
    new_site.kind = "reachable".into();
    new_site.blocks = 1;
    new_site.bytes = 10;
    r.leaks.push(new_site);
    r.totals.live_bytes = 5140;
    r.totals.live_blocks = 8;
    r
}

#[test]
fn growth_per_site_largest_first() {
    let d = diff(&sample(), "a.json", &later(), "b.json");
    let rows: Vec<(Option<&str>, i64, i64, Vec<&str>)> = d
        .sites
        .iter()
        .map(|s| {
            (
                s.stack[0].function.as_deref(),
                s.bytes_growth,
                s.blocks_growth,
                s.kinds.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (Some("fill"), 4000, 4, vec!["definite"]),
            (Some("grow"), 10, 1, vec!["reachable"]),
            (Some("Widget::make()"), -48, -1, vec![]),
        ]
    );
    // Frames without a function are matched by their address: moved, they are
    // another site.
    let mut moved = later();
    moved.leaks[1].stack[0].address = "0x7f1c2a500010".into();
    let d2 = diff(&sample(), "a.json", &moved, "b.json");
    assert_eq!(d2.sites.len(), 5);
    // The later report's addresses.
    assert_eq!(d.sites[0].stack[0].address, "0x55d0c0a0116e0");
    assert_eq!((d.before.live_bytes, d.after.live_bytes), (1178, 5140));
}

#[test]
fn text_in_valgrinds_increased_words() {
    let text = render_text(&diff(&sample(), "a.json", &later(), "b.json"));
    assert!(
        text.starts_with(
            "from a.json (pid 1234, 2 s of trace): 1,178 bytes in 4 blocks\n  to b.json"
        ),
        "{text}"
    );
    assert!(
        text.contains("live heap: +3,962 bytes, +4 blocks\n"),
        "{text}"
    );
    assert!(
        text.contains("5,000 (+4,000) bytes in 5 (+4) blocks are definitely lost in site 1 of "),
        "{text}"
    );
    assert!(
        text.contains("   at 0x55d0c0a0116e0: fill (util.h:4)\n"),
        "{text}"
    );
    assert!(
        text.contains("0 (-48) bytes in 0 (-1) blocks are gone in site "),
        "{text}"
    );
    let same = render_text(&diff(&sample(), "a", &sample(), "a"));
    assert!(same.ends_with("no site changed\n"), "{same}");
}

#[test]
fn folded_stacks_carry_both_sides() {
    let text = render_collapsed(&sample(), &later());
    assert!(
        text.contains("__libc_start_call_main;main;make_leak;fill 1000 5000\n"),
        "{text}"
    );
    assert!(text.contains("main;Widget::make() 48 0\n"), "{text}");
    assert!(text.contains("grow 0 10\n"), "{text}");
}

#[test]
fn the_json_has_its_schema() {
    let v = serde_json::to_value(diff(&sample(), "a", &later(), "b")).expect("json");
    assert_eq!(v["schema"], "memtrace-diff/1");
    assert_eq!(v["sites"][0]["bytes_growth"], 4000);
    assert_eq!(v["sites"][0]["stack"][0]["function"], "fill");
}
