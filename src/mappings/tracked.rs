//! What a trace's sink keeps of the mappings: the model, fed with the trace's
//! events, and the kernel's view of the process read last (see
//! [`crate::tracer::Sink::memory`]), for the report and the live view.

use super::model::Mappings;
use super::resolve::{self, Group};
use super::sysv;
use crate::event::{Event, MapCall, MapSource};
use crate::procmem::ProcMemory;

#[derive(Debug, Default)]
pub struct Tracked {
    pub model: Mappings,
    /// `/proc/PID/smaps` and the open files, as read at the last scan (at the end
    /// of the trace: at the exit, or before the detach).
    pub memory: Option<ProcMemory>,
}

impl Tracked {
    /// `attached`: the mappings made before the trace are unknown.
    pub fn new(attached: bool) -> Tracked {
        Tracked {
            model: if attached {
                Mappings::attached()
            } else {
                Mappings::new()
            },
            memory: None,
        }
    }

    pub fn event(&mut self, ev: &Event, now_ns: u64) {
        match ev {
            Event::Mapping(call) => {
                self.model.set_now(now_ns);
                match *call {
                    // shmat does not say how much it mapped: the segment's size.
                    MapCall::Map {
                        source: MapSource::Sysv(id),
                        len: 0,
                        ..
                    } => {
                        let mut sized = call.clone();
                        if let (MapCall::Map { len, .. }, Some(size)) =
                            (&mut sized, sysv::segment_size(id))
                        {
                            *len = size;
                        }
                        self.model.apply(&sized);
                    }
                    _ => self.model.apply(call),
                }
            }
            Event::Exec => {
                self.model.exec();
                self.memory = None;
            }
            _ => {}
        }
    }

    pub fn memory(&mut self, m: ProcMemory) {
        self.memory = Some(m);
    }

    /// The live mappings, grouped for the report.
    pub fn groups(&self) -> Vec<Group> {
        resolve::groups(&self.model, self.memory.as_ref())
    }
}
