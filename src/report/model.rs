//! The report's data, in the shape of the JSON contract (`memtrace-report/1`): written
//! at the end of a trace, and read back by `memtrace report` to be rendered again.
//!
//! Reading is lenient where the contract allows: every extension field has a default,
//! so a report that carries only the contract's fields (or one from an older memtrace)
//! loads.

use crate::heap::Totals;
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "memtrace-report/1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    pub target: Target,
    pub end: End,
    pub totals: Totals,
    pub leaks: Vec<Leak>,
    pub errors: Vec<HeapError>,
    /// Extension: how much of the trace could not be accounted for exactly.
    #[serde(default)]
    pub stats: Stats,
    /// Extension: what the tracer did (breakpoint hits, returns caught, threads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<crate::tracer::TraceStats>,
    /// Extension: the reachability scan that gave the leaks their kinds (time, bytes
    /// read), when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<crate::tracer::ScanStats>,
    /// Extension: why no scan was made, when leaks are `unclassified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_missing: Option<String>,
    /// Extension: how long the trace lasted, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Extension: `--min-age`, in milliseconds (see `Leak::older_than_min_age`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_age_ms: Option<u64>,
    /// Extension: every allocation stack of the trace with what it allocated in all
    /// (freed or not), largest `bytes` first: the "allocated" side of a profile. An
    /// empty stack means that the stack was not recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allocation_sites: Vec<AllocationSite>,
    /// Extension: the findings that suppressions hid, per suppression name. They
    /// are not in `leaks` or `errors`; the blocks and bytes of `leaks` plus those
    /// here add up to `live_blocks` and `live_bytes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed: Vec<Suppressed>,
    /// The mappings the program made itself (mmap, mremap, shmat) that were still
    /// mapped when the trace ended, grouped by stack and backing, largest `bytes`
    /// first (the contract's `mappings`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mappings: Vec<super::mappings::Mapping>,
    /// Extension: the trace's mapping calls counted (maps, unmaps, bytes mapped,
    /// unmaps of unknown memory...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_totals: Option<crate::mappings::MapTotals>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub pid: i32,
    pub argv: Vec<String>,
    /// `launch` or `attach`.
    pub mode: String,
    /// Extension: the images the process ran, in order, each with its executable
    /// and arguments (a `#!` script starts in its interpreter; each exec adds one).
    /// The report covers the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<crate::tracer::ExecImage>,
}

/// How the trace ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// `exited`, `signaled` or `detached`.
    pub how: String,
    pub code: Option<i32>,
    /// Signal name, such as `"SIGSEGV"`.
    pub signal: Option<String>,
}

/// Live blocks sharing one allocation stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leak {
    /// `definite`, `indirect`, `possible`, `reachable`, or `unclassified` (no scan made).
    pub kind: String,
    pub blocks: u64,
    pub bytes: u64,
    /// Extension: for `definite` leaks, the bytes of the `indirect` blocks lost only
    /// through these (valgrind's "(N direct, M indirect)"); omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub indirect_bytes: u64,
    pub stack: Vec<JsonFrame>,
    /// Extension: the allocator function called, as its symbol is spelled (`malloc`,
    /// `calloc`, `_Znwm`...): the frame valgrind shows above `stack`'s first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator: Option<String>,
    /// Extension: the address of the oldest of these blocks (hex), to find it in the
    /// program (a debugger's `finish` at this site prints the same pointer).
    #[serde(default)]
    pub oldest_block: String,
    /// Extension: when the oldest and the youngest of these blocks were allocated,
    /// in milliseconds since the trace began.
    #[serde(default)]
    pub first_alloc_ms: u64,
    #[serde(default)]
    pub last_alloc_ms: u64,
    /// Extension: these blocks' bytes per second of trace: how fast the site's live
    /// bytes grew over the whole trace...
    #[serde(default)]
    pub growth_bytes_per_sec: u64,
    /// ...and over its last third. A steady leak grows at about the same rate in
    /// both; a cache that filled up and stopped has ~0 here.
    #[serde(default)]
    pub recent_growth_bytes_per_sec: u64,
    /// Extension: the blocks at least `--min-age` old when the trace ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_min_age: Option<BlocksBytes>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlocksBytes {
    pub blocks: u64,
    pub bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JsonFrame {
    /// Hex, `"0x55d0c0a01182"`.
    pub address: String,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub object: Option<String>,
    /// Extension: this frame was inlined into the next one (they share the
    /// address); omitted when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub inlined: bool,
    /// Extension: the function's symbol as the object spells it (`_ZN3foo3barEi`),
    /// where that differs from `function`: what valgrind suppressions match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mangled: Option<String>,
    /// Extension: offset from the symbol start when `function` is a bare ELF symbol,
    /// for the text report's `name+0x1c` (`function` stays the plain name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symbol_offset: Option<u64>,
}

/// A double, invalid or mismatched free.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeapError {
    /// `double_free`, `invalid_free` or `mismatched_free`.
    pub kind: String,
    /// The pointer given to the deallocator.
    pub address: String,
    /// The bad call.
    pub stack: Vec<JsonFrame>,
    /// Where the block concerned was allocated (empty when there is no block).
    pub alloc_stack: Vec<JsonFrame>,
    /// Where a double-freed block was freed the first time (else empty).
    pub first_free_stack: Vec<JsonFrame>,
    /// Extension: the deallocator of the bad call (`free`, `_ZdlPv`...), the
    /// allocator of the block concerned, and the deallocator of a double free's
    /// first free: the frames valgrind shows above each stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deallocator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_deallocator: Option<String>,
    /// Extension: where the address lies, in valgrind's words (`is 8 bytes inside a
    /// block of size 48 alloc'd`).
    #[serde(default)]
    pub description: String,
    /// Extension: how many times this error happened with these same stacks.
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Frees by the program of pointers that were not live.
    pub frees_not_live: u64,
    /// Frees by the allocator itself of memory it never handed out.
    pub internal_frees: u64,
    /// Distinct stacks cut short by the depth limit or a failed unwind.
    pub truncated_stacks: u64,
    pub distinct_stacks: u64,
}

/// What one allocation stack allocated over the whole trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationSite {
    pub allocs: u64,
    /// The bytes those allocations asked for.
    pub bytes: u64,
    pub stack: Vec<JsonFrame>,
}

/// The findings one suppression hid.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suppressed {
    /// The suppression's name (its first line).
    pub name: String,
    /// Where it was read: `FILE:LINE`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub origin: String,
    /// Leak records and error occurrences it hid (valgrind's count).
    pub count: u64,
    /// The live blocks and bytes of the leaks it hid.
    pub blocks: u64,
    pub bytes: u64,
}
