//! The command line (see the contract: `memtrace launch [OPTIONS] [--] PROGRAM [ARGS...]`).

use crate::report::render::{Format, Outputs};
use crate::suppress::LeakKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  memtrace launch --no-tui --json r.json -- ./app arg      trace ./app to its end
  memtrace attach --duration 60 --json r.json 1234         trace pid 1234 for a minute
  memtrace launch --error-exitcode 1 --suppressions libc.supp ./test   fail CI on a leak
  memtrace report r.json --format flamegraph -o r.svg      re-render a saved report
  memtrace report before.json after.json                   what grew between two
  memtrace maps 1234                                       what pid 1234's memory is
  memtrace completions bash > /etc/bash_completion.d/memtrace
";

const LAUNCH_EXAMPLES: &str = "\
Examples:
  memtrace launch ./app arg                         live view on a terminal
  memtrace launch --no-tui --json r.json ./app      text report on stderr, JSON too
  memtrace launch --xml vg.xml --pprof heap.pb.gz --flamegraph heap.svg ./app
  memtrace launch --error-exitcode 1 --suppressions /usr/libexec/valgrind/default.supp ./test
  memtrace launch --gen-suppressions=all --no-tui ./app   a suppression after each finding
  memtrace launch --break-at leak.c:12 ./app        stop in the debugger at that site
";

const ATTACH_EXAMPLES: &str = "\
Examples:
  memtrace attach 1234                              live view; q detaches
  memtrace attach --no-tui --duration 60 --min-age 30 --json r.json 1234
  memtrace attach --no-tui --duration 3600 --pprof heap.pb.gz 1234
";

const REPORT_EXAMPLES: &str = "\
Examples:
  memtrace report r.json                            the text report again
  memtrace report r.json --format flamegraph -o heap.svg
  memtrace report r.json --format pprof -o heap.pb.gz && go tool pprof -http=: heap.pb.gz
  memtrace report r.json --format valgrind-xml -o vg.xml
  memtrace report r.json --suppressions known.supp --error-exitcode 1
  memtrace report 09h00.json 10h00.json             what grew in that hour
  memtrace report a.json b.json --format flamegraph -o growth.svg
";

const MAPS_EXAMPLES: &str = "\
Examples:
  memtrace maps 1234                                what its memory is, largest first
  memtrace maps --json 1234 | jq '.groups[] | select(.kind == \"memfd\")'
";

#[derive(Parser, Debug)]
#[command(
    name = "memtrace",
    version,
    after_help = EXAMPLES,
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
    #[command(after_help = LAUNCH_EXAMPLES)]
    Launch(LaunchArgs),
    /// Trace the running process PID and all its threads; detach (leaving it exactly
    /// as it was) on --duration, Ctrl-C, SIGINT, SIGTERM, SIGHUP or its exit.
    #[command(after_help = ATTACH_EXAMPLES)]
    Attach(AttachArgs),
    /// Render a saved JSON report again, in any format, without running anything; or
    /// compare two reports: what grew from the first to the second, per site.
    #[command(after_help = REPORT_EXAMPLES)]
    Report(ReportArgs),
    /// Print a census of process PID's memory without tracing it: every mapping
    /// classified (heap, arena, stack, anonymous, image, file, memfd, posix_shm,
    /// sysv_shm, deleted_file, special), summed per kind and name, largest first.
    #[command(after_help = MAPS_EXAMPLES)]
    Maps(MapsArgs),
    /// Print the completion script of SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page memtrace(1), or write every page (memtrace.1,
    /// memtrace-launch.1...) into DIR.
    Manpage {
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// valgrind's `--gen-suppressions=<yes|no|all>` (`yes` asks nothing here: it is
/// `all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GenSuppressions {
    No,
    Yes,
    All,
}

