//! The REST API: routes, authentication and audit middleware, request extractors, errors.
//!
//! Every request passes `authenticate_and_audit`: it resolves the principal (token or Unix
//! peer uid), refuses the request with 401 if there is none, and records method, path, principal
//! and status in the audit log once the handler has answered. Handlers check the permission they
//! need on their target and answer 403 naming it.

pub mod acls;
pub mod admin;
pub mod error;
pub mod exec;
pub mod images;
pub mod networks;
pub mod openapi;
pub mod port_forwards;
pub mod vms;
pub mod volumes;

use crate::auth;
use crate::conn::BodyTimeout;
use crate::lifecycle::Manager;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiFailure;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The shared state of every handler.
pub type AppState = Arc<Manager>;

/// What kilnd knows about the other end of a Unix-socket connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// All routes, with authentication and audit.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/vms", get(vms::list).post(vms::create))
        .route("/v1/vms/{name}", get(vms::show).delete(vms::destroy))
        .route("/v1/vms/{name}/start", post(vms::start))
        .route("/v1/vms/{name}/stop", post(vms::stop))
        .route("/v1/vms/{name}/kill", post(vms::kill))
        .route("/v1/vms/{name}/restart", post(vms::restart))
        .route("/v1/vms/{name}/pause", post(vms::pause))
        .route("/v1/vms/{name}/resume", post(vms::resume))
        .route("/v1/vms/{name}/events", get(vms::events))
        .route("/v1/vms/{name}/logs", get(vms::logs))
        .route("/v1/vms/{name}/console", post(vms::console))
        .route("/v1/vms/{name}/exec", post(exec::exec))
        .route("/v1/queue", get(vms::queue))
        .route("/v1/images", get(images::list).post(images::build))
        .route("/v1/images/import", post(images::import))
        .route("/v1/images/{name}", get(images::show).delete(images::delete))
        .route("/v1/volumes", get(volumes::list).post(volumes::create))
        .route("/v1/volumes/{name}", get(volumes::show).delete(volumes::delete))
        .route("/v1/volumes/{name}/resize", post(volumes::resize))
        .route("/v1/volumes/{name}/copy", get(volumes::copy))
        .route("/v1/networks", get(networks::list).post(networks::create))
        .route("/v1/networks/{name}", get(networks::show).delete(networks::delete))
        .route("/v1/networks/{name}/acl", axum::routing::put(networks::set_acl))
        .route("/v1/acls", get(acls::list).post(acls::create))
        .route("/v1/acls/{name}", get(acls::show).delete(acls::delete))
        .route("/v1/acls/{name}/rules", get(acls::rules).post(acls::add_rule))
        .route("/v1/acls/{name}/rules/{id}", axum::routing::delete(acls::remove_rule))
        .route("/v1/vms/{name}/nics/{position}/acl", axum::routing::put(acls::set_nic_acl))
        .route("/v1/port-forwards", get(port_forwards::list).post(port_forwards::create))
        .route("/v1/port-forwards/{id}", axum::routing::delete(port_forwards::delete))
        .route("/v1/users", get(admin::list_users).post(admin::create_user))
        .route("/v1/users/{name}/revoke", post(admin::revoke_user))
        .route("/v1/grants", get(admin::list_grants).post(admin::create_grant))
        .route("/v1/grants/{id}", axum::routing::delete(admin::delete_grant))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/whoami", get(admin::whoami))
        .route("/metrics", get(admin::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate_and_audit))
        .with_state(state)
}

