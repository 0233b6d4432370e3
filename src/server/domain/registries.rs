//! Private registries: their credentials sealed under the server key when
//! an operator gives them, and opened only to go into the reply of a poll
//! whose commands pull from that registry (a stack's images, an image
//! pull, a job's image), matched by the registry the reference names
//! (`tern_proto::registry`). An agent gets the credentials of the
//! registries it pulls from, and no others; a stored command never holds
//! them, so a changed password reaches the commands still queued.

use std::collections::BTreeSet;
use std::path::Path;

use crate::compose::Project;
use crate::registry::registry_of;
use crate::server::secrets::SecretKey;
use crate::server::store::registries::{RegistryError, RegistryRecord};
use crate::server::store::{StoreError, Transaction};
use crate::wire::poll::{Action, Command, MAX_REGISTRIES, RegistryAuth};

/// The associated data a registry's secret is sealed with: its row.
fn owner(id: u64) -> String {
    format!("tern registry {id}")
}

/// Stores a registry with its password or token sealed.
///
/// # Errors
/// The store's: a name or address taken, or the database.
pub fn create(
    tx: &(impl Transaction + ?Sized),
    key: &SecretKey,
    name: &str,
    server: &str,
    username: &str,
    password: &str,
    now: i64,
) -> Result<u64, RegistryError> {
    tx.create_registry(name, server, username, &|id| key.seal(password, &owner(id)), now)
}

/// Changes a registry; a new password is sealed.
///
/// # Errors
/// The store's: no such registry, a name taken, or the database.
pub fn update(
    tx: &(impl Transaction + ?Sized),
    key: &SecretKey,
    id: u64,
    name: Option<&str>,
    username: Option<&str>,
    password: Option<&str>,
    now: i64,
) -> Result<(), RegistryError> {
    let sealed = password.map(|p| key.seal(p, &owner(id)));
    tx.update_registry(id, name, username, sealed.as_deref(), now)
}

/// The registries a command pulls from. A stack's compose file is read
/// with its variables; an image named through a variable the host sets
/// names no registry here (its pull goes without credentials).
fn registries_of(action: &Action, out: &mut BTreeSet<String>) {
    match action {
        Action::ImagePull(reference) => {
            out.insert(registry_of(reference));
        }
        Action::Job(spec) if !spec.image.is_empty() => {
            out.insert(registry_of(&spec.image));
        }
        Action::StackDeploy(spec) => {
            if let Ok(project) = Project::parse(&spec.name, &spec.compose, &spec.env, Path::new("/")) {
                out.extend(project.services.values().filter(|s| !s.image.is_empty()).map(|s| registry_of(&s.image)));
            }
        }
        _ => {}
    }
}

/// A stored registry's credentials, opened; one that does not open (the
/// key changed) is logged and left out: its pulls fail as
/// unauthenticated, saying so.
fn opened(key: &SecretKey, r: RegistryRecord) -> Option<RegistryAuth> {
    match key.open(&r.sealed, &owner(r.id)) {
        Ok(password) => Some(RegistryAuth { server: r.server, username: r.username, password }),
        Err(e) => {
            tracing::error!("registry {:?} ({}): {e}", r.name, r.server);
            None
        }
    }
}

/// The credentials (user, password) the server pulls `reference` with
/// itself, if its registry is registered and its secret opens.
///
/// # Errors
/// When the database fails.
pub fn credentials_of(
    tx: &(impl Transaction + ?Sized),
    key: &SecretKey,
    reference: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let found = tx.registries_for(&[registry_of(reference)])?.pop();
    Ok(found.and_then(|r| opened(key, r)).map(|a| (a.username, a.password)))
}

/// Whether any of `commands` pulls an image (only then does a reply read
/// the registries).
#[must_use]
pub fn pulls(commands: &[Command]) -> bool {
    commands.iter().any(|c| match &c.action {
        Action::ImagePull(_) | Action::StackDeploy(_) => true,
        Action::Job(spec) => !spec.image.is_empty(),
        _ => false,
    })
}