/// What findings mean: suppressions and generated suppressions, for a trace's report
/// and for `memtrace report` alike.
#[derive(Args, Clone, Debug, Default)]
pub struct Findings {
    /// Leave out the leaks and errors a suppression in FILE matches (valgrind's
    /// format: Memcheck:Leak, Memcheck:Free; fun:, obj:, src:, ... with * and ?),
    /// and do not count them for --error-exitcode. May be given more than once.
    #[arg(long = "suppressions", value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// After each finding in the text (and XML) report, print a suppression that
    /// hides it, ready to paste into a suppressions file.
    #[arg(
        long,
        value_name = "WHEN",
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "all"
    )]
    pub gen_suppressions: Option<GenSuppressions>,
    /// The leak kinds --error-exitcode counts, valgrind's way: a list of definite,
    /// indirect, possible, reachable, or all, or none (an unclassified leak counts
    /// as definite; heap errors always count).
    #[arg(long, value_name = "KINDS", value_parser = leak_kinds, default_value = "definite")]
    pub errors_for_leak_kinds: LeakKinds,
    /// The leak kinds the valgrind XML lists (--xml, report --format valgrind-xml),
    /// as valgrind's own option: definite and possible unless told otherwise, so
    /// that what reads valgrind's XML sees what it would from valgrind. The text and
    /// JSON reports list every kind.
    #[arg(long, value_name = "KINDS", value_parser = leak_kinds, default_value = "definite,possible")]
    pub show_leak_kinds: LeakKinds,
}

/// The leak kinds `--error-exitcode` counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakKinds(pub Vec<LeakKind>);

impl Default for LeakKinds {
    fn default() -> Self {
        LeakKinds(vec![LeakKind::Definite])
    }
}

fn leak_kinds(s: &str) -> Result<LeakKinds, String> {
    crate::suppress::parse::leak_kinds(s).map(LeakKinds)
}

impl Findings {
    pub fn gen_suppressions(&self) -> bool {
        matches!(
            self.gen_suppressions,
            Some(GenSuppressions::Yes | GenSuppressions::All)
        )
    }
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A report written by --json; with a second one, what grew from the first to it.
    #[arg(value_name = "FILE", num_args = 1..=2, required = true)]
    pub files: Vec<PathBuf>,
    /// The format to write.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write to PATH instead of standard output.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub findings: Findings,
    /// Exit with N when the report (one report only) has a leak of kind definite or
    /// unclassified (see --errors-for-leak-kinds), or any heap error, after
    /// suppressions.
    #[arg(long, value_name = "N")]
    pub error_exitcode: Option<i32>,
}

