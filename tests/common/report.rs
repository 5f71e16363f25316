//! Reading memtrace's JSON report (`memtrace-report/1`, see CONTRACT.md).

use serde_json::Value;

use super::basename;

/// The `totals` that must equal valgrind's HEAP SUMMARY (peak excluded: valgrind has none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocs: u64,
    pub frees: u64,
    pub bytes_allocated: u64,
    pub live_blocks: u64,
    pub live_bytes: u64,
}

/// One stack frame of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub address: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u64>,
    pub object: Option<String>,
}

impl Frame {
    /// `file:line` with the file's directories dropped, `?` where unknown.
    pub fn short(&self) -> String {
        format!(
            "{} ({}:{}) in {}",
            self.function.as_deref().unwrap_or("?"),
            self.file.as_deref().map(basename).unwrap_or("?"),
            self.line
                .map(|l| l.to_string())
                .unwrap_or_else(|| "?".into()),
            self.object.as_deref().unwrap_or("?"),
        )
    }
}

/// One `leaks[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    pub kind: String,
    pub blocks: u64,
    pub bytes: u64,
    /// For a definite leak, the bytes lost through it (0 when the report omits it).
    pub indirect_bytes: u64,
    pub stack: Vec<Frame>,
}

fn field<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(value, |v, key| &v[key])
}

fn u64_field(value: &Value, path: &str) -> u64 {
    field(value, path)
        .as_u64()
        .unwrap_or_else(|| panic!("field {path} is not an unsigned integer in {value}"))
}

fn optional_string(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The report's `totals`.
pub fn totals(report: &Value) -> Totals {
    Totals {
        allocs: u64_field(report, "totals.allocs"),
        frees: u64_field(report, "totals.frees"),
        bytes_allocated: u64_field(report, "totals.bytes_allocated"),
        live_blocks: u64_field(report, "totals.live_blocks"),
        live_bytes: u64_field(report, "totals.live_bytes"),
    }
}

fn frame(value: &Value) -> Frame {
    Frame {
        address: optional_string(value, "address")
            .unwrap_or_else(|| panic!("a frame without an address: {value}")),
        function: optional_string(value, "function"),
        file: optional_string(value, "file"),
        line: value.get("line").and_then(Value::as_u64),
        object: optional_string(value, "object"),
    }
}

/// A stack (`stack`, `alloc_stack`, ...) as frames.
pub fn stack(value: &Value) -> Vec<Frame> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("a stack that is not an array: {value}"))
        .iter()
        .map(frame)
        .collect()
}

/// The report's `leaks`.
pub fn leaks(report: &Value) -> Vec<Leak> {
    field(report, "leaks")
        .as_array()
        .unwrap_or_else(|| panic!("report leaks is not an array"))
        .iter()
        .map(|leak| Leak {
            kind: optional_string(leak, "kind")
                .unwrap_or_else(|| panic!("a leak without kind: {leak}")),
            blocks: u64_field(leak, "blocks"),
            bytes: u64_field(leak, "bytes"),
            indirect_bytes: leak["indirect_bytes"].as_u64().unwrap_or(0),
            stack: stack(&leak["stack"]),
        })
        .collect()
}

/// `end.how`, `end.code`, `end.signal`.
pub fn end(report: &Value) -> (String, Option<i64>, Option<String>) {
    let end = &report["end"];
    (
        end["how"]
            .as_str()
            .unwrap_or_else(|| panic!("report has no end.how: {report}"))
            .to_string(),
        end["code"].as_i64(),
        end["signal"].as_str().map(str::to_string),
    )
}

/// The contract's shape, checked on every report a test reads.
pub fn check_shape(report: &Value) {
    assert_eq!(report["schema"], "memtrace-report/1", "schema of {report}");
    assert!(report["target"]["pid"].is_u64(), "target.pid");
    assert!(report["target"]["argv"].is_array(), "target.argv");
    let (how, code, signal) = end(report);
    match how.as_str() {
        "exited" => assert!(
            code.is_some() && signal.is_none(),
            "end of an exit: {}",
            report["end"]
        ),
        "signaled" => assert!(
            code.is_none() && signal.is_some(),
            "end of a signal: {}",
            report["end"]
        ),
        "detached" => {}
        other => panic!("end.how {other:?} is none of exited, signaled, detached"),
    }
    let totals = totals(report);
    let leaks = leaks(report);
    let kinds = [
        "definite",
        "indirect",
        "possible",
        "reachable",
        "unclassified",
    ];
    for leak in &leaks {
        assert!(
            kinds.contains(&leak.kind.as_str()),
            "leak kind {:?}",
            leak.kind
        );
        assert!(leak.blocks > 0, "a leak entry of no blocks: {leak:?}");
    }
    let bytes: Vec<u64> = leaks.iter().map(|l| l.bytes).collect();
    assert!(
        bytes.windows(2).all(|w| w[0] >= w[1]),
        "leaks are not largest first: {bytes:?}"
    );
    let blocks: u64 = leaks.iter().map(|l| l.blocks).sum();
    let sum: u64 = bytes.iter().sum();
    assert_eq!(
        (blocks, sum),
        (totals.live_blocks, totals.live_bytes),
        "the leaks do not add up to the live totals"
    );
    assert!(report["errors"].is_array(), "errors is not an array");
}

