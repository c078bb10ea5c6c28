//! The OpenAPI document, generated from the handlers' annotations and the `kiln-api` types.
//! `docs/openapi.json` is this document; a test fails when they differ
//! (`UPDATE_OPENAPI=1 cargo test -p kilnd openapi` rewrites it, as does `kilnd --print-openapi`).

use super::{admin, vms};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "kilnd", description = "Kiln's VM manager: REST API on a Unix socket, and on TCP \
        with TLS when kilnd is started with --listen-tls. Authenticate with \
        `Authorization: Bearer TOKEN`, or on the Unix socket as a peer uid mapped to a principal."),
    paths(
        vms::list, vms::create, vms::show, vms::destroy, vms::start, vms::stop, vms::kill,
        vms::restart, vms::pause, vms::resume, vms::events, vms::logs, vms::console, vms::queue,
        admin::list_users, admin::create_user, admin::revoke_user, admin::list_grants,
        admin::create_grant, admin::delete_grant, admin::audit, admin::whoami,
    ),
    modifiers(&Bearer),
    security(("bearer" = [])),
    tags((name = "vms"), (name = "lifecycle"), (name = "access")),
)]
struct ApiDoc;

struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document as pretty JSON with a final newline.
pub fn document() -> String {
    let mut text =
        ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_openapi_document_matches_the_code() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
        let generated = document();
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("writes docs/openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json differs from the API in the code; regenerate it with \
             `UPDATE_OPENAPI=1 cargo test -p kilnd openapi` (or `kilnd --print-openapi`)"
        );
    }
}
