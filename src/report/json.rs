//! The report as JSON (`memtrace-report/1`), for scripts and CI.

use super::Report;
use std::io::{BufWriter, Write};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{check_golden, sample};

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
        // The symbol offset is for the text report only.
        assert!(v["leaks"][0]["stack"][3].get("symbol_offset").is_none());
    }

    #[test]
    fn unwritable_path_is_an_error() {
        let r = sample();
        assert!(write_json(&r, Path::new("/nonexistent/dir/r.json")).is_err());
    }
}
