//! Error answers: every failure is a JSON [`ApiError`] with the right status.

use crate::auth::AuthError;
use crate::db::DbError;
use crate::images::ImageError;
use crate::lifecycle::LifecycleError;
use crate::volumes::VolumeError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_api::{ApiError, Permission, VmState};

/// A failed request: a status and its JSON body.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub body: ApiError,
}

/// An error body with only a kind and a message.
pub fn body(error: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        error: error.to_owned(),
        message: message.into(),
        field: None,
        state: None,
        permission: None,
    }
}

impl ApiFailure {
    /// 400, naming the field if known.
    pub fn bad_request(field: Option<String>, message: impl Into<String>) -> Self {
        let mut body = body("bad_request", message);
        body.field = field;
        ApiFailure { status: StatusCode::BAD_REQUEST, body }
    }

    /// Any status with a kind and a message (`payload_too_large`, `request_timeout`, ...).
    pub fn status(status: StatusCode, error: &str, message: impl Into<String>) -> Self {
        ApiFailure { status, body: body(error, message) }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiFailure { status: StatusCode::NOT_FOUND, body: body("not_found", message) }
    }

    /// 403, naming the permission.
    pub fn forbidden(permission: Permission, message: impl Into<String>) -> Self {
        let mut body = body("forbidden", message);
        body.permission = Some(permission);
        ApiFailure { status: StatusCode::FORBIDDEN, body }
    }

    /// 409 because of the VM's state.
    pub fn wrong_state(state: VmState, message: impl Into<String>) -> Self {
        let mut body = body("conflict", message);
        body.state = Some(state);
        ApiFailure { status: StatusCode::CONFLICT, body }
    }

    /// 500; the cause chain goes to kilnd's stderr and into the message.
    pub fn internal(e: &dyn std::error::Error) -> Self {
        let message = crate::chain(e);
        eprintln!("kilnd: internal error: {message}");
        ApiFailure { status: StatusCode::INTERNAL_SERVER_ERROR, body: body("internal", message) }
    }

    /// Adds the verb to a conflict's message ("cannot stop: ...").
    pub fn during(mut self, verb: &str) -> Self {
        if self.status == StatusCode::CONFLICT && self.body.state.is_some() {
            self.body.message = format!("cannot {verb}: {}", self.body.message);
        }
        self
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<DbError> for ApiFailure {
    fn from(e: DbError) -> Self {
        match &e {
            DbError::NoVm(_)
            | DbError::NoPrincipal(_)
            | DbError::NoVolume(_)
            | DbError::NoImage(_)
            | DbError::NoNetwork(_)
            | DbError::NoAcl(_)
            | DbError::NoAclRule { .. }
            | DbError::NoSuchNic { .. }
            | DbError::NoPortForward(_) => ApiFailure::not_found(e.to_string()),
            DbError::VolumeAttached { .. }
            | DbError::VolumeInUse { .. }
            | DbError::ImageInUse { .. }
            | DbError::ImageNotReady { .. }
            | DbError::NetworkInUse { .. }
            | DbError::AddressInUse { .. }
            | DbError::MacInUse { .. }
            | DbError::NetworkFull(_)
            | DbError::AclInUse { .. }
            | DbError::PortForwarded { .. } => {
                ApiFailure::status(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            DbError::VolumeProject { .. } => {
                ApiFailure::bad_request(Some("disks".to_owned()), e.to_string())
            }
            DbError::NetworkProject { .. } | DbError::AddressRefused { .. } => {
                ApiFailure::bad_request(Some("nics".to_owned()), e.to_string())
            }
            DbError::AclProject { .. } => {
                ApiFailure::bad_request(Some("acl".to_owned()), e.to_string())
            }
            DbError::NoNic(_) => ApiFailure::bad_request(Some("vm".to_owned()), e.to_string()),
            DbError::SubnetOverlap { .. } => {
                ApiFailure::bad_request(Some("subnet".to_owned()), e.to_string())
            }
            DbError::VmExists(_)
            | DbError::PrincipalExists(..)
            | DbError::VolumeExists(_)
            | DbError::ImageExists(_)
            | DbError::NetworkExists(_)
            | DbError::AclExists(_) => {
                let mut body = body("conflict", e.to_string());
                body.field = Some("name".to_owned());
                ApiFailure { status: StatusCode::CONFLICT, body }
            }
            DbError::WrongState { state, .. } => ApiFailure::wrong_state(*state, e.to_string()),
            _ => ApiFailure::internal(&e),
        }
    }
}

impl From<crate::net::NetError> for ApiFailure {
    fn from(e: crate::net::NetError) -> Self {
        use crate::net::NetError;
        match e {
            NetError::Invalid(invalid) => {
                ApiFailure::bad_request(Some(invalid.field.to_owned()), invalid.to_string())
            }
            NetError::Db(db) => db.into(),
            NetError::NoLease { .. } => {
                ApiFailure::status(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            NetError::Unavailable(message) => {
                ApiFailure::status(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            other => ApiFailure::internal(&other),
        }
    }
}

impl From<LifecycleError> for ApiFailure {
    fn from(e: LifecycleError) -> Self {
        match e {
            LifecycleError::Invalid(invalid) => {
                ApiFailure::bad_request(Some(invalid.field.to_owned()), invalid.to_string())
            }
            LifecycleError::Db(db) => db.into(),
            LifecycleError::Network(net) => net.into(),
            LifecycleError::Devices(message) => {
                ApiFailure::status(StatusCode::CONFLICT, "conflict", message)
            }
            other => ApiFailure::internal(&other),
        }
    }
}

impl From<VolumeError> for ApiFailure {
    fn from(e: VolumeError) -> Self {
        match e {
            VolumeError::Invalid(invalid) => {
                ApiFailure::bad_request(Some(invalid.field.to_owned()), invalid.to_string())
            }
            VolumeError::Db(db) => db.into(),
            other => ApiFailure::internal(&other),
        }
    }
}

impl From<ImageError> for ApiFailure {
    fn from(e: ImageError) -> Self {
        match e {
            ImageError::Invalid(invalid) => {
                ApiFailure::bad_request(Some(invalid.field.to_owned()), invalid.to_string())
            }
            ImageError::Db(db) => db.into(),
            ImageError::Unavailable(message) => {
                ApiFailure::status(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
            other => ApiFailure::internal(&other),
        }
    }
}

impl From<AuthError> for ApiFailure {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Db(db) => db.into(),
            AuthError::Random(_) => ApiFailure::internal(&e),
            other => ApiFailure {
                status: StatusCode::UNAUTHORIZED,
                body: body("unauthorized", other.to_string()),
            },
        }
    }
}
