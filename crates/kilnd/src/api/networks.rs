//! `/v1/networks`: create, list, show and delete virtual networks.

use super::error::ApiFailure;
use super::vms::require;
use super::{ApiPath, AppState, JsonBody};
use crate::auth::{Principal, Target};
use crate::db::networks::NetworkRow;
use crate::db::DbError;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_api::{ApiError, CreateNetwork, Network, Permission, SetAcl};

type ApiResult<T> = Result<T, ApiFailure>;

/// Loads a network and checks `permission` on it; one the caller may not read is answered as
/// missing.
fn network_for(
    mgr: &AppState,
    principal: &Principal,
    name: &str,
    permission: Permission,
) -> ApiResult<NetworkRow> {
    let row = mgr.db.network(name)?;
    let target = Target::Network { name: &row.name, project: &row.project };
    if !principal.may(Permission::Read, target) {
        return Err(DbError::NoNetwork(name.to_owned()).into());
    }
    require(principal, permission, target)?;
    Ok(row)
}

/// Lists the networks the caller may read.
#[utoipa::path(get, path = "/v1/networks", tag = "networks",
    responses((status = 200, body = [Network]), (status = 401, body = ApiError)))]
pub async fn list(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<Network>>> {
    let mut networks = Vec::new();
    for row in mgr.db.networks()? {
        if p.may(Permission::Read, Target::Network { name: &row.name, project: &row.project }) {
            networks.push(mgr.networks.to_api(&mgr.db, row)?);
        }
    }
    Ok(Json(networks))
}

/// Creates a network: a bridge with the subnet's first address, DHCP and DNS (dnsmasq), and
/// Kiln's nftables rules; nothing is left behind if a step fails.
#[utoipa::path(post, path = "/v1/networks", tag = "networks", request_body = CreateNetwork,
    responses((status = 201, body = Network), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, description = "name taken", body = ApiError)))]
pub async fn create(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(spec): JsonBody<CreateNetwork>,
) -> ApiResult<(StatusCode, Json<Network>)> {
    require(&p, Permission::Network, Target::Project(&spec.project))?;
    let made = mgr.clone();
    let network = tokio::task::spawn_blocking(move || made.networks.create(&made.db, &spec))
        .await
        .map_err(|e| ApiFailure::internal(&e))??;
    Ok((StatusCode::CREATED, Json(network)))
}

/// One network, with its NICs' addresses.
#[utoipa::path(get, path = "/v1/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 200, body = Network), (status = 404, body = ApiError)))]
pub async fn show(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Network>> {
    let row = network_for(&mgr, &p, &name, Permission::Read)?;
    Ok(Json(mgr.networks.to_api(&mgr.db, row)?))
}

/// Deletes a network: its bridge, dnsmasq and rules; refused with 409 while a VM definition
/// has a NIC on it.
#[utoipa::path(delete, path = "/v1/networks/{name}", tag = "networks", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "a VM has a NIC on it", body = ApiError)))]
pub async fn delete(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    network_for(&mgr, &p, &name, Permission::Network)?;
    let made = mgr.clone();
    tokio::task::spawn_blocking(move || made.networks.delete(&made.db, &name))
        .await
        .map_err(|e| ApiFailure::internal(&e))??;
    Ok(StatusCode::NO_CONTENT)
}

/// The ACL of a network's NICs (those with an ACL of their own keep it); null detaches it.
/// Applied to the running VMs before this answers.
#[utoipa::path(put, path = "/v1/networks/{name}/acl", tag = "networks",
    params(("name" = String, Path)), request_body = SetAcl,
    responses((status = 204), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
pub async fn set_acl(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    JsonBody(body): JsonBody<SetAcl>,
) -> ApiResult<StatusCode> {
    let row = network_for(&mgr, &p, &name, Permission::Network)?;
    if let Some(acl) = &body.acl {
        let acl_row = mgr.db.acl(acl)?;
        let target = Target::Acl { name: &acl_row.name, project: &acl_row.project };
        if !p.may(Permission::Read, target) {
            return Err(DbError::NoAcl(acl.clone()).into());
        }
    }
    super::acls::applied(
        &mgr,
        {
            let name = name.clone();
            move |mgr| Ok(mgr.db.set_network_acl(&name, body.acl.as_deref())?)
        },
        move |mgr, ()| {
            let _ = mgr.db.set_network_acl(&name, row.acl.as_deref());
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
