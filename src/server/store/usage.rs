//! Data usage per environment and hour (migration 5).

#[allow(unused_imports)]
use super::{Store, StoreError};
