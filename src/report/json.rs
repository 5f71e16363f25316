//! The report as JSON (`memtrace-report/1`), for scripts and CI, and read back for
//! `memtrace report`.

use super::{Report, SCHEMA};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// The report, pretty printed, with a final newline.
pub fn to_json_string(report: &Report) -> serde_json::Result<String> {
    let mut s = serde_json::to_string_pretty(report)?;
    s.push('\n');
    Ok(s)
}

/// Writes the report to `path` (created or truncated).
pub fn write_json(report: &Report, path: &Path) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    serde_json::to_writer_pretty(&mut out, report)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Why a saved report cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a memtrace report: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: schema {found:?} is not {SCHEMA:?} (written by another version of memtrace?)", path.display())]
    Schema { path: PathBuf, found: String },
}

/// Reads a report written by `--json` (or by anything that follows the contract).
pub fn read_json(path: &Path) -> Result<Report, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_json_str(&text, path)
}

/// Parses a report; `path` only names it in errors.
pub fn from_json_str(text: &str, path: &Path) -> Result<Report, ReadError> {
    // The schema first, so that a report of another version says so rather than
    // failing on the first field it does not know.
    let schema = serde_json::from_str::<serde_json::Value>(text)
        .map_err(|source| ReadError::Invalid {
            path: path.to_path_buf(),
            source,
        })?
        .get("schema")
        .and_then(|s| s.as_str().map(String::from));
    match schema {
        Some(s) if s == SCHEMA => {}
        Some(found) => {
            return Err(ReadError::Schema {
                path: path.to_path_buf(),
                found,
            })
        }
        None => {
            return Err(ReadError::Schema {
                path: path.to_path_buf(),
                found: String::new(),
            })
        }
    }
    serde_json::from_str(text).map_err(|source| ReadError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::testing::{check_golden, sample};

    #[test]
    fn golden_json() {
        let s = to_json_string(&sample()).expect("serialize");
        check_golden("report.json", &s);
    }

    #[test]
    fn written_file_matches_string_and_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.json");
        let r = sample();
        write_json(&r, &path).expect("write");
        let text = std::fs::read_to_string(&path).expect("read back");
        assert_eq!(Some(text.as_str()), to_json_string(&r).ok().as_deref());
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["schema"], "memtrace-report/1");
        assert_eq!(v["end"]["signal"], "SIGSEGV");
        assert!(v["end"]["code"].is_null());
        assert_eq!(v["leaks"][0]["stack"][0]["line"], 4);
        // The symbol offset is an extension beside the plain name.
        let libc_start = &v["leaks"][0]["stack"][3];
        assert_eq!(libc_start["function"], "__libc_start_call_main");
        assert_eq!(libc_start["symbol_offset"], 0x80);
        assert!(v["leaks"][0]["stack"][0].get("symbol_offset").is_none());
        assert_eq!(v["leaks"][0]["allocator"], "malloc");
        assert_eq!(v["leaks"][2]["stack"][0]["mangled"], "_ZN6Widget4makeEv");
        assert_eq!(v["errors"][0]["deallocator"], "free");
        assert_eq!(v["allocation_sites"][1]["stack"], serde_json::json!([]));
    }

    #[test]
    fn a_saved_report_reads_back_the_same() {
        let r = sample();
        let text = to_json_string(&r).expect("serialize");
        let back = from_json_str(&text, Path::new("r.json")).expect("read back");
        assert_eq!(back, r);
    }

    #[test]
    fn a_report_with_only_the_contracts_fields_reads() {
        let text = r#"{"schema": "memtrace-report/1",
            "target": {"pid": 1234, "argv": ["./app", "x"], "mode": "launch"},
            "end": {"how": "exited", "code": 0, "signal": null},
            "totals": {"allocs": 4, "frees": 3, "bytes_allocated": 100,
                       "live_blocks": 1, "live_bytes": 30, "peak_live_bytes": 70},
            "leaks": [{"kind": "definite", "blocks": 1, "bytes": 30,
                "stack": [{"address": "0x55d0c0a01182", "function": "main",
                           "file": "/src/leak.c", "line": 3, "object": "/src/leak"}]}],
            "errors": []}"#;
        let r = from_json_str(text, Path::new("c.json")).expect("contract-only report");
        assert_eq!(r.leaks[0].stack[0].line, Some(3));
        assert_eq!(r.leaks[0].allocator, None);
        assert!(r.allocation_sites.is_empty());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let p = Path::new("x.json");
        let e = from_json_str("{not json", p).expect_err("not JSON");
        assert!(
            e.to_string().starts_with("x.json: not a memtrace report"),
            "{e}"
        );
        let e = from_json_str(r#"{"schema": "memtrace-maps/1"}"#, p).expect_err("schema");
        assert!(e.to_string().contains("\"memtrace-maps/1\""), "{e}");
        let e = from_json_str(r#"{"schema": "memtrace-report/1"}"#, p).expect_err("fields");
        assert!(e.to_string().contains("missing field"), "{e}");
        let e = read_json(Path::new("/nonexistent/r.json")).expect_err("no file");
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/r.json"),
            "{e}"
        );
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let r = sample();
        assert!(write_json(&r, Path::new("/nonexistent/dir/r.json")).is_err());
    }
}
