//! The fleet: groups, tags and what an environment was created with (migration 4).

#[allow(unused_imports)]
use super::{Store, StoreError};
