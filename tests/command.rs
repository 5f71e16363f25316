//! The detach command a UI thread sends (the TUI's `q`), on a real process: the
//! tracer thread detaches, and the process runs on to its normal end. Also: a
//! command sender that is dropped means detach too.
//!
//! No test harness (see Cargo.toml): `main` blocks SIGCHLD (by making the
//! tracer's waiter) before any other thread exists. A watchdog thread kills
//! everything if the test hangs.

mod common;

use common::attach::Background;
use common::{build_fixture, Exit, Target, DEBUG};
use memtrace::event::Event;
use memtrace::maps::Module;
use memtrace::ptrace::Waiter;
use memtrace::tracer::{Command, End, Sink, Tracer};
use std::time::Duration;

struct Count(u64);

impl Sink for Count {
    fn event(&mut self, _: Event) {
        self.0 += 1;
    }
    fn modules(&mut self, _: i32, _: &[Module], _: u32) {}
}

/// Attaches to a fixture, lets `ui` do what a UI thread would with the sender,
/// and checks that the trace ends detached and the process ends normally.
fn detach_by(how: &str, waiter: Waiter, ui: fn(memtrace::tracer::CommandSender)) {
    let target = Target::new(build_fixture("attach_loop", DEBUG))
        .arg("2")
        .arg("3");
    let bg = Background::start(&target);
    bg.wait_threads(3);
    let mut sink = Count(0);
    let mut tracer = Tracer::attach(bg.pid(), &mut sink, waiter, Default::default())
        .unwrap_or_else(|e| panic!("cannot attach: {e}"));
    let sender = tracer.command_sender();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        ui(sender);
    });
    let end = tracer.run().unwrap_or_else(|e| panic!("trace failed: {e}"));
    drop(tracer);
    let _ = thread.join();
    assert_eq!(end, End::Detached, "{how}");
    assert!(sink.0 > 0, "{how}: no event while attached");
    let finished = bg.finish();
    assert_eq!(finished.exit, Exit::Code(7), "{how}");
    assert!(
        finished.stdout.ends_with("done\n"),
        "{how}: {}",
        finished.stdout
    );
    println!("test {how} ... ok");
}

fn waiter() -> Waiter {
    Waiter::new(true).unwrap_or_else(|e| panic!("no waiter: {e}"))
}

fn main() {
    // First, while this is the only thread: every thread made later inherits the
    // blocked SIGCHLD.
    let first = waiter();
    // The whole binary's watchdog: a hang fails instead of blocking CI.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(120));
        eprintln!("tests/command.rs: timed out");
        std::process::exit(1);
    });
    detach_by("detach_command", first, |s| s.send(Command::Detach));
    detach_by("dropped_sender", waiter(), drop);
}
