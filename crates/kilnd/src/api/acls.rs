//! `/v1/acls`: access-control lists between VMs, their rules, and attaching them to networks
//! (`PUT /v1/networks/{name}/acl`) and NICs (`PUT /v1/vms/{name}/nics/{position}/acl`). Every
//! change is applied to the running VMs' rules before it is answered; one that cannot be
//! applied is undone.

use super::error::ApiFailure;
use super::vms::{require, vm_for};
use super::{ApiPath, AppState, JsonBody};
use crate::auth::{Principal, Target};
use crate::db::acls::AclRow;
use crate::db::DbError;
use crate::net::acl::{self, RuleError};
use crate::validate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_api::{Acl, AclRule, ApiError, CreateAcl, CreateAclRule, Permission, SetAcl};

type ApiResult<T> = Result<T, ApiFailure>;

impl From<RuleError> for ApiFailure {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Invalid(invalid) => {
                ApiFailure::bad_request(Some(invalid.field.to_owned()), invalid.to_string())
            }
            RuleError::Db(db) => db.into(),
        }
    }
}

/// Loads an ACL and checks `permission` on it; one the caller may not read is answered as
/// missing.
fn acl_for(
    mgr: &AppState,
    principal: &Principal,
    name: &str,
    permission: Permission,
) -> ApiResult<AclRow> {
    let row = mgr.db.acl(name)?;
    let target = Target::Acl { name: &row.name, project: &row.project };
    if !principal.may(Permission::Read, target) {
        return Err(DbError::NoAcl(name.to_owned()).into());
    }
    require(principal, permission, target)?;
    Ok(row)
}

fn to_api(mgr: &AppState, row: AclRow) -> ApiResult<Acl> {
    let rules = mgr.db.acl_rules(Some(&row.name))?.iter().map(|r| r.to_api()).collect();
    let (networks, nics) = mgr.db.acl_users(&row.name)?;
    Ok(Acl {
        name: row.name,
        project: row.project,
        rules,
        networks,
        nics,
        created_at: kiln_api::rfc3339_ms(row.created_ms),
    })
}

/// Runs `change` on the state store, then rewrites the rules; if they cannot be applied, runs
/// `undo` and answers the error.
pub(super) async fn applied<T: Send + 'static>(
    mgr: &AppState,
    change: impl FnOnce(&AppState) -> ApiResult<T> + Send + 'static,
    undo: impl FnOnce(&AppState, &T) + Send + 'static,
) -> ApiResult<T> {
    let mgr = mgr.clone();
    tokio::task::spawn_blocking(move || {
        let done = change(&mgr)?;
        if let Err(e) = mgr.networks.refresh_rules(&mgr.db) {
            undo(&mgr, &done);
            if let Err(again) = mgr.networks.refresh_rules(&mgr.db) {
                eprintln!("kilnd: rules after undoing an ACL change: {}", crate::chain(&again));
            }
            return Err(e.into());
        }
        Ok(done)
    })
    .await
    .map_err(|e| ApiFailure::internal(&e))?
}

/// Lists the ACLs the caller may read.
#[utoipa::path(get, path = "/v1/acls", tag = "networks",
    responses((status = 200, body = [Acl]), (status = 401, body = ApiError)))]
pub async fn list(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<Acl>>> {
    let mut acls = Vec::new();
    for row in mgr.db.acls()? {
        if p.may(Permission::Read, Target::Acl { name: &row.name, project: &row.project }) {
            acls.push(to_api(&mgr, row)?);
        }
    }
    Ok(Json(acls))
}

/// Creates an empty ACL.
#[utoipa::path(post, path = "/v1/acls", tag = "networks", request_body = CreateAcl,
    responses((status = 201, body = Acl), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, description = "name taken", body = ApiError)))]
pub async fn create(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(spec): JsonBody<CreateAcl>,
) -> ApiResult<(StatusCode, Json<Acl>)> {
    for (field, value) in [("name", &spec.name), ("project", &spec.project)] {
        validate::name(field, value)
            .map_err(|e| ApiFailure::bad_request(Some(field.to_owned()), e.to_string()))?;
    }
    require(&p, Permission::Network, Target::Project(&spec.project))?;
    let row = mgr.db.create_acl(&spec.name, &spec.project)?;
    Ok((StatusCode::CREATED, Json(to_api(&mgr, row)?)))
}