async fn not_found() -> ApiFailure {
    ApiFailure::not_found("no such API path (see docs/openapi.json)")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiFailure {
    let message = format!("{} does not take {method} (see docs/openapi.json)", uri.path());
    ApiFailure::status(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message)
}

async fn authenticate_and_audit(
    State(mgr): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    if request.uri().to_string().len() > MAX_URI {
        let path: String = request.uri().path().chars().take(200).collect();
        let response = ApiFailure::status(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request's URI is longer than {MAX_URI} bytes"),
        )
        .into_response();
        let path = format!("{path}... (too long)");
        if let Err(e) = mgr.db.audit(None, &method, &path, response.status().as_u16()) {
            eprintln!("kilnd: audit record failed: {}", crate::chain(&e));
        }
        return response;
    }
    let path = request.uri().path().to_owned();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("invalid"))
        .map(str::to_owned);
    let uid = request.extensions().get::<ConnectInfo<Peer>>().and_then(|ConnectInfo(p)| p.uid);
    let (principal, response) = match auth::authenticate(&mgr.db, authorization.as_deref(), uid) {
        Ok(principal) => {
            let name = principal.name.clone();
            request.extensions_mut().insert(principal);
            (Some(name), next.run(request).await)
        }
        Err(e) => (e.attempted(), ApiFailure::from(e).into_response()),
    };
    if let Err(e) = mgr.db.audit(principal.as_deref(), &method, &path, response.status().as_u16()) {
        eprintln!("kilnd: audit record failed: {}", crate::chain(&e));
    }
    mgr.requests.count(&route, &method, response.status().as_u16());
    response
}

/// The longest request URI kilnd answers; longer ones get a JSON 414 (beyond 64 KiB, hyper
/// answers 414 itself, without a body, before kilnd sees the request).
pub const MAX_URI: usize = 8 * 1024;
/// The largest request body (axum's default limit, which the body extractors enforce).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;
/// The body timeout where no connection set one (kilnd's connections always do).
const DEFAULT_BODY_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(crate::conn::DEFAULT_BODY_TIMEOUT_SECS);

/// A JSON body whose errors are JSON answers that name the field at fault.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyTimeout>().map_or(DEFAULT_BODY_TIMEOUT, |t| t.0);
        let bytes = match tokio::time::timeout(limit, Bytes::from_request(req, state)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                return Err(ApiFailure::status(
                    e.status(),
                    "payload_too_large",
                    format!("the body is larger than {} bytes", BODY_LIMIT),
                ))
            }
            Ok(Err(e)) => {
                return Err(ApiFailure::bad_request(None, format!("cannot read the body: {e}")))
            }
            Err(_) => {
                return Err(ApiFailure::status(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!(
                        "the body did not arrive within {} s (--body-timeout)",
                        limit.as_secs()
                    ),
                ))
            }
        };
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body; the error names the field (`unknown field`, `missing field`, or the path
/// of a value of the wrong type). Only text that is not one JSON value (bad syntax, or data after
/// the value) is "invalid JSON"; a valid value of the wrong shape is a field's error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiFailure::bad_request(None, format!("invalid JSON: {e}")))?;
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        let quoted = message.split('`').nth(1).map(str::to_owned);
        let field = if message.starts_with("unknown field") || message.starts_with("missing field")
        {
            quoted
        } else if path != "." && !path.is_empty() {
            Some(path)
        } else {
            None
        };
        ApiFailure::bad_request(field, message)
    })
}

/// A path parameter whose errors are JSON answers naming the parameter.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::{ErrorKind, Path};
        use axum::extract::rejection::PathRejection;
        use axum::extract::RawPathParams;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => {
                // The parameter at fault; with one parameter, axum does not say its name.
                let only = match RawPathParams::from_request_parts(parts, state).await {
                    Ok(params) if params.iter().count() == 1 => {
                        params.iter().next().map(|(key, _)| key.to_owned())
                    }
                    _ => None,
                };
                let field = match &rejection {
                    PathRejection::FailedToDeserializePathParams(e) => match e.kind() {
                        ErrorKind::ParseErrorAtKey { key, .. }
                        | ErrorKind::InvalidUtf8InPathParam { key } => Some(key.clone()),
                        _ => only,
                    },
                    _ => only,
                };
                Err(ApiFailure::bad_request(field, rejection.body_text()))
            }
        }
    }
}

/// A query string whose errors are JSON answers.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let pairs = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(pairs).map(ApiQuery).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            let field = match message.split('`').nth(1) {
                Some(quoted) if message.starts_with("unknown field") => Some(quoted.to_owned()),
                _ if path != "." && !path.is_empty() => Some(path),
                quoted => quoted.map(str::to_owned),
            };
            ApiFailure::bad_request(field, format!("query: {message}"))
        })
    }
}
