use super::*;
use crate::report::testing::sample;
use flate2::read::GzDecoder;
use std::io::Read;

/// Gunzips and decodes what `write_pprof` wrote.
fn decode(report: &Report) -> Profile {
    let mut gz = Vec::new();
    write_pprof(report, &mut gz).expect("write");
    let mut raw = Vec::new();
    GzDecoder::new(&gz[..]).read_to_end(&mut raw).expect("gzip");
    Profile::decode(&raw[..]).expect("protobuf")
}

/// Each sample as (function names leaf first, one per line, values, kind label).
fn samples(p: &Profile) -> Vec<(Vec<String>, Vec<i64>, Option<String>)> {
    let s = |i: i64| p.string_table[i as usize].clone();
    let function = |id: u64| {
        let f = p.function.iter().find(|f| f.id == id).expect("function");
        s(f.name)
    };
    p.sample
        .iter()
        .map(|smp| {
            let names = smp
                .location_id
                .iter()
                .flat_map(|id| {
                    let loc = p.location.iter().find(|l| l.id == *id).expect("location");
                    let mut names: Vec<String> =
                        loc.line.iter().map(|l| function(l.function_id)).collect();
                    if names.is_empty() {
                        names.push(format!("{:#x}", loc.address));
                    }
                    names
                })
                .collect();
            let kind = smp.label.first().map(|l| s(l.str));
            (names, smp.value.clone(), kind)
        })
        .collect()
}

#[test]
fn live_bytes_sit_on_their_stacks_with_their_kind() {
    let p = decode(&sample());
    let types: Vec<(String, String)> = p
        .sample_type
        .iter()
        .map(|t| {
            (
                p.string_table[t.r#type as usize].clone(),
                p.string_table[t.unit as usize].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = SAMPLE_TYPES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(types, expected);
    assert_eq!(
        p.string_table[p.default_sample_type as usize],
        "inuse_space"
    );
    assert_eq!(p.string_table[0], "");
    let s = samples(&p);
    let live = |name: &str| {
        s.iter()
            .find(|(names, v, _)| names[0] == name && v[3] > 0)
            .cloned()
            .unwrap_or_else(|| panic!("no live sample at {name}: {s:?}"))
    };
    let (names, values, kind) = live("fill");
    assert_eq!(
        names,
        ["fill", "make_leak", "main", "__libc_start_call_main"]
    );
    assert_eq!(values, [0, 0, 1, 1000]);
    assert_eq!(kind.as_deref(), Some("definite"));
    let (names, values, kind) = live("Widget::make()");
    assert_eq!(names, ["Widget::make()", "main"]);
    assert_eq!(values, [0, 0, 1, 48]);
    assert_eq!(kind.as_deref(), Some("reachable"));
    // A frame with no function: its address, in its object's mapping.
    let (names, values, _) = live("0x7f1c2a500000");
    assert_eq!(names, ["0x7f1c2a500000", "0x1234"]);
    assert_eq!(values, [0, 0, 2, 130]);
}

#[test]
fn allocations_come_from_the_allocation_sites() {
    let r = sample();
    let s = samples(&decode(&r));
    let allocated: Vec<(Vec<String>, i64, i64)> = s
        .iter()
        .filter(|(_, v, _)| v[0] > 0)
        .map(|(n, v, _)| (n.clone(), v[0], v[1]))
        .collect();
    assert_eq!(allocated.len(), r.allocation_sites.len());
    assert!(allocated.contains(&(
        vec![
            "fill".into(),
            "make_leak".into(),
            "main".into(),
            "__libc_start_call_main".into()
        ],
        5,
        1_233_000
    )));
    // The site whose stack was not recorded.
    assert!(allocated.contains(&(vec![NOT_RECORDED.to_string()], 3, 1000)));
    let total: i64 = s.iter().map(|(_, v, _)| v[1]).sum();
    assert_eq!(total, 1_234_567);
}

#[test]
fn inlined_frames_share_a_location_and_names_keep_their_symbols() {
    let p = profile(&sample());
    let fill = p
        .function
        .iter()
        .find(|f| p.string_table[f.name as usize] == "fill")
        .expect("fill");
    let loc = p
        .location
        .iter()
        .find(|l| l.line.first().map(|l| l.function_id) == Some(fill.id))
        .expect("fill's location");
    // fill (util.h:4) inlined into make_leak (leak.c:12), at one address.
    assert_eq!(loc.line.len(), 2);
    assert_eq!((loc.line[0].line, loc.line[1].line), (4, 12));
    assert_eq!(loc.address, 0x55d0c0a0116e);
    let mapping = p
        .mapping
        .iter()
        .find(|m| m.id == loc.mapping_id)
        .expect("mapping");
    assert_eq!(p.string_table[mapping.filename as usize], "/src/leak");
    let widget = p
        .function
        .iter()
        .find(|f| p.string_table[f.name as usize] == "Widget::make()")
        .expect("widget");
    assert_eq!(
        p.string_table[widget.system_name as usize],
        "_ZN6Widget4makeEv"
    );
    assert_eq!(p.string_table[widget.filename as usize], "/src/widget.cc");
    // Every location and function is written once, and ids start at 1.
    assert_eq!(p.location.iter().map(|l| l.id).min(), Some(1));
    let mut ids: Vec<u64> = p.location.iter().map(|l| l.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), p.location.len());
}

/// The top-level field numbers, read from the wire without prost: a check of the
/// derive's tags against profile.proto's.
#[test]
fn the_wire_format_has_profile_protos_field_numbers() {
    let bytes = profile(&sample()).encode_to_vec();
    let mut fields: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut i = 0;
    let varint = |i: &mut usize| {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let b = bytes[*i];
            *i += 1;
            v |= u64::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return v;
            }
        }
    };
    while i < bytes.len() {
        let key = varint(&mut i);
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut i);
                fields.push((number, Vec::new()));
            }
            2 => {
                let len = varint(&mut i) as usize;
                fields.push((number, bytes[i..i + len].to_vec()));
                i += len;
            }
            other => panic!("unexpected wire type {other}"),
        }
    }
    let strings: Vec<String> = fields
        .iter()
        .filter(|(n, _)| *n == 6)
        .map(|(_, b)| String::from_utf8(b.clone()).expect("UTF-8"))
        .collect();
    // string_table = 6, and its first entry is "".
    assert_eq!(strings[0], "");
    assert!(strings.iter().any(|s| s == "inuse_space"));
    // sample_type = 1, sample = 2, mapping = 3, location = 4, function = 5,
    // duration_nanos = 10, period_type = 11, period = 12, comment = 13,
    // default_sample_type = 14.
    let mut numbers: Vec<u64> = fields.iter().map(|(n, _)| *n).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 10, 11, 12, 13, 14]);
}
