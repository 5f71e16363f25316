//! The process's memory as the kernel shows it (`/proc/PID/smaps`, its open files),
//! for the sink ([`super::Sink::memory`]): what the mappings still live map, how much
//! of them is resident, whether their descriptors are open. Read at every scan,
//! every thread stopped: the scan at the end (at `_exit`, at the exit stop, before a
//! detach) is the last moment the process is there with its mappings.

use super::Tracer;
use crate::procmem::ProcMemory;

impl Tracer<'_> {
    /// memtrace's own pages in the target: scratch pages, the recorder's memory.
    pub(super) fn own_ranges(&self) -> Vec<(u64, u64)> {
        self.scratch
            .ranges()
            .chain(self.rec.iter().flat_map(|r| r.ring.addrs.ranges()))
            .collect()
    }

    /// Reads the process's memory and hands it to the sink; `stack_pointers` are
    /// the stopped threads'.
    pub(super) fn tell_memory(&mut self, own: &[(u64, u64)], stack_pointers: Vec<u64>) {
        match ProcMemory::read(self.pid, own) {
            Ok(mut m) => {
                if !stack_pointers.is_empty() {
                    m.stack_pointers = stack_pointers;
                }
                self.sink.memory(m);
            }
            // Gone meanwhile: the mappings are reported as their calls made them.
            Err(e) => eprintln!(
                "memtrace: warning: cannot read the memory map of {}: {e}",
                self.pid
            ),
        }
    }
}
