//! The agent role: its configuration ([`config`]) and the collector, which
//! reads a [`RawSnapshot`] from the local Docker engine through bollard.

pub mod client;
pub mod config;
pub mod store;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListImagesOptions, ListNetworksOptions, ListVolumesOptions};

use crate::sync::RawSnapshot;

/// Why the engine could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The engine could not be reached or refused a request.
    #[error("docker engine: {0}")]
    Docker(#[from] bollard::errors::Error),
}

/// Connects to the engine named by `DOCKER_HOST` (or the local default) and
/// negotiates the API version, so older engines work too.
///
/// # Errors
/// When the engine cannot be reached.
pub async fn connect() -> Result<Docker, CollectError> {
    let docker = Docker::connect_with_defaults()?;
    Ok(docker.negotiate_version().await?)
}

/// Reads everything the canonical state is built from.
///
/// # Errors
/// When a request to the engine fails. A container removed between the list
/// and its inspect is skipped, not an error.
pub async fn collect(docker: &Docker) -> Result<RawSnapshot, CollectError> {
    let list = docker.list_containers(Some(ListContainersOptions { all: true, ..Default::default() })).await?;
    let mut containers = Vec::with_capacity(list.len());
    for c in &list {
        let Some(id) = c.id.as_deref() else { continue };
        match docker.inspect_container(id, None).await {
            Ok(inspect) => containers.push(inspect),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(RawSnapshot {
        containers,
        images: docker.list_images(Some(ListImagesOptions { all: false, ..Default::default() })).await?,
        volumes: docker.list_volumes(None::<ListVolumesOptions>).await?.volumes.unwrap_or_default(),
        networks: docker.list_networks(None::<ListNetworksOptions>).await?,
        info: docker.info().await?,
        version: docker.version().await?,
    })
}
