//! The REST API: routes, authentication and audit middleware, request extractors, errors.
//!
//! Every request passes `authenticate_and_audit`: it resolves the principal (token or Unix
//! peer uid), refuses the request with 401 if there is none, and records method, path, principal
//! and status in the audit log once the handler has answered. Handlers check the permission they
//! need on their target and answer 403 naming it.

pub mod admin;
pub mod error;
pub mod openapi;
pub mod vms;

use crate::auth;
use crate::lifecycle::Manager;
use axum::body::Bytes;
use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
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
}

impl Connected<axum::serve::IncomingStream<'_, tokio::net::UnixListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer { uid: stream.io().peer_cred().ok().map(|c| c.uid()) }
    }
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
        .route("/v1/queue", get(vms::queue))
        .route("/v1/users", get(admin::list_users).post(admin::create_user))
        .route("/v1/users/{name}/revoke", post(admin::revoke_user))
        .route("/v1/grants", get(admin::list_grants).post(admin::create_grant))
        .route("/v1/grants/{id}", axum::routing::delete(admin::delete_grant))
        .route("/v1/audit", get(admin::audit))
        .route("/v1/whoami", get(admin::whoami))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate_and_audit))
        .with_state(state)
}

async fn not_found() -> ApiFailure {
    ApiFailure::not_found("no such API path (see docs/openapi.json)")
}

async fn authenticate_and_audit(
    State(mgr): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
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
        Err(e) => (None, ApiFailure::from(e).into_response()),
    };
    if let Err(e) = mgr.db.audit(principal.as_deref(), &method, &path, response.status().as_u16()) {
        eprintln!("kilnd: audit record failed: {}", crate::chain(&e));
    }
    response
}

/// A JSON body whose errors are JSON answers that name the field at fault.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiFailure::bad_request(None, format!("cannot read the body: {e}")))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses a JSON body; the error names the field (`unknown field`, `missing field`, or the path
/// of a value of the wrong type).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiFailure> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let quoted = message.split('`').nth(1).map(str::to_owned);
        let syntax = inner.is_syntax() || inner.is_eof();
        let field = if syntax {
            None
        } else if message.starts_with("unknown field") || message.starts_with("missing field") {
            quoted
        } else if path != "." && !path.is_empty() {
            Some(path)
        } else {
            None
        };
        let prefix = if syntax { "invalid JSON: " } else { "" };
        ApiFailure::bad_request(field, format!("{prefix}{message}"))
    })
}

/// A query string whose errors are JSON answers.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiFailure;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query).map(ApiQuery).map_err(|e| {
            let message = e.to_string();
            let field = message.split('`').nth(1).map(str::to_owned);
            ApiFailure::bad_request(field, format!("query: {message}"))
        })
    }
}
