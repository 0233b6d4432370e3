//! The server role. For now: its store, the only module that touches the
//! database.

pub mod http;
pub mod poll;
pub mod store;
