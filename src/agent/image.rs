//! Images and engine answers the agent's commands share: the tag a bare
//! name pulls, the pull itself, and "the local image, pulled only when
//! missing" (stacks' services and jobs' helpers), so the stack deploy, the
//! job runner and the `ImagePull` command do it one way.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use futures_util::StreamExt;

use super::engine_error;
use crate::registry::registry_of;
use crate::wire::poll::RegistryAuth;

/// Private registries' credentials, as the server's replies carry them for
/// the pulls of their commands: held in memory only (never written to
/// `DATA_PATH`, never logged: its `Debug` names the registries alone), one
/// per registry, the newest kept. Cheap to clone: the command worker, the
/// stacks and the job scheduler share one. After a restart it is empty
/// until a reply carries them again; a pull it has nothing for goes
/// without credentials, as before.
#[derive(Clone, Default)]
pub struct Registries(Arc<RwLock<BTreeMap<String, RegistryAuth>>>);

impl Registries {
    /// Keeps these credentials (replacing older ones for the same registry).
    pub fn remember(&self, auths: &[RegistryAuth]) {
        if auths.is_empty() {
            return;
        }
        let mut map = self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for a in auths {
            map.insert(a.server.clone(), a.clone());
        }
    }

    /// The credentials a pull of `reference` goes with, if any.
    pub(crate) fn credentials(&self, reference: &str) -> Option<DockerCredentials> {
        let map = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&registry_of(reference)).map(|a| DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        })
    }
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        f.debug_tuple("Registries").field(&map.keys().collect::<Vec<_>>()).finish()
    }
}

/// Equal when they hold the same credentials.
impl PartialEq for Registries {
    fn eq(&self, other: &Self) -> bool {
        if Arc::ptr_eq(&self.0, &other.0) {
            return true;
        }
        let a = self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = other.0.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        *a == *b
    }
}

impl Eq for Registries {}

/// Whether the engine answered with HTTP status `code`.
pub(crate) fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// The reference with a tag: a bare name means `:latest`, as the CLI has
/// it (the engine would pull every tag otherwise).
pub(crate) fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') { image.to_owned() } else { format!("{image}:latest") }
}

/// Pulls `reference` as given, to the end of the engine's progress stream,
/// with the credentials `registries` holds for its registry, if any.
///
/// # Errors
/// The registry's message (from the stream), or the engine's.
pub(crate) async fn pull(docker: &Docker, reference: &str, registries: &Registries) -> Result<(), String> {
    use bollard::query_parameters::CreateImageOptions;
    let opts = CreateImageOptions { from_image: Some(reference.to_owned()), ..Default::default() };
    let credentials = registries.credentials(reference);
    let mut progress = docker.create_image(Some(opts), None, credentials);
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    return Err(e);
                }
            }
            Err(e) => return Err(engine_error(e)),
        }
    }
    Ok(())
}

/// Why [`ensure_image`] has no image: each caller words it its own way.
#[derive(Debug)]
pub(crate) enum ImageError {
    /// The engine could not say whether it has the image (its message).
    Inspect(String),
    /// It has not, and the pull failed (the registry's or the engine's
    /// message).
    Pull(String),
}

/// The local image's id: the engine's when it has `image`, else after
/// pulling it ([`with_tag`]: a bare name is `:latest`). Images are never
/// pulled when present, so a host with no registry runs what it has.
///
/// # Errors
/// The inspection's or the pull's failure.
pub(crate) async fn ensure_image(docker: &Docker, image: &str, registries: &Registries) -> Result<String, ImageError> {
    match docker.inspect_image(image).await {
        Ok(i) => return Ok(i.id.unwrap_or_default()),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(ImageError::Inspect(engine_error(e))),
    }
    tracing::info!(image, "pulling (not on this host)");
    pull(docker, &with_tag(image), registries).await.map_err(ImageError::Pull)?;
    let i = docker.inspect_image(image).await.map_err(|e| ImageError::Inspect(engine_error(e)))?;
    Ok(i.id.unwrap_or_default())
}
