//! The commands that trace nothing: `memtrace report` (render a saved report again,
//! or compare two), `memtrace completions` and `memtrace manpage`. No process, no
//! ptrace.

use crate::cli::{Cli, ReportArgs};
use crate::report::render::{self, DiffError};
use crate::report::{self, json, Report};
use crate::suppress::{apply::apply, Suppressions};
use clap::CommandFactory;
use std::io::{IsTerminal, Write};
use std::path::Path;

/// `memtrace report FILE [FILE2]`: the exit status.
pub fn report(args: &ReportArgs) -> i32 {
    match run_report(args) {
        Ok(code) => code,
        Err(Failure::Quiet) => 0,
        Err(Failure::Message(m, code)) => {
            eprintln!("memtrace: {m}");
            code
        }
    }
}

enum Failure {
    /// The reader went away (`| head`): nothing to say.
    Quiet,
    Message(String, i32),
}

fn usage(m: impl std::fmt::Display) -> Failure {
    Failure::Message(m.to_string(), 2)
}

fn run_report(args: &ReportArgs) -> Result<i32, Failure> {
    if args.error_exitcode.is_some() && args.files.len() > 1 {
        return Err(usage(
            "--error-exitcode judges one report, not a comparison",
        ));
    }
    if args.format.is_binary() && args.output.is_none() && std::io::stdout().is_terminal() {
        return Err(usage(
            "a pprof profile is binary: write it with -o PATH (or redirect standard output)",
        ));
    }
    let supps = Suppressions::load(&args.findings.suppressions).map_err(usage)?;
    let mut reports: Vec<Report> = Vec::new();
    for path in &args.files {
        let mut r = json::read_json(path).map_err(usage)?;
        apply(&mut r, &supps);
        reports.push(r);
    }
    let gen = args.findings.gen_suppressions();
    let format = args.format;
    let name = |p: &Path| p.display().to_string();
    let write = |out: &mut dyn Write| -> Result<(), DiffError> {
        match &reports[..] {
            [one] => render::render(one, format, gen, &args.findings.show_leak_kinds.0, out)?,
            [before, after] => render::render_diff(
                (before, &name(&args.files[0])),
                (after, &name(&args.files[1])),
                format,
                out,
            )?,
            _ => {}
        }
        Ok(())
    };
    let written = match &args.output {
        Some(path) => {
            let mut result = Ok(());
            let io = render::write_file(path, |out| {
                result = write(out);
                Ok(())
            });
            io.map_err(DiffError::Io).and(result).map_err(|e| match e {
                DiffError::Io(e) => {
                    Failure::Message(format!("cannot write {}: {e}", path.display()), 1)
                }
                other => usage(other),
            })
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            write(&mut out)
                .and_then(|()| out.flush().map_err(DiffError::Io))
                .map_err(|e| match e {
                    DiffError::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                        Failure::Quiet
                    }
                    DiffError::Io(e) => {
                        Failure::Message(format!("cannot write standard output: {e}"), 1)
                    }
                    other => usage(other),
                })
        }
    };
    written?;
    Ok(match &reports[..] {
        [one] => report::exit_code_for(
            one,
            0,
            args.error_exitcode,
            &args.findings.errors_for_leak_kinds.0,
        ),
        _ => 0,
    })
}

/// `memtrace completions SHELL`
pub fn completions(shell: clap_complete::Shell) -> i32 {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "memtrace", &mut std::io::stdout());
    0
}

/// `memtrace manpage [--dir DIR]`
pub fn manpage(dir: Option<&Path>) -> i32 {
    let result = match dir {
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
        Some(d) => clap_mangen::generate_to(Cli::command(), d),
    };
    match result {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("memtrace: cannot write the manual page: {e}");
            1
        }
    }
}
