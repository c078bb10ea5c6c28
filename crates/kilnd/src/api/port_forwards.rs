//! `/v1/port-forwards`: the host's ports forwarded to VMs' (nftables DNAT).

use super::error::ApiFailure;
use super::vms::vm_for;
use super::{ApiPath, ApiQuery, AppState, JsonBody};
use crate::auth::Principal;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_api::{ApiError, CreatePortForward, Permission, PortForward, Protocol};
use serde::Deserialize;

type ApiResult<T> = Result<T, ApiFailure>;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ForwardQuery {
    /// Only this VM's forwards.
    pub vm: Option<String>,
}

/// Refuses a host port some program on the host already listens on: the forward would take
/// its traffic from outside.
fn host_port_free(protocol: Protocol, port: u16) -> ApiResult<()> {
    let taken = match protocol {
        Protocol::Tcp => std::net::TcpListener::bind(("0.0.0.0", port)).err(),
        Protocol::Udp => std::net::UdpSocket::bind(("0.0.0.0", port)).err(),
    };
    match taken {
        Some(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ApiFailure::status(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "{} port {port} is in use on the host by another program: pick another",
                protocol.as_str()
            ),
        )),
        _ => Ok(()),
    }
}

/// Lists the forwards of the VMs the caller may read.
#[utoipa::path(get, path = "/v1/port-forwards", tag = "networks", params(ForwardQuery),
    responses((status = 200, body = [PortForward]), (status = 401, body = ApiError),
        (status = 404, body = ApiError)))]
pub async fn list(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiQuery(q): ApiQuery<ForwardQuery>,
) -> ApiResult<Json<Vec<PortForward>>> {
    if let Some(vm) = &q.vm {
        vm_for(&mgr, &p, vm, Permission::Read)?;
    }
    let mut shown = Vec::new();
    for forward in mgr.db.port_forwards(q.vm.as_deref())? {
        if vm_for(&mgr, &p, &forward.vm, Permission::Read).is_ok() {
            shown.push(forward);
        }
    }
    Ok(Json(shown))
}

/// Forwards a host port to a VM's first NIC; applied at once.
#[utoipa::path(post, path = "/v1/port-forwards", tag = "networks", request_body = CreatePortForward,
    responses((status = 201, body = PortForward), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "the host port is taken", body = ApiError)))]
pub async fn create(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(spec): JsonBody<CreatePortForward>,
) -> ApiResult<(StatusCode, Json<PortForward>)> {
    vm_for(&mgr, &p, &spec.vm, Permission::Network)?;
    for (field, port) in [("host_port", spec.host_port), ("guest_port", spec.guest_port)] {
        if port == 0 {
            return Err(ApiFailure::bad_request(
                Some(field.to_owned()),
                format!("{field} 0: give a port from 1 to 65535"),
            ));
        }
    }
    host_port_free(spec.protocol, spec.host_port)?;
    let made = mgr.clone();
    let forward = tokio::task::spawn_blocking(move || -> ApiResult<PortForward> {
        let forward = made.db.insert_port_forward(
            &spec.vm,
            spec.protocol,
            spec.host_port,
            spec.guest_port,
        )?;
        if let Err(e) = made.networks.refresh_rules(&made.db) {
            // Not applied: not kept.
            let _ = made.db.delete_port_forward(forward.id);
            return Err(e.into());
        }
        Ok(forward)
    })
    .await
    .map_err(|e| ApiFailure::internal(&e))??;
    Ok((StatusCode::CREATED, Json(forward)))
}

/// Removes a forward; applied at once.
#[utoipa::path(delete, path = "/v1/port-forwards/{id}", tag = "networks", params(("id" = i64, Path)),
    responses((status = 204), (status = 400, body = ApiError), (status = 403, body = ApiError),
        (status = 404, body = ApiError)))]
pub async fn delete(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<StatusCode> {
    let forward = mgr.db.port_forward(id)?;
    vm_for(&mgr, &p, &forward.vm, Permission::Network)?;
    let made = mgr.clone();
    tokio::task::spawn_blocking(move || -> ApiResult<()> {
        let removed = made.db.delete_port_forward(id)?;
        if let Err(e) = made.networks.refresh_rules(&made.db) {
            // Its DNAT rule is still in place: so is its row.
            let _ = made.db.restore_port_forward(&removed);
            return Err(e.into());
        }
        Ok(())
    })
    .await
    .map_err(|e| ApiFailure::internal(&e))??;
    Ok(StatusCode::NO_CONTENT)
}
