//! `/v1/users`, `/v1/grants`, `/v1/audit`, `/v1/whoami`: principals and their permissions.
//! Everything here but `whoami` needs the `admin` permission globally.

use super::error::ApiFailure;
use super::vms::require;
use super::{ApiPath, ApiQuery, AppState, JsonBody};
use crate::auth::{self, Principal, Target};
use crate::validate;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_api::{
    ApiError, AuditEntry, CreateGrant, CreateUser, CreatedUser, Grant, Permission, Scope, User,
    WhoAmI,
};
use serde::Deserialize;

type ApiResult<T> = Result<T, ApiFailure>;

fn admin(p: &Principal) -> ApiResult<()> {
    require(p, Permission::Admin, Target::Global)
}

fn check_scope(scope: &Scope) -> ApiResult<()> {
    match scope {
        Scope::Global => Ok(()),
        Scope::Project(n) | Scope::Vm(n) | Scope::Volume(n) => validate::name("scope", n)
            .map_err(|e| ApiFailure::bad_request(Some("scope".to_owned()), e.to_string())),
    }
}

/// Every principal.
#[utoipa::path(get, path = "/v1/users", tag = "access",
    responses((status = 200, body = [User]), (status = 403, body = ApiError)))]
pub async fn list_users(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<User>>> {
    admin(&p)?;
    Ok(Json(mgr.db.users()?))
}

/// Adds a principal with a new token (shown once) and optionally a first grant.
#[utoipa::path(post, path = "/v1/users", tag = "access", request_body = CreateUser,
    responses((status = 201, body = CreatedUser), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, body = ApiError)))]
pub async fn create_user(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(req): JsonBody<CreateUser>,
) -> ApiResult<(StatusCode, Json<CreatedUser>)> {
    admin(&p)?;
    validate::name("name", &req.name)
        .map_err(|e| ApiFailure::bad_request(Some("name".to_owned()), e.to_string()))?;
    let scope = req.scope.unwrap_or(Scope::Global);
    check_scope(&scope)?;
    let token = auth::new_token()?;
    let grant = req.role.map(|role| (role, &scope));
    let user = mgr.db.add_principal(&req.name, Some(&auth::hash_token(&token)), req.uid, grant)?;
    Ok((StatusCode::CREATED, Json(CreatedUser { user, token })))
}

/// Revokes a principal: its token and uid stop authenticating.
#[utoipa::path(post, path = "/v1/users/{name}/revoke", tag = "access", params(("name" = String, Path)),
    responses((status = 200, body = User), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn revoke_user(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<User>> {
    admin(&p)?;
    Ok(Json(mgr.db.revoke_principal(&name)?))
}

/// Every grant.
#[utoipa::path(get, path = "/v1/grants", tag = "access",
    responses((status = 200, body = [Grant]), (status = 403, body = ApiError)))]
pub async fn list_grants(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<Grant>>> {
    admin(&p)?;
    Ok(Json(mgr.db.grants()?))
}

/// Gives a principal a role over a scope.
#[utoipa::path(post, path = "/v1/grants", tag = "access", request_body = CreateGrant,
    responses((status = 201, body = Grant), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn create_grant(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(req): JsonBody<CreateGrant>,
) -> ApiResult<(StatusCode, Json<Grant>)> {
    admin(&p)?;
    check_scope(&req.scope)?;
    let grant = mgr.db.add_grant(&req.principal, req.role, &req.scope)?;
    Ok((StatusCode::CREATED, Json(grant)))
}

/// Removes a grant.
#[utoipa::path(delete, path = "/v1/grants/{id}", tag = "access", params(("id" = i64, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError)))]
pub async fn delete_grant(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    admin(&p)?;
    if mgr.db.delete_grant(id)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiFailure::not_found(format!("no grant with id {id}")))
    }
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// How many of the latest entries (default 100).
    #[param(value_type = Option<u64>, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

/// The latest audited requests, oldest first.
#[utoipa::path(get, path = "/v1/audit", tag = "access", params(AuditQuery),
    responses((status = 200, body = [AuditEntry]), (status = 403, body = ApiError)))]
pub async fn audit(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    admin(&p)?;
    Ok(Json(mgr.db.audit_log(q.limit.unwrap_or(100))?))
}

/// The caller's principal and grants.
#[utoipa::path(get, path = "/v1/whoami", tag = "access",
    responses((status = 200, body = WhoAmI), (status = 401, body = ApiError)))]
pub async fn whoami(Extension(p): Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI { principal: p.name, grants: p.grants })
}

/// kilnd's metrics in the Prometheus text format: VMs by state, API requests by route and
/// status, and per VM (those the caller may read) its size and its VMM's CPU time, memory and
/// storage traffic.
#[utoipa::path(get, path = "/metrics", tag = "access",
    responses((status = 200, content_type = "text/plain", body = String),
        (status = 401, body = ApiError)))]
pub async fn metrics(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<impl axum::response::IntoResponse> {
    let all: Vec<kiln_api::Vm> = mgr.db.vms()?.into_iter().map(|r| r.vm).collect();
    let visible: Vec<kiln_api::Vm> = all
        .iter()
        .filter(|vm| p.may(Permission::Read, Target::Vm { name: &vm.name, project: &vm.project }))
        .cloned()
        .collect();
    let stats = |vm: &str| mgr.logs(vm).stats();
    let text = crate::metrics::render(&all, &visible, &mgr.requests, &stats);
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}
