//! The server role. For now: its store, the only module that touches the
//! database.

pub mod poll;
pub mod store;
