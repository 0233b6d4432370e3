//! (being written)

use std::sync::Arc;

use axum::Router;

use crate::server::http::AppState;

/// The routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
}