/// One `errors[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeapError {
    pub kind: String,
    pub address: String,
    pub stack: Vec<Frame>,
    pub alloc_stack: Vec<Frame>,
    pub first_free_stack: Vec<Frame>,
    /// Extensions: where the address lies, and how many times it happened.
    pub description: String,
    pub count: u64,
}

/// The report's `errors`.
pub fn errors(report: &Value) -> Vec<HeapError> {
    field(report, "errors")
        .as_array()
        .unwrap_or_else(|| panic!("report errors is not an array"))
        .iter()
        .map(|e| HeapError {
            kind: optional_string(e, "kind")
                .unwrap_or_else(|| panic!("an error without kind: {e}")),
            address: optional_string(e, "address")
                .unwrap_or_else(|| panic!("an error without address: {e}")),
            stack: stack(&e["stack"]),
            alloc_stack: stack(&e["alloc_stack"]),
            first_free_stack: stack(&e["first_free_stack"]),
            description: optional_string(e, "description").unwrap_or_default(),
            count: u64_field(e, "count"),
        })
        .collect()
}

/// What two runs of the same deterministic program must agree on whatever way the
/// calls were recorded: how it ended, the totals (but the peak), the leaks (kind, blocks, bytes,
/// and each frame's function, file, line and object), the errors and the mappings
/// (with the mapping calls counted), in a stable order. Addresses (which ASLR moves), times and the tracer's own figures are
/// left out.
pub fn comparable(report: &Value) -> Value {
    let frames = |v: &Value| -> Value {
        Value::Array(
            v.as_array()
                .map(|a| {
                    a.iter()
                        .map(|f| {
                            serde_json::json!([f["function"], f["file"], f["line"], f["object"]])
                        })
                        .collect()
                })
                .unwrap_or_default(),
        )
    };
    let mut leaks: Vec<Value> = report["leaks"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|l| {
                    serde_json::json!({
                        "kind": l["kind"], "blocks": l["blocks"], "bytes": l["bytes"],
                        "indirect_bytes": l["indirect_bytes"], "stack": frames(&l["stack"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    leaks.sort_by_key(|v| v.to_string());
    let mut errors: Vec<Value> = report["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    serde_json::json!({
                        "kind": e["kind"], "count": e["count"], "block_size": e["block_size"],
                        "stack": frames(&e["stack"]),
                        "alloc_stack": frames(&e["alloc_stack"]),
                        "first_free_stack": frames(&e["first_free_stack"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    errors.sort_by_key(|v| v.to_string());
    // The mappings the program made and kept, as the leaks (resident sizes and
    // addresses are left out: they depend on where the kernel put things).
    let mut mappings: Vec<Value> = report["mappings"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    let mut prot: Vec<String> = m["prot"]
                        .as_array()
                        .map(|p| {
                            p.iter()
                                .filter_map(|s| s.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default();
                    prot.sort();
                    serde_json::json!({
                        "kind": m["kind"], "name": m["name"], "count": m["count"],
                        "bytes": m["bytes"], "prot": prot,
                        "descriptor_open": m["descriptor_open"], "stack": frames(&m["stack"]),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    mappings.sort_by_key(|v| v.to_string());
    // The peak depends on how threads interleaved, which no two runs share.
    let mut totals = report["totals"].clone();
    if let Some(t) = totals.as_object_mut() {
        t.remove("peak_live_bytes");
    }
    serde_json::json!({
        "end": report["end"],
        "totals": totals,
        "leaks": leaks,
        "errors": errors,
        "mappings": mappings,
        "mapping_totals": report["mapping_totals"],
        "scanned": report["scan"].is_object(),
    })
}
