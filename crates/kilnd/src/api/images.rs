//! `/v1/images`: build, list, show and delete images. Grants on an image's project cover it.

use super::error::ApiFailure;
use super::vms::require;
use super::{ApiPath, AppState, JsonBody};
use crate::auth::{Principal, Target};
use crate::db::images::ImageRow;
use crate::db::DbError;
use crate::images;
use axum::extract::ConnectInfo;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use kiln_api::{ApiError, BuildImage, Image, ImportImage, Permission};

type ApiResult<T> = Result<T, ApiFailure>;

/// Loads an image and checks `permission` on its project; one the caller may not read is
/// answered as missing.
fn image_for(
    mgr: &AppState,
    principal: &Principal,
    name: &str,
    permission: Permission,
) -> ApiResult<ImageRow> {
    let row = mgr.db.image(name)?;
    let target = Target::Project(&row.project);
    if !principal.may(Permission::Read, target) {
        return Err(DbError::NoImage(name.to_owned()).into());
    }
    require(principal, permission, target)?;
    Ok(row)
}

/// Lists the images the caller may read.
#[utoipa::path(get, path = "/v1/images", tag = "images",
    responses((status = 200, body = [Image]), (status = 401, body = ApiError)))]
pub async fn list(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
) -> ApiResult<Json<Vec<Image>>> {
    let rows = mgr.db.images()?;
    Ok(Json(
        rows.into_iter()
            .filter(|i| p.may(Permission::Read, Target::Project(&i.project)))
            .map(images::to_api)
            .collect(),
    ))
}

/// Starts building a Debian image in the background (202): the image is `building` until it
/// is `ready` or `failed`; `GET /v1/images/{name}` shows its progress.
#[utoipa::path(post, path = "/v1/images", tag = "images", request_body = BuildImage,
    responses((status = 202, body = Image), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, description = "name taken", body = ApiError),
        (status = 503, description = "kilnd has no agent to install", body = ApiError)))]
pub async fn build(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    JsonBody(spec): JsonBody<BuildImage>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    require(&p, Permission::Create, Target::Project(&spec.project))?;
    let image = images::start_build(&mgr, &spec)?;
    Ok((StatusCode::ACCEPTED, Json(image)))
}

/// Imports an image from an ext4 file system on the host (and its kernel and initrd, or those
/// in its `/boot`), opened with the rights of the Unix user who asks; ready when answered.
#[utoipa::path(post, path = "/v1/images/import", tag = "images", request_body = ImportImage,
    responses((status = 201, body = Image), (status = 400, body = ApiError),
        (status = 403, body = ApiError), (status = 409, description = "name taken", body = ApiError)))]
pub async fn import(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ConnectInfo(peer): ConnectInfo<super::Peer>,
    JsonBody(spec): JsonBody<ImportImage>,
) -> ApiResult<(StatusCode, Json<Image>)> {
    require(&p, Permission::Create, Target::Project(&spec.project))?;
    let reader = super::vms::boot_reader(&p, peer)?;
    let image =
        tokio::task::spawn_blocking(move || crate::image_import::import(&mgr, &spec, reader))
            .await
            .map_err(|e| ApiFailure::internal(&e))??;
    Ok((StatusCode::CREATED, Json(image)))
}

/// One image, with the progress of its build.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 200, body = Image), (status = 404, body = ApiError)))]
pub async fn show(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Image>> {
    Ok(Json(images::to_api(image_for(&mgr, &p, &name, Permission::Read)?)))
}

/// Deletes an image and its files; refused with 409 while a VM definition uses it or it is
/// being built.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ApiError), (status = 404, body = ApiError),
        (status = 409, description = "in use or building", body = ApiError)))]
pub async fn delete(
    State(mgr): State<AppState>,
    Extension(p): Extension<Principal>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    image_for(&mgr, &p, &name, Permission::Delete)?;
    images::delete(&mgr.db, &mgr.settings.state_dir, &name)?;
    Ok(StatusCode::NO_CONTENT)
}
