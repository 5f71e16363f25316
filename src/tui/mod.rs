//! The live terminal view: outstanding blocks by allocation site, as the program runs.
//!
//! The tracer side sends [`snapshot::Snapshot`]s a few times a second; [`app::App`]
//! keeps the view's state and turns keys into [`app::Request`]s for the tracer;
//! [`view::draw`] draws the state with ratatui and changes nothing. Frames are
//! symbolized by the UI side as they come into view, so the tracer never waits for it.
//! `m` switches to the mappings view ([`census_view`]): the process's memory by
//! kind, a census every second while it is shown ([`census`]).

pub mod app;
pub mod census;
pub mod census_view;
pub mod debugger;
pub mod feed;
pub mod live;
pub mod run;
pub mod sites;
pub mod snapshot;
pub mod stopped;
pub mod view;
