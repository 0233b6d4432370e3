//! Images and engine answers the agent's commands share: the tag a bare
//! name pulls, the pull itself, and "the local image, pulled only when
//! missing" (stacks' services and jobs' helpers), so the stack deploy, the
//! job runner and the `ImagePull` command do it one way.

use bollard::Docker;
use futures_util::StreamExt;

use super::engine_error;

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

/// Pulls `reference` as given, to the end of the engine's progress stream.
///
/// # Errors
/// The registry's message (from the stream), or the engine's.
pub(crate) async fn pull(docker: &Docker, reference: &str) -> Result<(), String> {
    use bollard::query_parameters::CreateImageOptions;
    let opts = CreateImageOptions { from_image: Some(reference.to_owned()), ..Default::default() };
    let mut progress = docker.create_image(Some(opts), None, None);
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
pub(crate) async fn ensure_image(docker: &Docker, image: &str) -> Result<String, ImageError> {
    match docker.inspect_image(image).await {
        Ok(i) => return Ok(i.id.unwrap_or_default()),
        Err(e) if is_status(&e, 404) => {}
        Err(e) => return Err(ImageError::Inspect(engine_error(e))),
    }
    tracing::info!(image, "pulling (not on this host)");
    pull(docker, &with_tag(image)).await.map_err(ImageError::Pull)?;
    let i = docker.inspect_image(image).await.map_err(|e| ImageError::Inspect(engine_error(e)))?;
    Ok(i.id.unwrap_or_default())
}
