//! The program images a trace went through: the traced process's first, and one
//! more at each exec. A launched `#!` script starts in its interpreter (the script's
//! own exec shows the interpreter's image), and a wrapper such as a version manager's
//! shim execs the real program after a few of these; the report covers the last one
//! and names them all.

use serde::{Deserialize, Serialize};

/// One image: the executable file (`/proc/PID/exe`) and the arguments it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecImage {
    pub exe: String,
    pub argv: Vec<String>,
}

impl ExecImage {
    /// The image `pid` runs now (read at its exec stop, or at attach). Fields that
    /// cannot be read are left empty: the trace does not depend on them.
    pub fn of(pid: i32) -> ExecImage {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let argv = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| split_cmdline(&b))
            .unwrap_or_default();
        ExecImage { exe, argv }
    }
}

/// `/proc/PID/cmdline`: arguments each ended by a NUL (empty ones included).
pub fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_cmdline_keeping_empty_arguments() {
        assert_eq!(split_cmdline(b"sh\0-c\0\0x\0"), ["sh", "-c", "", "x"]);
        assert!(split_cmdline(b"").is_empty());
    }

    #[test]
    fn reads_our_own_image() {
        let me = ExecImage::of(std::process::id() as i32);
        assert_eq!(
            std::path::Path::new(&me.exe),
            std::env::current_exe().unwrap()
        );
        assert!(!me.argv.is_empty());
    }
}
