//! The API's request and response types: every JSON body the REST API
//! (`/api/...`) takes or answers, one submodule an area, all re-exported
//! here, so `crate::server::api::types::X` names each of them.
//!
//! **What it owns.** The bodies' shape: their fields, doc comments and
//! serde attributes (what is required, what may be left out, what is
//! refused), and the small conversions between bodies that need nothing
//! else. The handlers in [`crate::server::api`] read and answer these
//! types; the CLI (`src/cli/`), `tern quickstart`
//! (`src/server/quickstart.rs`) and the web UI ([`crate::server::ui`])
//! read and write the API only through them, so a field renamed or retyped
//! here is a compile error on both sides instead of a blank on one.
//!
//! **What it must not touch.** No store (conversions from the store's
//! records, and checks against it, live with the handlers, e.g.
//! [`crate::server::api::view`]), no HTTP handlers, no axum extractors or
//! responses, no checks that answer an `ApiError`: only `serde` and the
//! protocol's own types.

mod access;
mod commands;
mod common;
mod fleet;
mod images;
mod jobs;
mod registries;
mod stacks;
mod state;
mod usage;

pub use self::access::*;
pub use self::commands::*;
pub use self::common::*;
pub use self::fleet::*;
pub use self::images::*;
pub use self::jobs::*;
pub use self::registries::*;
pub use self::stacks::*;
pub use self::state::*;
pub use self::usage::*;
