//! # tern-bench
//!
//! tern's bench lab, kept out of the product:
//!
//! * [`fixture`] loads the recorded engine responses in `tests/fixtures/`;
//! * [`baseline`] costs the same states the way Portainer's async agent
//!   sends them (gzip'd JSON, JSON-patch deltas), for comparison;
//! * [`scenarios`] costs both on the fixtures (criterion benches, budget
//!   tests, the fuzz seeds);
//! * [`wirebench`] is the on-wire benchmark (`tern-bench wire`,
//!   `tests/wire.rs`) and the link emulator the link-fault matrix runs on
//!   (`tests/link_faults`): namespaces, TUN devices, a NAT, a
//!   Portainer-emulating client and server.
//!
//! It uses `tern` only through its public API, as an operator's tooling
//! would.

#![warn(missing_docs)]

pub mod baseline;
pub mod fixture;
#[doc(hidden)]
pub mod scenarios;
#[cfg(target_os = "linux")]
pub mod wirebench;

/// The JSON-patch crate the baseline's deltas are made with, for tests that
/// look inside them.
pub use json_patch;