/// The credentials a reply carrying `commands` adds: those of the
/// registries they pull from, opened (see [`opened`]).
///
/// # Errors
/// When the database fails.
pub fn credentials_for(
    tx: &(impl Transaction + ?Sized),
    key: &SecretKey,
    commands: &[Command],
) -> Result<Vec<RegistryAuth>, StoreError> {
    let mut servers = BTreeSet::new();
    for c in commands {
        registries_of(&c.action, &mut servers);
    }
    if servers.is_empty() {
        return Ok(Vec::new());
    }
    let servers: Vec<String> = servers.into_iter().take(MAX_REGISTRIES).collect();
    Ok(tx.registries_for(&servers)?.into_iter().filter_map(|r| opened(key, r)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::store::Store;
    use crate::server::store::prelude::*;
    use crate::wire::poll::{JobSpec, StackSpec};

    #[test]
    fn a_reply_carries_the_credentials_of_the_registries_its_commands_pull_from_only() {
        let db = Store::scratch().unwrap();
        let tx = db.autocommit();
        let key = SecretKey::ephemeral();
        create(&tx, &key, "private", "10.0.0.5:5000", "fleet", "s3cret", 1).unwrap();
        create(&tx, &key, "other", "registry.example.com", "ops", "t0ken", 1).unwrap();
        let stored = tx.registries().unwrap();
        assert!(stored.iter().all(|r| !r.sealed.windows(6).any(|w| w == b"s3cret")), "sealed at rest");
        let cmd = |id, action| Command { id, action };
        let none = credentials_for(&tx, &key, &[cmd(1, Action::ImagePull("nginx:1.25".into()))]).unwrap();
        assert!(none.is_empty(), "Docker Hub has no credentials here");
        let pull = credentials_for(&tx, &key, &[cmd(1, Action::ImagePull("10.0.0.5:5000/app:1".into()))]).unwrap();
        assert_eq!(
            pull,
            [RegistryAuth { server: "10.0.0.5:5000".into(), username: "fleet".into(), password: "s3cret".into() }]
        );
        let env = [("REG".to_owned(), "registry.example.com".to_owned())].into();
        let stack = StackSpec {
            name: "web".into(),
            compose: "services:\n  a:\n    image: ${REG}/team/a:2\n  b:\n    image: busybox\n".into(),
            env,
            version: 1,
            images: Vec::new(),
            files: Default::default(),
        };
        let job = JobSpec { job: 1, image: "10.0.0.5:5000/tools".into(), ..JobSpec::default() };
        let both = credentials_for(&tx, &key, &[cmd(1, Action::StackDeploy(stack)), cmd(2, Action::Job(job))]).unwrap();
        assert_eq!(
            both.iter().map(|r| r.server.as_str()).collect::<Vec<_>>(),
            ["10.0.0.5:5000", "registry.example.com"]
        );
        // A new password reaches what is queued; another key opens nothing.
        update(&tx, &key, stored[0].id, None, None, Some("n3w"), 2).unwrap();
        let again = credentials_for(&tx, &key, &[cmd(1, Action::ImagePull("10.0.0.5:5000/app:1".into()))]).unwrap();
        assert_eq!(again[0].password, "n3w");
        let other = SecretKey::ephemeral();
        assert!(
            credentials_for(&tx, &other, &[cmd(1, Action::ImagePull("10.0.0.5:5000/a".into()))]).unwrap().is_empty()
        );
        assert!(matches!(create(&tx, &key, "dup", "10.0.0.5:5000", "x", "y", 3), Err(RegistryError::ServerTaken(_))));
        assert!(matches!(create(&tx, &key, "PRIVATE", "a.example", "x", "y", 3), Err(RegistryError::NameTaken(_))));
    }
}
