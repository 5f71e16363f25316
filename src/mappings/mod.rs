//! Memory outside malloc: the mappings the program makes itself (mmap, mremap,
//! shmat...), kept like the heap's blocks, from the same events.
//!
//! - [`calls`]: what one call of a mapping function means (a [`crate::event::MapCall`]);
//! - [`model`]: the live mappings, split, merged, moved and replaced as the kernel
//!   does, with per-stack counts; pure (its range bookkeeping in `ranges.rs`);
//! - [`backing`]: what a line of `/proc/PID/maps` says a mapping maps (a memfd, a
//!   POSIX or System V shared memory segment, a file);
//! - [`resolve`]: the live mappings joined with the kernel's view at the end of the
//!   trace (backing, resident bytes, whether a descriptor is still open), grouped by
//!   stack and backing for the report;
//! - [`tracked`]: the model and that view, as a trace's sink keeps them; [`sysv`]:
//!   the size of a System V segment, which shmat does not tell.
//!
//! glibc's own mmap'd chunks and arenas are heap: their calls are nested in an
//! allocator call and never reach the model (see [`crate::recorder::calls`]).

pub mod backing;
pub mod calls;
pub mod model;
mod ranges;
pub mod resolve;
pub mod sysv;
pub mod tracked;

pub use model::{Live, MapSite, MapTotals, Mappings, PAGE};
pub use tracked::Tracked;
