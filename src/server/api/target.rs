//! What an operator names a container or network by, resolved against an
//! environment's stored state the way the Docker CLI does it: a full id,
//! then a name, then a unique id prefix.
//!
//! A full 64-hex id is taken as it is, even when the stored state does not
//! hold it: the state can lag the host by a snapshot interval, and an
//! operator who just created a container may act on it by its id. Names
//! and prefixes mean something only against the state, so those must match.

use crate::sync::state::Id;

/// The fewest hex digits an id prefix may have.
pub const MIN_PREFIX: usize = 4;

/// Resolves `target` among `objects` (id and name of each object of one
/// kind, `kind` naming it in messages). A full id needs no match.
///
/// # Errors
/// A message for the operator when nothing matches or a name or prefix
/// matches more than one object.
pub fn resolve<'a>(kind: &str, target: &str, objects: impl Iterator<Item = (Id, &'a str)>) -> Result<Id, String> {
    if let Ok(id) = Id::parse(target) {
        return Ok(id);
    }
    let objects: Vec<(Id, &str)> = objects.collect();
    let name = target.strip_prefix('/').unwrap_or(target);
    let named: Vec<Id> = objects.iter().filter(|(_, n)| *n == name).map(|(i, _)| *i).collect();
    match named.as_slice() {
        [id] => return Ok(*id),
        [] => {}
        many => return Err(format!("{} {kind}s are named {target:?}: give the id instead", many.len())),
    }
    let hex = target.strip_prefix("sha256:").unwrap_or(target).to_ascii_lowercase();
    let is_hex = !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex && hex.len() >= MIN_PREFIX {
        let matching: Vec<Id> =
            objects.iter().filter(|(i, _)| i.to_string().starts_with(&hex)).map(|(i, _)| *i).collect();
        match matching.as_slice() {
            [id] => return Ok(*id),
            [] => {}
            many => {
                return Err(format!(
                    "{target:?} is ambiguous: the ids of {} {kind}s start with it; give more digits",
                    many.len()
                ));
            }
        }
    }
    Err(if is_hex && hex.len() < MIN_PREFIX {
        format!("no {kind} named {target:?} (an id prefix needs at least {MIN_PREFIX} hex digits)")
    } else {
        format!("no {kind} named {target:?} or with an id starting with it in the environment's last snapshot")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(prefix: &[u8]) -> Id {
        let mut b = [0x11; 32];
        b[..prefix.len()].copy_from_slice(prefix);
        Id(b)
    }

    #[test]
    fn ids_names_and_unique_prefixes_resolve_and_the_rest_is_explained() {
        let (web, db, cache) = (id(&[0xab, 0xcd, 0x01]), id(&[0xab, 0xcd, 0x02]), id(&[0x12, 0x34]));
        let (twin1, twin2) = (id(&[0x77]), id(&[0x78]));
        let objects = [(web, "web"), (db, "db"), (cache, "abcd"), (twin1, "twin"), (twin2, "twin")];
        let r = |t: &str| resolve("container", t, objects.iter().map(|(i, n)| (*i, *n)));
        assert_eq!(r(&web.to_string()), Ok(web));
        assert_eq!(r(&format!("sha256:{}", db.to_string().to_uppercase())), Ok(db));
        assert_eq!(r("web"), Ok(web));
        assert_eq!(r("/db"), Ok(db));
        assert_eq!(r("abcd"), Ok(cache), "a name wins over an id prefix, as in the Docker CLI");
        assert_eq!(r("ABCD01"), Ok(web));
        assert_eq!(r("abcd02"), Ok(db));
        assert_eq!(r("1234"), Ok(cache));
        let e = r("abcd0").unwrap_err();
        assert!(e.contains("ambiguous: the ids of 2 containers start with it"), "{e}");
        assert!(r("abc").unwrap_err().contains("at least 4 hex digits"));
        assert!(r("twin").unwrap_err().contains("2 containers are named \"twin\""));
        assert!(r("abcd03").unwrap_err().contains("last snapshot"));
        assert!(r("nope").unwrap_err().contains("no container named \"nope\""));
        assert_eq!(r(&id(&[1]).to_string()), Ok(id(&[1])), "a full id the state does not hold (yet)");
        assert!(resolve("network", "web", std::iter::empty()).is_err());
    }
}