#[derive(Args, Clone, Debug)]
pub struct Common {
    /// No live terminal UI, even on a terminal (the text report goes to stderr).
    #[arg(long)]
    pub no_tui: bool,
    /// Write the final report as JSON (schema memtrace-report/1) to PATH.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write an interactive flamegraph (SVG) of the live bytes by stack to PATH.
    #[arg(long, value_name = "PATH")]
    pub flamegraph: Option<PathBuf>,
    /// Write a pprof heap profile (gzip'd protobuf: go tool pprof, Pyroscope,
    /// Parca) of live and allocated bytes and blocks to PATH.
    #[arg(long, value_name = "PATH")]
    pub pprof: Option<PathBuf>,
    /// Write the leaks and errors in valgrind memcheck's XML (as --xml=yes does) to
    /// PATH.
    #[arg(long, value_name = "PATH")]
    pub xml: Option<PathBuf>,
    /// Write folded stacks of the live bytes (one line each) to PATH.
    #[arg(long, value_name = "PATH")]
    pub collapsed: Option<PathBuf>,
    #[command(flatten)]
    pub findings: Findings,
    /// Exit with N when the report has a leak of kind definite or unclassified (see
    /// --errors-for-leak-kinds), or any heap error, after suppressions.
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

impl Common {
    /// The files the report goes to.
    pub fn outputs(&self) -> Outputs {
        Outputs {
            json: self.json.clone(),
            flamegraph: self.flamegraph.clone(),
            pprof: self.pprof.clone(),
            xml: self.xml.clone(),
            collapsed: self.collapsed.clone(),
            gen_suppressions: self.findings.gen_suppressions(),
            xml_leak_kinds: self.findings.show_leak_kinds.0.clone(),
        }
    }
}

/// A number of seconds: finite, not negative.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

#[derive(Args, Debug)]
pub struct MapsArgs {
    /// Write the census as JSON (schema memtrace-maps/1) to standard output.
    #[arg(long)]
    pub json: bool,
    /// The process to look at.
    #[arg(value_name = "PID")]
    pub pid: i32,
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
    fn report_outputs_and_suppressions() {
        let cli = Cli::try_parse_from([
            "memtrace",
            "launch",
            "--flamegraph",
            "f.svg",
            "--pprof",
            "p.pb.gz",
            "--xml",
            "v.xml",
            "--collapsed",
            "c.txt",
            "--suppressions",
            "a.supp",
            "--suppressions",
            "b.supp",
            "--gen-suppressions",
            "./app",
            "--xml",
        ])
        .unwrap();
        let Command::Launch(a) = cli.command else {
            panic!("not launch");
        };
        let o = a.common.outputs();
        assert_eq!(o.flamegraph, Some(PathBuf::from("f.svg")));
        assert_eq!(o.pprof, Some(PathBuf::from("p.pb.gz")));
        assert_eq!(o.xml, Some(PathBuf::from("v.xml")));
        assert_eq!(o.collapsed, Some(PathBuf::from("c.txt")));
        assert!(o.gen_suppressions);
        assert_eq!(a.common.findings.suppressions.len(), 2);
        // The program's own flags stay its own, right after a flag with an optional
        // value.
        assert_eq!(a.command, ["./app", "--xml"]);
        let parse = |v: &str| {
            let cli = Cli::try_parse_from(["memtrace", "attach", v, "1"]).unwrap();
            let Command::Attach(a) = cli.command else {
                panic!("not attach");
            };
            a.common.findings.gen_suppressions()
        };
        assert!(parse("--gen-suppressions=all"));
        assert!(parse("--gen-suppressions=yes"));
        assert!(!parse("--gen-suppressions=no"));
        assert!(Cli::try_parse_from(["memtrace", "attach", "--gen-suppressions=x", "1"]).is_err());
        let kinds = |v: &[&str]| {
            let args = [&["memtrace", "report"][..], v, &["r.json"]].concat();
            let Command::Report(r) = Cli::try_parse_from(args).unwrap().command else {
                panic!("not report");
            };
            r.findings.errors_for_leak_kinds.0
        };
        assert_eq!(kinds(&[]), [LeakKind::Definite]);
        assert_eq!(
            kinds(&["--errors-for-leak-kinds", "definite,possible"]),
            [LeakKind::Definite, LeakKind::Possible]
        );
        assert_eq!(kinds(&["--errors-for-leak-kinds=all"]).len(), 4);
        assert!(
            Cli::try_parse_from(["memtrace", "report", "--errors-for-leak-kinds=lost", "r"])
                .is_err()
        );
    }

    #[test]
    fn report_takes_one_or_two_files_and_a_format() {
        let cli = Cli::try_parse_from([
            "memtrace",
            "report",
            "a.json",
            "--format",
            "valgrind-xml",
            "-o",
            "x.xml",
        ])
        .unwrap();
        let Command::Report(r) = cli.command else {
            panic!("not report");
        };
        assert_eq!(r.files, [PathBuf::from("a.json")]);
        assert_eq!(r.format, Format::ValgrindXml);
        assert_eq!(r.output, Some(PathBuf::from("x.xml")));
        let cli = Cli::try_parse_from(["memtrace", "report", "a.json", "b.json"]).unwrap();
        let Command::Report(r) = cli.command else {
            panic!("not report");
        };
        assert_eq!((r.files.len(), r.format), (2, Format::Text));
        assert!(Cli::try_parse_from(["memtrace", "report"]).is_err());
        assert!(Cli::try_parse_from(["memtrace", "report", "a", "b", "c"]).is_err());
        assert!(Cli::try_parse_from(["memtrace", "report", "a", "--format", "svg"]).is_err());
    }

    #[test]
    fn the_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn depth_zero_is_refused() {
        assert!(Cli::try_parse_from(["memtrace", "launch", "--depth", "0", "x"]).is_err());
    }
}
