//! Authentication (who is asking) and authorisation (may they).
//!
//! A request authenticates with `Authorization: Bearer <token>`; kilnd keeps only the token's
//! SHA-256. Without the header, the Unix socket peer's uid may map to a principal (on a fresh
//! database, uid 0 is `root` and the uid running kilnd is `uid-<n>`, both global admins). A
//! header with a bad or revoked token is refused even when the uid would map: a token says who
//! the caller means to be.
//!
//! Authorisation: a principal holds grants of a role over a scope (global, a project, a VM);
//! a request needs one [`Permission`] on a [`Target`], and any grant whose scope covers the
//! target and whose role includes the permission allows it.

use crate::db::{Db, DbError, PrincipalRecord};
use kiln_api::{Grant, Permission, Role, Scope};
use sha2::{Digest, Sha256};
use std::io::Read;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer TOKEN` (kiln --token or KILN_TOKEN)")]
    NoCredentials,
    #[error("the token is unknown or revoked")]
    BadToken,
    /// A revoked principal's token: the client hears only [`AuthError::BadToken`]'s message,
    /// the audit log names who tried.
    #[error("the token is unknown or revoked")]
    RevokedToken(String),
    #[error("principal {0:?} is revoked")]
    Revoked(String),
    #[error("malformed Authorization header (expected `Bearer TOKEN`)")]
    MalformedHeader,
    #[error("reading random bytes for a token")]
    Random(#[source] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AuthError {
    /// The principal that tried, where the credentials named one (for the audit log).
    pub fn attempted(&self) -> Option<String> {
        match self {
            AuthError::RevokedToken(name) | AuthError::Revoked(name) => {
                Some(format!("{name} (revoked)"))
            }
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub grants: Vec<Grant>,
}

/// What a permission is needed on.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// The daemon itself (principals, grants, audit).
    Global,
    /// A project (creating a VM in it).
    Project(&'a str),
    /// A VM of a project.
    Vm { name: &'a str, project: &'a str },
    /// A volume of a project.
    Volume { name: &'a str, project: &'a str },
    /// A network of a project.
    Network { name: &'a str, project: &'a str },
    /// An ACL of a project.
    Acl { name: &'a str, project: &'a str },
}

impl std::fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Global => f.write_str("kilnd"),
            Target::Project(p) => write!(f, "project {p:?}"),
            Target::Vm { name, project } => write!(f, "VM {name:?} (project {project:?})"),
            Target::Volume { name, project } => {
                write!(f, "volume {name:?} (project {project:?})")
            }
            Target::Network { name, project } => {
                write!(f, "network {name:?} (project {project:?})")
            }
            Target::Acl { name, project } => write!(f, "ACL {name:?} (project {project:?})"),
        }
    }
}

fn covers(scope: &Scope, target: Target<'_>) -> bool {
    match (scope, target) {
        (Scope::Global, _) => true,
        (Scope::Project(p), Target::Project(t)) => p == t,
        (
            Scope::Project(p),
            Target::Vm { project, .. }
            | Target::Volume { project, .. }
            | Target::Network { project, .. }
            | Target::Acl { project, .. },
        ) => p == project,
        (Scope::Vm(v), Target::Vm { name, .. }) => v == name,
        (Scope::Volume(v), Target::Volume { name, .. }) => v == name,
        _ => false,
    }
}

impl Principal {
    /// True if some grant gives `permission` on `target`.
    pub fn may(&self, permission: Permission, target: Target<'_>) -> bool {
        self.grants
            .iter()
            .any(|g| covers(&g.scope, target) && g.role.permissions().contains(&permission))
    }
}

/// The SHA-256 of a token, in hex, as stored.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A new random token (`kiln_` and 64 hex digits from the kernel's random source).
pub fn new_token() -> Result<String, AuthError> {
    let mut bytes = [0_u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(AuthError::Random)?;
    Ok(format!("kiln_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

/// Who is asking: from the `Authorization` header if present, else from the peer's uid.
pub fn authenticate(
    db: &Db,
    authorization: Option<&str>,
    peer_uid: Option<u32>,
) -> Result<Principal, AuthError> {
    let record = match authorization {
        Some(header) => {
            // The scheme is case-insensitive (RFC 9110, section 11.1).
            let token = header
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map(|(_, token)| token.trim())
                .filter(|t| !t.is_empty())
                .ok_or(AuthError::MalformedHeader)?;
            db.principal_by_token(&hash_token(token))?.ok_or(AuthError::BadToken)?
        }
        None => match peer_uid {
            Some(uid) => db.principal_by_uid(uid)?.ok_or(AuthError::NoCredentials)?,
            None => return Err(AuthError::NoCredentials),
        },
    };
    let PrincipalRecord { name, revoked, grants } = record;
    if revoked {
        return Err(if authorization.is_some() {
            AuthError::RevokedToken(name)
        } else {
            AuthError::Revoked(name)
        });
    }
    Ok(Principal { name, grants })
}

/// On a fresh database, makes uid 0 (`root`) and the uid running kilnd global admins, so the
/// machine's owner can use `kiln` without a token and create the other principals.
pub fn bootstrap(db: &Db, own_uid: u32) -> Result<(), AuthError> {
    if !db.no_principals()? {
        return Ok(());
    }
    db.add_principal("root", None, Some(0), Some((Role::Admin, &Scope::Global)))?;
    if own_uid != 0 {
        let name = format!("uid-{own_uid}");
        db.add_principal(&name, None, Some(own_uid), Some((Role::Admin, &Scope::Global)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, scope: Scope) -> Principal {
        Principal {
            name: "p".to_owned(),
            grants: vec![Grant { id: 1, principal: "p".to_owned(), role, scope }],
        }
    }

    #[test]
    fn viewer_may_read_but_not_start() {
        let p = principal(Role::Viewer, Scope::Global);
        let vm = Target::Vm { name: "a", project: "x" };
        assert!(p.may(Permission::Read, vm));
        assert!(!p.may(Permission::Start, vm));
        assert!(!p.may(Permission::Stop, vm));
    }

    #[test]
    fn project_operator_cannot_touch_another_project() {
        let p = principal(Role::Operator, Scope::Project("a".to_owned()));
        assert!(p.may(Permission::Stop, Target::Vm { name: "v", project: "a" }));
        assert!(p.may(Permission::Create, Target::Project("a")));
        assert!(!p.may(Permission::Read, Target::Vm { name: "v", project: "b" }));
        assert!(!p.may(Permission::Create, Target::Project("b")));
        assert!(!p.may(Permission::Admin, Target::Global));
    }

    #[test]
    fn tokens_authenticate_until_revoked_and_bad_tokens_never() {
        let db = Db::in_memory().expect("db");
        let token = new_token().expect("token");
        db.add_principal("alice", Some(&hash_token(&token)), None, None).expect("add");
        let header = format!("Bearer {token}");
        assert_eq!(authenticate(&db, Some(&header), None).expect("valid").name, "alice");
        assert!(matches!(
            authenticate(&db, Some("Bearer nope"), Some(0)),
            Err(AuthError::BadToken)
        ));
        assert!(matches!(authenticate(&db, None, None), Err(AuthError::NoCredentials)));
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let header = format!("{scheme} {token}");
            assert_eq!(authenticate(&db, Some(&header), None).expect("any case").name, "alice");
        }
        assert!(matches!(
            authenticate(&db, Some(&format!("Basic {token}")), None),
            Err(AuthError::MalformedHeader)
        ));
        db.revoke_principal("alice").expect("revoke");
        let revoked = authenticate(&db, Some(&header), None).unwrap_err();
        assert_eq!(
            revoked.to_string(),
            AuthError::BadToken.to_string(),
            "the client hears no more"
        );
        assert_eq!(revoked.attempted().as_deref(), Some("alice (revoked)"));
    }

    #[test]
    fn bootstrap_maps_root_once() {
        let db = Db::in_memory().expect("db");
        bootstrap(&db, 1000).expect("bootstrap");
        assert_eq!(authenticate(&db, None, Some(0)).expect("root").name, "root");
        assert_eq!(authenticate(&db, None, Some(1000)).expect("owner").name, "uid-1000");
        db.revoke_principal("root").expect("revoke");
        bootstrap(&db, 1000).expect("second bootstrap does nothing");
        assert!(authenticate(&db, None, Some(0)).is_err());
    }
}
