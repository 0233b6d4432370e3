//! Operators: the admin account, UI sessions, API tokens (migration 3).

#[allow(unused_imports)]
use super::{Store, StoreError};
