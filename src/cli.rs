//! The command line (see the contract: `memtrace launch [OPTIONS] [--] PROGRAM [ARGS...]`).

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "memtrace",
    version,
    about = "Find memory leaks in a running Linux program, from the outside, with ptrace",
    long_about = "Find memory leaks in a Linux program without recompiling it or preloading \
                  anything: memtrace plants breakpoints on the allocator (malloc, calloc, \
                  realloc, the memalign family, free, C++ operator new/delete), keeps a table \
                  of every live block, and reports what is still allocated at the end, \
                  grouped by allocation site."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start PROGRAM under trace and follow it to its end.
    Launch(LaunchArgs),
    /// Trace the running process PID and all its threads; detach (leaving it exactly
    /// as it was) on --duration, Ctrl-C, SIGINT, SIGTERM, SIGHUP or its exit.
    Attach(AttachArgs),
}

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// No live terminal UI, even on a terminal (the text report goes to stderr).
    #[arg(long)]
    pub no_tui: bool,
    /// Write the final report as JSON (schema memtrace-report/1) to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Exit with N when the report has a leak of kind definite or unclassified, or any
    /// heap error.
    #[arg(long, value_name = "N")]
    pub error_exitcode: Option<i32>,
    /// Stack frames (return addresses) kept per allocator call; a deeper stack is cut
    /// and counted in the report.
    #[arg(long, value_name = "N", default_value_t = crate::tracer::DEFAULT_DEPTH as u32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub depth: u32,
    /// Microseconds the tracer polls for the target's next stop before sleeping. A
    /// sleeping tracer must be woken for every stop, which costs tens of microseconds
    /// on a VM; polling costs CPU while the program runs without allocating. 0: sleep.
    #[arg(long, value_name = "US", default_value_t = 200)]
    pub poll_us: u64,
    /// End the trace after SECS seconds (attach: detach; launch: report what is live,
    /// then let the program run on untraced).
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub duration: Option<f64>,
    /// In the report, count per allocation site the live blocks at least SECS seconds
    /// old when the trace ended.
    #[arg(long, value_name = "SECS", value_parser = seconds)]
    pub min_age: Option<f64>,
    /// Stop the program at every allocator call (one ptrace stop each, as breakpoint
    /// debuggers do) instead of recording the calls inside it: much slower, the same
    /// report.
    #[arg(long)]
    pub stops: bool,
    /// How long to wait for a thread to stop (to attach, scan, pause, detach) before
    /// going on without it: a thread in uninterruptible sleep (a hung NFS or FUSE
    /// file) does not stop until the kernel lets it go. Ctrl-C stops the wait too.
    #[arg(long, value_name = "SECS", value_parser = seconds, default_value_t = 2.0)]
    pub stop_timeout: f64,
}

/// A number of seconds: finite, not negative.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    #[command(flatten)]
    pub common: Common,
    /// The process to trace.
    #[arg(value_name = "PID")]
    pub pid: i32,
}

#[derive(Args, Debug)]
pub struct LaunchArgs {
    #[command(flatten)]
    pub common: Common,
    /// Stop the program at the first allocation made from SPEC, a source line
    /// (`leak.c:12`) or a function (`make_leak`), and open the debugger there: the
    /// TUI's stopped view, or without the TUI the commands of --commands (by default
    /// `bt`, then continue). May be given more than once; each stops once.
    #[arg(long, value_name = "SPEC")]
    pub break_at: Vec<String>,
    /// With --break-at: run the debugger commands in FILE (one a line: bt, regs,
    /// disas, list, step, next, stepi, nexti, finish, up, down, info block,
    /// info thread, set syntax att|intel, continue) and print their output on stderr.
    #[arg(long, value_name = "FILE", requires = "break_at")]
    pub commands: Option<PathBuf>,
    /// The program to run, then its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_takes_the_program_and_its_own_flags() {
        let cli = Cli::try_parse_from([
            "memtrace", "launch", "--no-tui", "--json", "r.json", "--", "./app", "-x", "--y",
        ])
        .unwrap();
        let Command::Launch(a) = cli.command else {
            panic!("not launch");
        };
        assert!(a.common.no_tui);
        assert_eq!(a.common.json, Some(PathBuf::from("r.json")));
        assert_eq!(a.common.depth, 32);
        assert_eq!(a.command, ["./app", "-x", "--y"]);
    }

    #[test]
    fn program_flags_are_not_ours_even_without_double_dash() {
        let cli = Cli::try_parse_from(["memtrace", "launch", "./app", "--json", "x"]).unwrap();
        let Command::Launch(a) = cli.command else {
            panic!("not launch");
        };
        assert_eq!(a.common.json, None);
        assert_eq!(a.command, ["./app", "--json", "x"]);
    }

    #[test]
    fn break_at_and_commands() {
        let cli = Cli::try_parse_from([
            "memtrace",
            "launch",
            "--break-at",
            "leak.c:12",
            "--commands",
            "c.txt",
            "./app",
        ])
        .unwrap();
        let Command::Launch(a) = cli.command else {
            panic!("not launch");
        };
        assert_eq!(a.break_at, ["leak.c:12"]);
        assert_eq!(a.commands, Some(PathBuf::from("c.txt")));
        assert!(Cli::try_parse_from(["memtrace", "launch", "--commands", "c", "./app"]).is_err());
    }

    #[test]
    fn attach_takes_a_pid_and_times() {
        let cli = Cli::try_parse_from([
            "memtrace",
            "attach",
            "--duration",
            "2.5",
            "--min-age",
            "1",
            "42",
        ])
        .unwrap();
        let Command::Attach(a) = cli.command else {
            panic!("not attach");
        };
        assert_eq!(
            (a.pid, a.common.duration, a.common.min_age),
            (42, Some(2.5), Some(1.0))
        );
        assert!(Cli::try_parse_from(["memtrace", "attach", "--duration", "-1", "42"]).is_err());
        assert!(Cli::try_parse_from(["memtrace", "attach", "x"]).is_err());
    }

    #[test]
    fn depth_zero_is_refused() {
        assert!(Cli::try_parse_from(["memtrace", "launch", "--depth", "0", "x"]).is_err());
    }
}