/// One ACL: its rules in the order they are evaluated, and where it is attached.
#[utoipa::path(get, path = "/v1/acls/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = Acl), (status = 404, body = ApiError)))]
pub async fn show(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Acl>> {
    let row = acl_for(&mgr, &p, &name, Permission::Read)?;
    Ok(Json(to_api(&mgr, row)?))
}

/// Deletes an ACL and its rules; 409 while a network or NIC uses it.
#[utoipa::path(delete, path = "/v1/acls/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "attached", body = ApiError)))]
pub async fn delete(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    acl_for(&mgr, &p, &name, Permission::Network)?;
    mgr.db.delete_acl(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The rules of an ACL, in the order they are evaluated: drop, reject, allow.
#[utoipa::path(get, path = "/v1/acls/{name}/rules", tag = "networks",
    params(("name" = String, Path)),
    responses((status = 200, body = [AclRule]), (status = 404, body = ApiError)))]
pub async fn rules(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Vec<AclRule>>> {
    acl_for(&mgr, &p, &name, Permission::Read)?;
    Ok(Json(mgr.db.acl_rules(Some(&name))?.iter().map(|r| r.to_api()).collect()))
}

/// Adds a rule; the NICs using the ACL follow it before this answers.
#[utoipa::path(post, path = "/v1/acls/{name}/rules", tag = "networks",
    params(("name" = String, Path)), request_body = CreateAclRule,
    responses((status = 201, body = AclRule), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn add_rule(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    JsonBody(rule): JsonBody<CreateAclRule>,
) -> ApiResult<(StatusCode, Json<AclRule>)> {
    acl_for(&mgr, &p, &name, Permission::Network)?;
    let visible = |kind: &str, project: &str| {
        let target = match kind {
            "vm" => Target::Vm { name: "", project },
            _ => Target::Network { name: "", project },
        };
        p.may(Permission::Read, target)
    };
    let checked = acl::check(&mgr.db, &rule, visible)?;
    let row = applied(
        &mgr,
        move |mgr| {
            Ok(mgr.db.insert_acl_rule(
                &name,
                rule.direction,
                rule.action,
                rule.protocol,
                checked.ports,
                checked.peer.as_deref(),
            )?)
        },
        |mgr, row| {
            let _ = mgr.db.delete_acl_rule(&row.acl, row.id);
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(row.to_api())))
}

/// Removes a rule; applied before this answers.
#[utoipa::path(delete, path = "/v1/acls/{name}/rules/{id}", tag = "networks",
    params(("name" = String, Path), ("id" = i64, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn remove_rule(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath((name, id)): ApiPath<(String, i64)>,
) -> ApiResult<StatusCode> {
    acl_for(&mgr, &p, &name, Permission::Network)?;
    let rule = mgr
        .db
        .acl_rules(Some(&name))?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or(DbError::NoAclRule { acl: name.clone(), id })?;
    applied(
        &mgr,
        move |mgr| Ok(mgr.db.delete_acl_rule(&name, id)?),
        move |mgr, ()| {
            // Put back as it was (a new id: the old one is not reused).
            let _ = mgr.db.insert_acl_rule(
                &rule.acl,
                rule.direction,
                rule.action,
                rule.protocol,
                rule.ports,
                rule.peer.as_deref(),
            );
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The ACL a NIC uses instead of its network's; null detaches it.
#[utoipa::path(put, path = "/v1/vms/{name}/nics/{position}/acl", tag = "networks",
    params(("name" = String, Path), ("position" = usize, Path)), request_body = SetAcl,
    responses((status = 204), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
pub async fn set_nic_acl(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath((vm, position)): ApiPath<(String, usize)>,
    JsonBody(body): JsonBody<SetAcl>,
) -> ApiResult<StatusCode> {
    let record = vm_for(&mgr, &p, &vm, Permission::Network)?;
    if let Some(acl) = &body.acl {
        acl_for(&mgr, &p, acl, Permission::Read)?;
    }
    let before = record.vm.nics.get(position).map(|n| n.acl.clone());
    let before = before.ok_or(DbError::NoSuchNic { vm: vm.clone(), position })?;
    applied(
        &mgr,
        {
            let vm = vm.clone();
            move |mgr| Ok(mgr.db.set_nic_acl(&vm, position, body.acl.as_deref())?)
        },
        move |mgr, ()| {
            let _ = mgr.db.set_nic_acl(&vm, position, before.as_deref());
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
