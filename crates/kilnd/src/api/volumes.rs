//! `/v1/volumes`: create, list, show, resize and delete volumes.

use super::error::ApiFailure;
use super::vms::require;
use super::{ApiPath, AppState, JsonBody};
use crate::auth::{Principal, Target};
use crate::db::volumes::VolumeRow;
use crate::db::DbError;
use crate::volumes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_api::{ApiError, CreateVolume, Permission, ResizeVolume, Volume, VolumeCopy};

type ApiResult<T> = Result<T, ApiFailure>;

/// Loads a volume and checks `permission` on it; one the caller may not read is answered as
/// missing (as VMs are).
fn volume_for(
    mgr: &AppState,
    principal: &Principal,
    name: &str,
    permission: Permission,
) -> ApiResult<VolumeRow> {
    let row = mgr.db.volume(name)?;
    let target = Target::Volume { name: &row.name, project: &row.project };
    if !principal.may(Permission::Read, target) {
        return Err(DbError::NoVolume(name.to_owned()).into());
    }
    require(principal, permission, target)?;
    Ok(row)
}

/// Lists the volumes the caller may read.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses((status = 200, body = [Volume]), (status = 401, body = ApiError)))]
pub async fn list(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<Volume>>> {
    let rows = mgr.db.volumes()?;
    let state_dir = &mgr.settings.state_dir;
    Ok(Json(
        rows.into_iter()
            .filter(|v| {
                p.may(Permission::Read, Target::Volume { name: &v.name, project: &v.project })
            })
            .map(|row| volumes::to_api(state_dir, row))
            .collect(),
    ))
}

/// Creates an empty volume of `size_bytes` (a sparse raw file); every field is checked first
/// and nothing is left behind if a step fails.
#[utoipa::path(post, path = "/v1/volumes", tag = "volumes", request_body = CreateVolume,
    responses((status = 201, body = Volume), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, description = "name taken", body = ApiError)))]
pub async fn create(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(spec): JsonBody<CreateVolume>,
) -> ApiResult<(StatusCode, Json<Volume>)> {
    require(&p, Permission::Create, Target::Project(&spec.project))?;
    let state_dir = mgr.settings.state_dir.clone();
    let db = mgr.clone();
    let volume = tokio::task::spawn_blocking(move || volumes::create(&db.db, &state_dir, &spec))
        .await
        .map_err(|e| ApiFailure::internal(&e))??;
    Ok((StatusCode::CREATED, Json(volume)))
}

/// One volume.
#[utoipa::path(get, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 404, body = ApiError)))]
pub async fn show(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Volume>> {
    let row = volume_for(&mgr, &p, &name, Permission::Read)?;
    Ok(Json(volumes::to_api(&mgr.settings.state_dir, row)))
}

/// How far the copy of an image into the new volume `name` has come (while `POST /v1/volumes`
/// or `POST /v1/vms` with an image makes it); 404 when no copy into it is under way.
#[utoipa::path(get, path = "/v1/volumes/{name}/copy", tag = "volumes",
    params(("name" = String, Path)),
    responses((status = 200, body = VolumeCopy), (status = 404, body = ApiError)))]
pub async fn copy(
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<VolumeCopy>> {
    match volumes::copy_progress(&name) {
        Some((project, copy))
            if p.may(Permission::Read, Target::Volume { name: &name, project: &project }) =>
        {
            Ok(Json(copy))
        }
        _ => Err(ApiFailure::not_found(format!("no copy into volume {name:?} is under way"))),
    }
}

/// Grows a volume (never shrinks it); refused with 409 while a VM that lists it is active.
#[utoipa::path(post, path = "/v1/volumes/{name}/resize", tag = "volumes",
    params(("name" = String, Path)), request_body = ResizeVolume,
    responses((status = 200, body = Volume), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "a VM that lists it is running", body = ApiError)))]
pub async fn resize(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
    JsonBody(body): JsonBody<ResizeVolume>,
) -> ApiResult<Json<Volume>> {
    volume_for(&mgr, &p, &name, Permission::Modify)?;
    Ok(Json(volumes::resize(&mgr.db, &mgr.settings.state_dir, &name, body.size_bytes)?))
}

/// Deletes a volume and its file; refused with 409 while a VM definition lists it.
#[utoipa::path(delete, path = "/v1/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "attached to a VM", body = ApiError)))]
pub async fn delete(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    volume_for(&mgr, &p, &name, Permission::Delete)?;
    volumes::delete(&mgr.db, &mgr.settings.state_dir, &name)?;
    Ok(StatusCode::NO_CONTENT)
}
